"""The one module that turns user input into a checked tensor, or raises a clear error.

Every estimator calls :func:`check_array` on its input and the ``check_*`` helpers on its
hyperparameters; messages say what is wrong and what to do about it.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ._device import resolve_device, resolve_dtype

try:  # subclass scikit-learn's error when it is installed, so its tooling recognises ours
    from sklearn.exceptions import NotFittedError as _SKNotFitted
except ImportError:  # pragma: no cover - scikit-learn is an optional peer
    _SKNotFitted = ValueError


class NotFittedError(_SKNotFitted, ValueError, AttributeError):
    """Raised when a method that needs a fitted model is called before ``fit``."""


def _to_numpy_or_tensor(X: Any, name: str) -> np.ndarray | torch.Tensor:
    if isinstance(X, torch.Tensor):
        if X.is_sparse:
            raise TypeError(f"Sparse input is not supported; pass {name} as a dense tensor (X.to_dense()).")
        return X.detach()  # a tensor that requires grad is data here, not a graph node
    if hasattr(X, "toarray") and hasattr(X, "nnz"):  # scipy.sparse matrix or array
        raise TypeError(f"Sparse input is not supported; pass {name} as a dense array (X.toarray()).")
    if hasattr(X, "to_numpy") and callable(X.to_numpy):  # pandas DataFrame / Series
        if hasattr(X, "dtypes") and hasattr(X.dtypes, "__iter__"):
            bad = [str(c) for c, dt in zip(X.columns, X.dtypes) if not _is_numeric_dtype(dt)]
            if bad:
                raise TypeError(
                    f"{name} has non-numeric columns {bad}; drop or encode them before fitting."
                )
        X = _frame_to_numpy(X)
    if isinstance(X, str | bytes):
        raise TypeError(f"{name} must be array-like of numbers, got a string.")
    try:
        arr = np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"{name} could not be converted to an array ({exc}); pass a rectangular "
            "numeric array, tensor or DataFrame."
        ) from exc
    if arr.dtype.byteorder not in ("=", "|") and not arr.dtype.isnative:  # big-endian files
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _frame_to_numpy(X: Any) -> np.ndarray:
    """A pandas object as a float array; nullable dtypes (Int64, Float64, boolean) give NaN for
    their missing values, so they meet the NaN check instead of failing as non-numeric."""
    try:
        return X.to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError):
        return X.to_numpy()


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether a floating tensor holds no NaN or infinity: one read (min and max, to which NaN
    propagates), without the (N, D) mask of ``isfinite``."""
    if tensor.numel() == 0:
        return True
    lo, hi = torch.aminmax(tensor)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    if not tensor.is_floating_point() or _all_finite(tensor):
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        n_bad = int((~finite).sum())
        kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
        raise ValueError(
            f"{name} contains {n_bad} {kind} value(s); remove or impute them "
            "(e.g. drop rows with missing values) before fitting."
        )


def _is_numeric_dtype(dt: Any) -> bool:
    if getattr(dt, "_is_numeric", False):  # pandas extension dtypes (Int64, Float64, boolean)
        return True
    try:
        return np.issubdtype(np.dtype(dt), np.number) or np.issubdtype(np.dtype(dt), np.bool_)
    except TypeError:
        return False


def check_array(
    X: Any,
    *,
    name: str = "X",
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "float32",
    ndim: int | Iterable[int] = 2,
    min_samples: int = 1,
    n_features: int | tuple[int, ...] | None = None,
    allow_nan: bool = False,
) -> torch.Tensor:
    """Validate ``X`` and return it as a contiguous floating tensor on ``device``.

    When no conversion is needed the result shares memory with ``X`` (no copy of large data);
    estimators never write to it. Read-only arrays are copied.

    Parameters
    ----------
    X : array-like, numpy array, torch tensor (any device) or pandas DataFrame.
    dtype : "float32", "float64", a torch dtype, or "input" (float32 input stays float32, anything
        else becomes float64).
    ndim : allowed number of dimensions, e.g. ``2`` for (N, D) or ``(3, 4)`` for images.
    min_samples : minimum number of rows (e.g. the number of components).
    n_features : expected trailing shape (an int for (N, D) data, a tuple for images);
        checked at predict time against what ``fit`` saw.

    Raises
    ------
    TypeError for non-numeric input; ValueError for NaN/inf, wrong ndim, empty input,
    too few samples, or a feature-count mismatch.
    """
    dev = resolve_device(device)
    tensor = _as_real_tensor(_to_numpy_or_tensor(X, name), name)
    # "input": keep float32 / float64 as given (integers -> float64), e.g. to centre before a cast
    dt = _input_dtype(tensor) if isinstance(dtype, str) and dtype == "input" else resolve_dtype(dtype)
    _check_shape(tensor, name, ndim)
    if not allow_nan:
        _check_finite(tensor, name)
    source = tensor
    tensor = tensor.to(device=dev, dtype=dt)
    if not allow_nan and tensor.dtype != source.dtype and not _all_finite(tensor):
        big = float(source.abs().max())
        raise ValueError(
            f"{name} has values up to {big:.3g}, beyond the range of {dt} (max "
            f"{torch.finfo(dt).max:.3g}); rescale the data (e.g. standardise) or pass dtype='float64'."
        )
    if tensor.shape[0] < min_samples:
        raise ValueError(
            f"{name} has {tensor.shape[0]} sample(s) but at least {min_samples} are needed "
            f"(one per component); pass more data or fewer components."
        )
    if n_features is not None:
        _check_n_features(tensor, name, n_features)
    return tensor.contiguous()


def _input_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float32 if tensor.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64


def _as_real_tensor(arr: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """A real-valued tensor from a numeric (or numeric-convertible) array or tensor."""
    if isinstance(arr, np.ndarray):
        if arr.dtype == object or not _is_numeric_dtype(arr.dtype):
            try:
                arr = arr.astype(np.float64)
            except (ValueError, TypeError) as exc:
                raise TypeError(
                    f"{name} contains non-numeric values (dtype {arr.dtype}: {exc}); convert or "
                    "drop the non-numeric columns before fitting."
                ) from exc
        if np.iscomplexobj(arr):
            raise ValueError(f"Complex data not supported: {name} is complex; pass real-valued data.")
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:  # e.g. pandas copy-on-write views; torch needs writeable memory
            arr = arr.copy()
        return torch.from_numpy(arr)
    if arr.is_complex():
        raise ValueError(f"Complex data not supported: {name} is complex; pass real-valued data.")
    return arr


def _check_shape(tensor: torch.Tensor, name: str, ndim: int | Iterable[int]) -> None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if tensor.ndim not in allowed:
        hint = (
            " Reshape your data with X.reshape(-1, 1) if it has a single feature or "
            "X.reshape(1, -1) if it is a single sample."
            if tensor.ndim == 1
            else ""
        )
        raise ValueError(
            f"{name} must have {' or '.join(map(str, allowed))} dimensions, got "
            f"{tensor.ndim} (shape {tuple(tensor.shape)}).{hint}"
        )
    if tensor.ndim >= 2 and tensor.shape[0] > 0 and tensor.numel() == 0:
        raise ValueError(
            f"{name} has 0 feature(s) (shape={tuple(tensor.shape)}) while a minimum of 1 is required."
        )
    if tensor.shape[0] == 0 or tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}); pass at least one sample.")


def _check_n_features(tensor: torch.Tensor, name: str, n_features: int | tuple[int, ...]) -> None:
    expected = (n_features,) if isinstance(n_features, int) else tuple(n_features)
    got = tuple(tensor.shape[1:])
    if got != expected:
        what = f"{got[0]} features" if len(got) == 1 and len(expected) == 1 else f"shape {got}"
        want = f"{expected[0]} features" if len(expected) == 1 else f"shape {expected}"
        raise ValueError(
            f"{name} has {what}, but it is expecting {want} as input (as seen in fit); "
            "pass data with the same features as in fit."
        )


def check_labels(y: Any, *, name: str = "y", n_samples: int | None = None) -> np.ndarray:
    """1-D integer-coded label array (any hashable labels are re-coded to 0..C-1)."""
    arr = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass at least one label.")
    if n_samples is not None and arr.shape[0] != n_samples:
        raise ValueError(
            f"{name} has {arr.shape[0]} labels but there are {n_samples} samples; "
            "pass one label per sample."
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite labels.")
    _, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64)


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_scalar(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """A finite real number in the given range, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r}).")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value}.")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value}.")
    if high is not None and (v > high or (v == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {op} {high}, got {value}.")
    return v


def check_option(value: Any, name: str, options: Iterable[Any]) -> Any:
    opts = tuple(options)
    if value not in opts:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(opts)}.")
    return value


def check_is_fitted(estimator: Any, attributes: Iterable[str]) -> None:
    missing = [a for a in attributes if not hasattr(estimator, a)]
    if missing:
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet; call fit(X) "
            "before using this method."
        )
