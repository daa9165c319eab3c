"""Working frames: the affine map from the user's units to the units a model is fitted in.

Answers must not depend on units: every estimator fits ``x_w = (x - shift) / scale`` and reports
its parameters back in the user's units. The map is computed and applied in float64 before the
data are cast to the fit's dtype, so a large offset (``X + 1e8``) loses no digits to float32.

- :func:`standard_frame`: shift = the per-feature mean, scale = one scalar, the root mean
  per-feature variance (Gaussian mixtures: equivariant under x -> a x + b).
- :func:`unit_range_frame`: shift = the smallest value, scale = the range, both scalars (neural
  heads and DTI, whose defaults are set for data in [0, 1]: pixel data already there is unchanged).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ._rowmaps import affine_rows, column_moments, rows_supported

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Frame:
    """``x_w = (x - shift) / scale``; shift () or (D,) float64, scale a positive float."""

    shift: torch.Tensor
    scale: float

    def apply(self, X: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """X (N, ...) in the working frame, in ``dtype``, computed in float64 block by block."""
        if rows_supported(X) and dtype in (torch.float32, torch.float64) and X.shape[0]:
            return affine_rows(X, self.shift, self.scale, dtype)  # one compiled pass
        if X.dtype == dtype == torch.float64:
            return (X - self.shift.to(X.device)) / self.scale
        out = torch.empty(X.shape, dtype=dtype, device=X.device)
        shift = self.shift.to(X.device)
        for start in range(0, X.shape[0], _CHUNK):  # blocks of rows: no float64 copy of all of X
            block = X[start : start + _CHUNK].double()
            out[start : start + _CHUNK] = ((block - shift) / self.scale).to(dtype)
        return out

    def inverse(self, Xw: torch.Tensor) -> torch.Tensor:
        """Working-frame rows (N, ...) back in the user's units, float64."""
        return Xw.double() * self.scale + self.shift.to(Xw.device)

    @property
    def log_scale(self) -> float:
        return math.log(self.scale)


def _positive(scale: float) -> float:
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def standard_frame(X: torch.Tensor) -> Frame:
    """Per-feature mean and one scalar scale, sqrt(mean_j var_j), of X (N, D) (1 for constant data);
    two passes in float64 blocks (no float64 copy of X)."""
    frame = frame_from_moments(*data_moments(X))
    _warn_if_float32_lost_digits(X, frame)
    return frame


def data_moments(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and (biased) variance (D,) float64 of X (N, D) in float64 blocks (zeros for
    N = 0)."""
    if rows_supported(X) and X.dim() == 2 and X.shape[0]:
        return column_moments(X)  # compiled: both passes per cache-sized block
    return _chunked_moments(X)


def _chunked_moments(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and variance (D,) float64 of X (N, D) on any device, by torch ops in blocks."""
    total = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    for start in range(0, X.shape[0], _CHUNK):
        total += X[start : start + _CHUNK].double().sum(0)
    mean = total / max(X.shape[0], 1)
    sq = torch.zeros_like(total)
    for start in range(0, X.shape[0], _CHUNK):
        sq += ((X[start : start + _CHUNK].double() - mean) ** 2).sum(0)
    return mean, sq / max(X.shape[0], 1)


def frame_from_moments(mean: torch.Tensor, var: torch.Tensor) -> Frame:
    """The standard frame of data with per-feature mean (D,) and variance (D,) (e.g. summed over
    processes or chunks): shift = mean, scale = sqrt(mean_j var_j)."""
    scale = float(var.double().clamp(min=0).mean().sqrt()) if var.numel() else 1.0
    return Frame(mean.double().cpu(), _positive(scale))


def unit_range_frame(X: torch.Tensor) -> Frame:
    """Scalar min and range of X (any shape): the frame maps the data onto [0, 1]."""
    lo, hi = float(X.min()), float(X.max())
    frame = Frame(torch.tensor(lo, dtype=torch.float64), _positive(hi - lo))
    _warn_if_float32_lost_digits(X, frame)
    return frame


def _warn_if_float32_lost_digits(X: torch.Tensor, frame: Frame) -> None:
    """float32 input whose offset dwarfs its spread has already lost the digits that tell points
    apart; no frame can bring them back."""
    if X.dtype != torch.float32:
        return
    offset = float(frame.shift.abs().max())
    if offset > 1e4 * frame.scale:
        warnings.warn(
            f"X is float32 with values around {offset:.3g} but a spread of only {frame.scale:.3g}: "
            "float32 keeps about 7 significant digits, so points closer than "
            f"{offset * 1.2e-7:.3g} are indistinguishable. Pass float64 data (or subtract the offset) "
            "for results that do not depend on the units.",
            UserWarning,
            stacklevel=4,
        )


@dataclass(frozen=True)
class InputMap:
    """A neural head's input map: ``kind`` "standard" / "unit_range" (the :class:`Frame` ``frame``
    on the flattened rows), "l2" (the standard frame, then each row divided by its L2 norm: cosine
    geometry) or "none" (X as given; answers then depend on X's units)."""

    kind: str
    frame: Frame

    @classmethod
    def fit(cls, kind: str, X: torch.Tensor) -> InputMap:
        """The map of ``kind`` for X (N, ...) (features are the flattened trailing dimensions)."""
        flat = X.reshape(X.shape[0], -1)
        if kind in ("standard", "l2"):
            return cls(kind, standard_frame(flat))
        if kind == "unit_range":
            return cls(kind, unit_range_frame(flat))
        if kind == "none":
            return cls(kind, Frame(torch.zeros((), dtype=torch.float64), 1.0))
        raise ValueError(f"unknown input map {kind!r}; choose 'standard', 'unit_range', 'l2' or 'none'.")

    @classmethod
    def fitted(cls, estimator: object, kind: str | None = None) -> InputMap:
        """The map an estimator fitted, from its ``input_shift_`` / ``input_scale_`` and ``kind`` (default
        its ``preprocess_``); X as given for a model saved without one."""
        shift = torch.as_tensor(getattr(estimator, "input_shift_", 0.0), dtype=torch.float64)
        scale = float(getattr(estimator, "input_scale_", 1.0))
        return cls(kind or getattr(estimator, "preprocess_", "none"), Frame(shift, scale))

    def apply(self, X: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """X (N, ...) mapped, in ``dtype`` (the affine part computed in float64 blocks)."""
        if self.kind == "none":
            return X.to(dtype)
        flat = self.frame.apply(X.reshape(X.shape[0], -1), dtype)
        if self.kind == "l2":
            flat = torch.nn.functional.normalize(flat, dim=1)
        return flat.reshape(X.shape)
