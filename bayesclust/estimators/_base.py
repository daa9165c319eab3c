"""The one estimator base: scikit-learn parameter conventions, the fit template, prediction, save/load.

Every estimator subclasses :class:`ClusterEstimator` (mixtures also :class:`MixtureMixin`) and fills
in a few hooks; ``fit`` itself is written once here:

    fit(X) = _check_params() -> data = _prepare(X)
             -> for each restart seed: run = _start(data, seed); engine.run(...); _restart_score(...)
                (optionally screened: every restart runs ``_screen_iter()`` iterations, the best
                 one is trained on to ``max_iter``)
             -> _set_run_attributes(result) (n_iter_, converged_, history_)
             -> _finish(data, run) (the model's fitted attributes; sets labels_ and n_components_)

Prediction comes from one hook, ``_log_scores(X) -> (N, K)`` (log probabilities up to a per-row
constant, or negative costs for hard-assignment models): ``predict`` is its argmax and
``predict_proba`` its softmax.

``__init__`` stores its parameters with ``self._set_init_params(locals())``. A renamed parameter keeps
its old name as an ``__init__`` parameter defaulting to ``DEPRECATED`` and listed in
``_renamed_params``; given to ``__init__`` it sets the new one with a FutureWarning (``set_params``
stores it as given, as scikit-learn requires, and ``fit`` applies it, with the same warning).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _persist
from .._device import resolve_seed
from .._validation import check_is_fitted
from ..inference import distributed
from ..inference.engine import Engine, FitResult, Step


class BaseEstimator:
    """Hyperparameters live in ``__init__`` only; learned state in trailing-underscore attributes.

    ``get_params`` / ``set_params`` follow scikit-learn, so ``sklearn.base.clone`` and grid search work.
    """

    _estimator_type = "clusterer"

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    # old parameter name -> new name; each old name is an __init__ parameter defaulting to DEPRECATED
    _renamed_params: dict[str, str] = {}

    def _set_init_params(self, values: Mapping[str, Any]) -> None:
        """Store every ``__init__`` parameter from ``values`` (``locals()`` of ``__init__``) unchanged,
        as scikit-learn requires (no validation or conversion in ``__init__``); an old name that
        was given sets its new parameter, with a FutureWarning."""
        for name in self._param_names():
            setattr(self, name, values[name])
        self._apply_renamed(self._renamed_params)

    def _apply_renamed(self, names: Iterable[str]) -> None:
        for old in names:
            value = getattr(self, old)
            if _is_deprecated(value):
                continue
            new = self._renamed_params[old]
            warnings.warn(
                f"{type(self).__name__}({old}=...) is deprecated; use {new}=... instead.",
                FutureWarning,
                stacklevel=4,
            )
            setattr(self, new, value)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update({f"{name}__{k}": v for k, v in value.get_params().items()})
            out[name] = value
        return out

    def set_params(self, **params: Any) -> BaseEstimator:
        valid = self._param_names()
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for {type(self).__name__}; valid parameters "
                    f"are {sorted(valid)}."
                )
            if sub:
                getattr(self, name).set_params(**{sub: value})
            else:
                setattr(self, name, value)
        return self

    def _warn_unused(self, names: Iterable[str], where: str) -> None:
        """Warn once per fit about parameters in ``names`` that were set (differ from their default)
        but have no effect ``where`` (e.g. "with inference='em'"), rather than ignore them silently."""
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [n for n in names if not _equal(getattr(self, n), defaults[n])]
        if changed:
            warnings.warn(
                f"{type(self).__name__}: {', '.join(changed)} {'has' if len(changed) == 1 else 'have'} "
                f"no effect {where}; leave {'it' if len(changed) == 1 else 'them'} at the default.",
                UserWarning,
                stacklevel=4,
            )

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = []
        for k, v in self.get_params(deep=False).items():
            d = defaults.get(k, inspect.Parameter.empty)
            try:
                same = bool(v == d) if not isinstance(v, np.ndarray | torch.Tensor) else False
            except Exception:  # noqa: BLE001 - odd types compare however they like
                same = False
            if not same:
                changed.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):  # scikit-learn >= 1.6 asks estimators for their tags
        from sklearn.utils import Tags, TargetTags  # optional peer, only asked for by scikit-learn

        tags = Tags(estimator_type="clusterer", target_tags=TargetTags(required=False))
        tags.non_deterministic = getattr(self, "_non_deterministic", False)
        if getattr(self, "_images_only", False):  # (N, H, W) / (N, C, H, W) input, never (N, D)
            tags.input_tags.two_d_array, tags.input_tags.three_d_array = False, True
        return tags

    # ------------------------------------------------------------------ persistence
    def _fitted_attributes(self) -> list[str]:
        """Public trailing-underscore attributes; ``nn.Module`` ones are saved by ``_extra_state``."""
        return [
            k for k, v in vars(self).items()
            if k.endswith("_") and not k.startswith("_") and not isinstance(v, torch.nn.Module)
        ]

    def save(self, path: str | Path) -> None:
        """Write hyperparameters and fitted state to ``path`` in the safe model file format
        (:mod:`bayesclust._persist`: tensors and plain values, read back without running code).

        Callables among the parameters (``callbacks``) are saved as None, with a UserWarning; a
        user-given ``nn.Module`` parameter must be given again to :meth:`load`. The file is written
        to a temporary file in the same folder, then renamed; a missing folder is a FileNotFoundError.
        """
        check_is_fitted(self, ["n_features_in_"])
        name = type(self).__name__
        params, unsaved = _persist.saveable_params(self.get_params(deep=False), name)
        fitted = {k: _to_cpu(getattr(self, k)) for k in self._fitted_attributes()}
        extra = self._extra_state() if hasattr(self, "_extra_state") else {}
        cls = f"{type(self).__module__}.{type(self).__qualname__}"
        try:
            _persist.write_model(path, cls, params, fitted, extra, unsaved)
        except _persist.EncodeError as exc:
            raise ValueError(f"Cannot save {name} to {path}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path, **params: Any) -> BaseEstimator:
        """Load a model written by :meth:`save`; ``cls`` must match the saved class. The file is read
        without running code from it; a file that is not a complete bayesclust model file raises
        ValueError naming it. ``params`` replace saved parameters (e.g. ``head=module`` for a
        user-given head, ``callbacks``, ``device``)."""
        blob = _persist.read_model(path)
        saved, qualname = blob["class"], cls.__qualname__
        if saved != f"{cls.__module__}.{qualname}" and not saved.endswith("." + qualname):
            raise TypeError(f"{path} holds a {saved}, not a {qualname}; load it with that class.")
        _persist.check_fitted_names(path, blob["fitted"])
        obj = cls(**_persist.load_params(path, blob, qualname, cls._param_names(), params))
        for k, v in blob["fitted"].items():
            setattr(obj, k, v)
        try:
            _persist.require_attributes(obj, ["n_features_in_"])
            if hasattr(obj, "_load_extra_state"):
                obj._load_extra_state(blob["extra"])
            _persist.require_attributes(obj, [getattr(cls, "_fitted_check", "n_features_in_")])
        except (ValueError, KeyError, TypeError, RuntimeError, AttributeError, IndexError) as exc:
            raise _persist.ModelFileError(
                f"{path} is incomplete or does not match a {qualname}: {str(exc).rstrip('.')}."
            ) from exc
        return obj

    def _clone_unfitted(self) -> BaseEstimator:
        return type(self)(**copy.deepcopy(self.get_params(deep=False)))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


DEPRECATED = "deprecated"  # default of a renamed parameter's old name, as scikit-learn does


def available_if(check: Callable[[Any], bool], reason: str) -> Callable[[Callable], Any]:
    """Decorate a method that exists only when ``check(self)`` holds: otherwise reading it raises
    AttributeError, so ``hasattr(est, "partial_fit")`` tells scikit-learn (and users) the truth."""

    class _Conditional:
        def __init__(self, fn: Callable) -> None:
            self.fn = fn
            self.__doc__ = fn.__doc__

        def __get__(self, obj: Any, owner: type | None = None) -> Any:
            if obj is not None and not check(obj):
                raise AttributeError(f"{type(obj).__name__} has no {self.fn.__name__} here: {reason}.")
            return self.fn if obj is None else self.fn.__get__(obj, owner)

    return _Conditional


def _is_deprecated(value: Any) -> bool:
    return isinstance(value, str) and value == DEPRECATED


def _equal(a: Any, b: Any) -> bool:
    try:
        return not isinstance(a, np.ndarray | torch.Tensor) and bool(a == b)
    except Exception:  # noqa: BLE001 - odd types compare however they like
        return False


def restart_seed(random_state: Any, i: int) -> int | None:
    """Seed of the ``i``-th restart: ``random_state + i`` (``None`` stays ``None``)."""
    return None if random_state is None else int(random_state) + i


@dataclass
class Run:
    """One restart: its engine, schedule and state, and once run its result and score."""

    engine: Engine
    schedule: list[Step]
    state: dict[str, Any]
    result: FitResult | None = None
    score: float = -np.inf


class ClusterEstimator(BaseEstimator):
    """The fit template and the prediction methods shared by every estimator (see the module doc)."""

    _fitted_check = "n_features_in_"  # the attribute whose presence means "fitted"

    # ------------------------------------------------------------------ hooks
    def _check_params(self) -> None:
        """Validate hyperparameters (raise ValueError / TypeError with a clear message)."""

    def _prepare(self, X: Any) -> Any:
        """Validate ``X`` and compute what every restart shares; returns the fit data."""
        raise NotImplementedError

    def _n_restarts(self, data: Any) -> int:
        """How many restarts this fit runs (default ``n_init``)."""
        return int(getattr(self, "n_init", 1))

    def _screen_iter(self) -> int | None:
        """Iterations every restart runs before the best is chosen and trained on (None: all)."""
        return None

    def _start(self, data: Any, seed: int | None) -> Run:
        """The engine, schedule and state of one restart."""
        raise NotImplementedError

    def _restart_score(self, data: Any, run: Run) -> float:
        """Higher is better; chooses among restarts (default: the engine's best objective)."""
        assert run.result is not None
        return float(run.result.best_objective)

    def _finish(self, data: Any, run: Run) -> None:
        """Set the model's fitted attributes from the chosen run (labels_, n_components_, ...)."""
        raise NotImplementedError

    def _log_scores(self, X: Any) -> torch.Tensor:
        """(N, K) per-cluster log scores of validated new data ``X``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the template
    def fit(self, X: Any, y: Any = None) -> ClusterEstimator:
        """Fit the model to ``X``; ``y`` is ignored. Returns ``self``.

        In a ``torch.distributed`` process group each rank passes its own shard: the statistics are
        summed over ranks for the duration of the fit and every rank uses rank 0's seed
        (``inference/distributed.py``)."""
        self.__dict__.pop("_online", None)  # a later partial_fit starts from this fit
        with distributed.fit_context():
            # this fit's int seed (or None), the same on every rank
            self._seed = distributed.shared_seed(resolve_seed(getattr(self, "random_state", None)))
            # an old name given through set_params after __init__ (not yet copied to its new name)
            renamed = self._renamed_params.items()
            self._apply_renamed([o for o, n in renamed if not _equal(getattr(self, o), getattr(self, n))])
            self._check_params()
            data = self._prepare(X)
            run = self._run_restarts(data)
            self._set_run_attributes(run.result)
            self._finish(data, run)
        return self

    def _run_restarts(self, data: Any) -> Run:
        """Every restart (seeds ``random_state + i``), screened when ``_screen_iter()`` is set; the
        restart with the highest ``_restart_score`` is kept. An interrupt ends the restarts."""
        screen = self._screen_iter()
        best: Run | None = None
        for i in range(self._n_restarts(data)):
            run = self._start(data, restart_seed(self._seed, i))
            run.result = run.engine.run(run.schedule, run.state, stop_at=screen)
            self._after_stage(run)
            run.score = self._restart_score(data, run)
            if best is None or run.score > best.score:
                best = run
            if run.result.interrupted:
                break
        assert best is not None and best.result is not None
        res = best.result
        if screen is not None and res.n_iter < best.engine.max_iter and not (
            res.converged or res.stopped or res.interrupted
        ):
            best.result = best.engine.run(best.schedule, best.state, result=res)
            self._after_stage(best)
            best.score = self._restart_score(data, best)
        return best

    def _after_stage(self, run: Run) -> None:
        """Called after each engine stage of a restart (e.g. to free scratch buffers)."""

    def _set_run_attributes(self, result: FitResult | None) -> None:
        """``n_iter_``, ``converged_``, ``history_`` of the route that ran."""
        assert result is not None
        self.n_iter_ = int(result.n_iter)
        self.converged_ = bool(result.converged)
        self.history_ = list(result.history)

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        check_is_fitted(self, [self._fitted_check])

    def predict(self, X: Any) -> np.ndarray:
        """Most probable (or closest) cluster of each sample, (N,)."""
        self._check_fitted()
        return self._log_scores(X).argmax(1).cpu().numpy()

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """``fit(X).predict(X)``: the labels of the final fit."""
        return self.fit(X).predict(X)


class ProbabilisticMixin:
    """``predict_proba`` as the softmax of ``_log_scores``."""

    def predict_proba(self, X: Any) -> np.ndarray:
        """Cluster membership probabilities, (N, K)."""
        self._check_fitted()
        return torch.softmax(self._log_scores(X).double(), 1).cpu().numpy()


class MixtureMixin(ProbabilisticMixin):
    """Generative mixtures: ``score_samples`` (hook) and ``score``, ``bic``, ``aic``, ``sample``.

    Subclasses implement ``score_samples(X) -> (N,)``, ``_n_parameters() -> int`` and
    ``_sample(n, rng) -> (X, labels)``.
    """

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample (higher is better)."""
        return float(np.mean(self.score_samples(X)))

    def bic(self, X: Any) -> float:
        """Bayesian information criterion at the fitted parameters (lower is better)."""
        n = _n_rows(X)
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion at the fitted parameters (lower is better)."""
        n = _n_rows(X)
        return -2 * self.score(X) * n + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` points from the fitted model: (X, component labels). The draws
        follow ``random_state`` as scikit-learn's mixtures do."""
        from .._validation import check_positive_int

        self._check_fitted()
        check_positive_int(n_samples, "n_samples")
        rng = np.random.default_rng(resolve_seed(getattr(self, "random_state", None)))
        return self._sample(int(n_samples), rng)


def _n_rows(X: Any) -> int:
    return int(X.shape[0]) if isinstance(X, torch.Tensor) else int(np.shape(X)[0])
