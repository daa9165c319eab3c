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
``_renamed_params``; given (in ``__init__`` or ``set_params``), it sets the new one with a FutureWarning.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import check_is_fitted
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
            if isinstance(value, str) and value == DEPRECATED:
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
        self._apply_renamed([k for k in params if k in self._renamed_params])
        return self

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
        return tags

    # ------------------------------------------------------------------ persistence
    def _fitted_attributes(self) -> list[str]:
        return [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]

    def save(self, path: str | Path) -> None:
        """Write hyperparameters and every fitted attribute to ``path`` (``torch.save`` format)."""
        check_is_fitted(self, ["n_features_in_"])
        state = {k: _to_cpu(getattr(self, k)) for k in self._fitted_attributes()}
        extra = self._extra_state() if hasattr(self, "_extra_state") else {}
        torch.save(
            {
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "params": self.get_params(deep=False),
                "fitted": state,
                "extra": extra,
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> BaseEstimator:
        """Load a model written by :meth:`save`; ``cls`` must match the saved class."""
        blob = torch.load(Path(path), map_location="cpu", weights_only=False)
        saved = blob.get("class", "")
        if not saved.endswith(cls.__qualname__):
            raise TypeError(f"{path} holds a {saved}, not a {cls.__qualname__}; load it with that class.")
        obj = cls(**blob["params"])
        for k, v in blob["fitted"].items():
            setattr(obj, k, v)
        if blob.get("extra") and hasattr(obj, "_load_extra_state"):
            obj._load_extra_state(blob["extra"])
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
        """Fit the model to ``X``; ``y`` is ignored. Returns ``self``."""
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
            run = self._start(data, restart_seed(getattr(self, "random_state", None), i))
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
        return self._sample(int(n_samples), np.random.default_rng(getattr(self, "random_state", None)))


def _n_rows(X: Any) -> int:
    return int(X.shape[0]) if isinstance(X, torch.Tensor) else int(np.shape(X)[0])
