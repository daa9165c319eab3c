"""Estimator base: scikit-learn parameter conventions, save/load, without depending on scikit-learn."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import check_is_fitted


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


class ClusterMixin:
    """``fit_predict`` returns the labels of the final fit, so it equals ``fit(X).predict(X)``."""

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X).predict(X)
