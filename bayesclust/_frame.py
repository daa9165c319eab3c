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

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Frame:
    """``x_w = (x - shift) / scale``; shift () or (D,) float64, scale a positive float."""

    shift: torch.Tensor
    scale: float

    def apply(self, X: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """X (N, ...) in the working frame, in ``dtype``, computed in float64 block by block."""
        if X.dtype == dtype == torch.float64:
            return (X - self.shift.to(X.device)) / self.scale
        out = torch.empty(X.shape, dtype=dtype, device=X.device)
        shift = self.shift.to(X.device)
        for start in range(0, X.shape[0], _CHUNK):  # blocks of rows: no float64 copy of all of X
            block = X[start : start + _CHUNK].double()
            out[start : start + _CHUNK] = ((block - shift) / self.scale).to(dtype)
        return out

    @property
    def log_scale(self) -> float:
        return math.log(self.scale)


def _positive(scale: float) -> float:
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def standard_frame(X: torch.Tensor) -> Frame:
    """Per-feature mean and one scalar scale, sqrt(mean_j var_j), of X (N, D) (1 for constant data)."""
    Xd = X.double()
    mean = Xd.mean(0)
    var = Xd.var(0, unbiased=False).mean() if X.shape[0] > 1 else torch.zeros((), dtype=torch.float64)
    frame = Frame(mean.cpu(), _positive(float(var.sqrt())))
    _warn_if_float32_lost_digits(X, frame)
    return frame


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
