"""The inference engine: the one loop that every model's fit goes through.

A model builds a *state* (a dict of tensors, ``nn.Module`` s and optimisers) and a *schedule* of
:class:`Step` s (EM, SVI, MCMC, neural ...). :class:`Engine` runs the schedule for up to
``max_iter`` iterations and owns everything around it: device, dtype, seeding, mini-batches,
``history`` (objective per iteration), convergence on ``tol``, a progress bar, callbacks,
checkpoint / resume, non-finite checks and keeping the best state on ``KeyboardInterrupt``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._device import make_generator, resolve_device, resolve_dtype, seed_everything
from . import distributed

_DATACLASS = "__dataclass_fields__"  # snapshot() key of a dataclass saved as its fields

try:  # scikit-learn users filter its ConvergenceWarning; ours is one where scikit-learn is installed
    from sklearn.exceptions import ConvergenceWarning as _BaseConvergenceWarning
except ImportError:  # pragma: no cover - scikit-learn is an optional peer
    _BaseConvergenceWarning = UserWarning


class ConvergenceWarning(_BaseConvergenceWarning):
    """The fit stopped at ``max_iter`` before the objective changed by less than ``tol``."""


class NonFiniteError(FloatingPointError):
    """A step produced a non-finite objective or state."""


StepFn = Callable[[dict[str, Any], int], float | None]


@dataclass
class Step:
    """One update of the schedule.

    ``fn(state, iteration)`` updates ``state`` in place and returns the objective it measured
    (or ``None``). ``every`` runs the step every n-th iteration only (e.g. split/merge moves),
    ``start`` delays it (a curriculum).
    """

    name: str
    fn: StepFn
    every: int = 1
    start: int = 0

    def due(self, iteration: int) -> bool:
        return iteration >= self.start and (iteration - self.start) % self.every == 0


@dataclass
class FitResult:
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    interrupted: bool = False
    best_objective: float = -math.inf
    stopped: bool = False  # a callback asked to stop
    step_history: dict[str, list[float]] = field(default_factory=dict)


class Engine:
    """Runs a schedule of steps.

    Parameters
    ----------
    device : "auto" | "cpu" | "cuda" | torch.device
    dtype : "float32" | "float64"
    random_state : int or None; seeds the engine's generator and Python/NumPy/torch/Pyro.
    max_iter, tol : stop after ``max_iter`` iterations or when the objective changes by less
        than ``tol`` (absolute); ``tol=0`` runs all iterations.
    maximize : whether a larger objective is better (log-likelihood) or smaller (a loss).
    verbose : show a tqdm progress bar.
    callbacks : callables ``cb(engine, iteration, objective, state)``; returning ``True`` stops.
    checkpoint_path, checkpoint_every : write the state every n iterations; ``resume=True``
        continues from an existing checkpoint.
    previous_objective : the objective before the first iteration (a warm start continuing an earlier
        fit: its last objective), so convergence is judged across calls as in scikit-learn.
    keep_best : restore the best state seen when the run is interrupted; ``True`` (every key of the
        state, copied at each new best), ``False``, or a sequence of keys to copy and restore (leave
        out large scratch buffers: an (N, K) pseudo-label buffer at N = 1e6, K = 1e3 is 4 GB).
    """

    def __init__(
        self,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "float32",
        random_state: int | None = None,
        max_iter: int = 100,
        tol: float = 1e-3,
        maximize: bool = True,
        verbose: bool = False,
        callbacks: Sequence[Callable[..., Any]] | None = None,
        checkpoint_path: str | Path | None = None,
        checkpoint_every: int = 10,
        resume: bool = False,
        keep_best: bool | Sequence[str] = True,
        check_convergence_after: int = 1,
        previous_objective: float | None = None,
        warn_not_converged: bool = True,
        desc: str = "fit",
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.random_state = random_state
        seed_everything(random_state)
        self.generator = make_generator(random_state, "cpu")
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.maximize = maximize
        self.verbose = verbose and distributed.is_main()  # one progress bar per distributed fit
        self.callbacks = list(callbacks or [])
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.checkpoint_every = int(checkpoint_every)
        self.resume = resume
        if not isinstance(keep_best, bool):
            if (
                isinstance(keep_best, str)
                or not isinstance(keep_best, Sequence)
                or not all(isinstance(k, str) for k in keep_best)
            ):
                raise TypeError(
                    f"keep_best must be True, False or a sequence of state keys (str), got {keep_best!r}."
                )
            keep_best = tuple(keep_best)
        self.keep_best = keep_best
        self.check_convergence_after = check_convergence_after
        self.previous_objective = previous_objective
        self.warn_not_converged = warn_not_converged
        self.desc = desc

    # ------------------------------------------------------------------ data helpers
    def to(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtype)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator).to(self.device)

    def batches(self, n: int, batch_size: int | None, shuffle: bool = True) -> Iterator[torch.Tensor]:
        """Index tensors covering ``range(n)`` in mini-batches (one batch when ``batch_size`` is None);
        a last batch of a single row is merged into the previous one."""
        if batch_size is None or batch_size >= n:
            yield self.randperm(n) if shuffle else torch.arange(n, device=self.device)
            return
        order = self.randperm(n) if shuffle else torch.arange(n, device=self.device)
        # a last batch of one row joins the one before: BatchNorm cannot train on a single row
        stop = n - 1 if n % batch_size == 1 else n
        for start in range(0, stop, batch_size):
            yield order[start : n if start + batch_size >= stop else start + batch_size]

    @staticmethod
    def chunks(n: int, chunk_size: int) -> Iterator[slice]:
        """Contiguous slices of ``range(n)``; the unit every streaming step loops over."""
        for start in range(0, n, max(1, int(chunk_size))):
            yield slice(start, min(n, start + chunk_size))

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        schedule: Sequence[Step],
        state: dict[str, Any],
        *,
        stop_at: int | None = None,
        result: FitResult | None = None,
    ) -> FitResult:
        """Run ``schedule`` on ``state`` (updated in place) and return the :class:`FitResult`.

        A fit can run in stages: ``stop_at`` ends this call after that many iterations in all
        (at most ``max_iter``), and passing the returned ``result`` back continues from its
        ``n_iter`` with the same history (used to screen restarts after a few epochs).
        """
        end_iter = self.max_iter if stop_at is None else min(int(stop_at), self.max_iter)
        start_iter, result = self._begin(schedule, state, result)
        sign = 1.0 if self.maximize else -1.0
        result.best_objective = -math.inf if not result.history else max(sign * h for h in result.history)
        best_snapshot = None
        grad_mode = torch.is_grad_enabled()  # restored whatever happens (an interrupt inside a step)
        bar = self._progress(start_iter)
        prev = result.history[-1] if result.history else self.previous_objective
        iteration = start_iter
        try:
            for iteration in range(start_iter, end_iter):
                objective = self._iteration(schedule, state, iteration, result)
                if self.keep_best is not False and sign * objective >= result.best_objective:
                    result.best_objective = sign * objective
                    kept = state if self.keep_best is True else {k: state[k] for k in self.keep_best}
                    best_snapshot = (iteration, snapshot(kept))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(objective=f"{objective:.6g}")
                stop = any(bool(cb(self, iteration, objective, state)) for cb in self.callbacks)
                if self._checkpointing and (iteration + 1) % self.checkpoint_every == 0:
                    self._save_checkpoint(state, iteration + 1, result)
                if self._converged(prev, objective, iteration):
                    result.converged = True
                    break
                prev = objective
                if stop:
                    result.stopped = True
                    break
        except KeyboardInterrupt:
            result.interrupted = True
            if best_snapshot is not None:
                restore(state, best_snapshot[1])
            warnings.warn(
                f"{self.desc} interrupted at iteration {iteration}; kept the best state "
                f"(iteration {best_snapshot[0] if best_snapshot else 'none'}).",
                RuntimeWarning,
                stacklevel=2,
            )
        finally:
            torch.set_grad_enabled(grad_mode)
            if bar is not None:
                bar.close()
        self._end(state, result)
        return result

    def _begin(
        self, schedule: Sequence[Step], state: dict[str, Any], result: FitResult | None
    ) -> tuple[int, FitResult]:
        """The first iteration and the result to extend: a later stage, a checkpoint, or a new fit."""
        if not isinstance(self.keep_best, bool):
            missing = [k for k in self.keep_best if k not in state]
            if missing:
                raise ValueError(f"keep_best names keys that are not in the state: {missing}.")
        if result is not None:  # a later stage of this fit
            return result.n_iter, result
        if self.resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            return self._load_checkpoint(state)
        return 0, FitResult(step_history={s.name: [] for s in schedule})

    def _iteration(
        self, schedule: Sequence[Step], state: dict[str, Any], iteration: int, result: FitResult
    ) -> float:
        """Run the steps due at ``iteration``; record and return the objective (the last step's)."""
        objective = None
        for step in schedule:
            if not step.due(iteration):
                continue
            value = step.fn(state, iteration)
            if value is not None:
                value = float(value)
                if not math.isfinite(value):
                    raise NonFiniteError(
                        f"step '{step.name}' produced a non-finite objective ({value}) at "
                        f"iteration {iteration}; the data may be degenerate (duplicated "
                        "points, constant features) or the learning rate too large — "
                        "try a larger reg_covar / smaller lr, or float64."
                    )
                result.step_history[step.name].append(value)
                objective = value
        if objective is None:
            objective = result.history[-1] if result.history else 0.0
        result.history.append(objective)
        result.n_iter = iteration + 1
        return objective

    def _converged(self, prev: float | None, objective: float, iteration: int) -> bool:
        return (
            prev is not None
            and self.tol > 0
            and iteration + 1 >= self.check_convergence_after
            and abs(objective - prev) < self.tol
        )

    def _end(self, state: dict[str, Any], result: FitResult) -> None:
        """Final checkpoint and the convergence warning."""
        if self._checkpointing and not result.interrupted:
            self._save_checkpoint(state, result.n_iter, result)
        if (
            not result.converged
            and not result.interrupted
            and self.tol > 0
            and self.warn_not_converged
            and result.n_iter >= self.max_iter
        ):
            h = result.history
            change = abs(h[-1] - h[-2]) if len(h) > 1 else float("nan")
            warnings.warn(
                f"{self.desc} did not converge in max_iter={self.max_iter} iterations "
                f"(last change {change:.3g} >= tol={self.tol}); increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )

    @property
    def _checkpointing(self) -> bool:
        """Checkpoints are written by rank 0 only in a distributed fit."""
        return self.checkpoint_path is not None and distributed.is_main()

    def _progress(self, start: int):
        if not self.verbose:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.max_iter, initial=start, desc=self.desc, leave=False)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, state: dict[str, Any], iteration: int, result: FitResult) -> None:
        assert self.checkpoint_path is not None
        tmp = self.checkpoint_path.with_suffix(self.checkpoint_path.suffix + ".tmp")
        torch.save(
            {
                "iteration": iteration,
                "state": snapshot(state),
                "history": list(result.history),
                "step_history": copy.deepcopy(result.step_history),
                "generator": self.generator.get_state(),
            },
            tmp,
        )
        tmp.replace(self.checkpoint_path)

    def _load_checkpoint(self, state: dict[str, Any]) -> tuple[int, FitResult]:
        """The checkpoint's iteration and result, its state loaded into ``state``. The file is read
        with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists and dicts only), so
        opening it runs no code; anything else is a ValueError naming the file."""
        try:
            blob = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
            restore(state, blob["state"])
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"{self.checkpoint_path} is not a checkpoint this engine can resume from safely "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}); it was "
                "not executed. Delete it, or pass resume=False to start afresh."
            ) from err
        self.generator.set_state(blob["generator"])
        res = FitResult(history=list(blob["history"]), step_history=blob["step_history"])
        res.n_iter = blob["iteration"]
        return int(blob["iteration"]), res


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) while compiled code runs and raise ``KeyboardInterrupt`` after it.

    A signal that arrives inside a Numba kernel otherwise surfaces as a ``SystemError`` from the
    kernel's return; wrapping each kernel call (one pass over the data) makes the interrupt land
    between passes, where the engine handles it. Outside the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A detached copy of a state dict of tensors, modules, optimisers and plain values."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.detach().clone()
        elif hasattr(value, "state_dict") and callable(value.state_dict):
            out[key] = copy.deepcopy(value.state_dict())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            # fields as a plain dict: the checkpoint then loads with weights_only=True; restore()
            # rebuilds the dataclass from the live state's type, never from the file
            out[key] = {_DATACLASS: {f.name: copy.deepcopy(getattr(value, f.name))
                                     for f in dataclasses.fields(value)}}
        else:
            out[key] = copy.deepcopy(value)
    return out


def restore(state: dict[str, Any], snap: dict[str, Any]) -> None:
    """Load a :func:`snapshot` back into ``state`` in place (tensors keep their device)."""
    for key, value in snap.items():
        current = state.get(key)
        if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
            state[key] = value.to(current.device)
        elif current is not None and hasattr(current, "load_state_dict"):
            current.load_state_dict(value)
        elif isinstance(value, dict) and set(value) == {_DATACLASS}:
            if not (dataclasses.is_dataclass(current) and not isinstance(current, type)):
                raise TypeError(f"state entry {key!r} was saved from a dataclass, but the state holds "
                                f"{type(current).__name__}.")
            state[key] = type(current)(**value[_DATACLASS])
        else:
            state[key] = value
