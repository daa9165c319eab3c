"""Compiled (Numba) row maps used below the layers: each output row depends on one input row only.

:func:`quadratic_features` writes the full / tied Gaussian feature map ``[x_i x_j for i <= j, x]``
row by row. The torch form (D slice products, see :func:`bayesclust.models.gaussian.feature_map`)
writes each product into a column block of every row, so the (n, Q) output passes through the cache D
times; here each row's Q values are written once, in order. Rows are independent, so the result does
not depend on the number of threads.

:func:`column_moments` and :func:`affine_rows` are the working frame's two passes
(:mod:`bayesclust._frame`): per-feature mean and variance in float64 by blocks of rows merged with
Chan et al.'s pairwise formula, and ``(x - shift) / scale`` computed in float64 and cast to the fit's
dtype, each reading X once with no float64 copy of it. Blocks have a fixed number of rows, so the
moments do not depend on the number of threads either.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

_MOMENT_ROWS = 2048  # rows per block of column_moments: a block's second pass reads it from cache


@njit(parallel=True, cache=True)
def _quadratic(x, out):  # pragma: no cover - compiled
    n, d = x.shape
    for r in prange(n):
        c = 0
        for i in range(d):
            xi = x[r, i]
            for j in range(i, d):
                out[r, c] = xi * x[r, j]
                c += 1
        for i in range(d):
            out[r, c + i] = x[r, i]


def quadratic_supported(X: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether :func:`quadratic_features` takes these tensors: CPU, one float dtype, no autograd,
    unit column stride (row strides may differ: ``out`` may be a block of a wider cache)."""
    return (
        X.dtype in (torch.float32, torch.float64)
        and out.dtype == X.dtype
        and X.device.type == "cpu"
        and out.device.type == "cpu"
        and not (X.requires_grad or out.requires_grad)
        and X.dim() == 2
        and out.dim() == 2
        and X.stride(1) == 1
        and out.stride(1) == 1
    )


def numba_threads() -> None:
    """Numba's parallel loops take torch's thread count (within Numba's pool)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def quadratic_features(X: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[:, :D(D+1)/2 + D] = [x_i x_j (i <= j, row-major upper triangle), x]`` for X (n, D);
    ``out`` (n, >= Q) on the CPU, checked by :func:`quadratic_supported`. Returns ``out``."""
    numba_threads()
    if X.shape[0]:
        _quadratic(X.numpy(), out.numpy())
    return out


@njit(parallel=True, cache=True)
def _block_moments(x, ref, rows):  # pragma: no cover - compiled
    """Per block of ``rows`` rows: count, mean of ``x - ref`` and centred sum of squares (float64)."""
    n, d = x.shape
    nblk = (n + rows - 1) // rows
    counts, means, m2 = np.zeros(nblk), np.zeros((nblk, d)), np.zeros((nblk, d))
    for t in prange(nblk):
        lo, hi = t * rows, min(n, (t + 1) * rows)
        s = np.zeros(d)
        for i in range(lo, hi):
            for j in range(d):
                s[j] += x[i, j] - ref[j]
        m = s / (hi - lo)
        q = np.zeros(d)
        for i in range(lo, hi):
            for j in range(d):
                v = (x[i, j] - ref[j]) - m[j]
                q[j] += v * v
        counts[t], means[t], m2[t] = hi - lo, m, q
    return counts, means, m2


@njit(parallel=True, cache=True)
def _affine(x, shift, scale, out):  # pragma: no cover - compiled
    n, d = x.shape
    for i in prange(n):
        for j in range(d):
            out[i, j] = (np.float64(x[i, j]) - shift[j]) / scale


def rows_supported(X: torch.Tensor) -> bool:
    """Whether :func:`column_moments` / :func:`affine_rows` take X: a contiguous CPU float32 / float64
    tensor without autograd."""
    return (
        X.dtype in (torch.float32, torch.float64)
        and X.device.type == "cpu"
        and X.is_contiguous()
        and not X.requires_grad
    )


def column_moments(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and (biased) variance, float64 (D,), of X (n, D) with n >= 1 (see
    :func:`rows_supported`). Sums are taken about the first row (so a large offset does not round
    them) and blocks merged by ``M2 = sum_b [M2_b + n_b (mean_b - mean)^2]`` (Chan, Golub and
    LeVeque 1983): no raw second moments, no cancellation."""
    numba_threads()
    ref = X[0].double()
    counts, means, m2 = (torch.from_numpy(a) for a in _block_moments(X.numpy(), ref.numpy(), _MOMENT_ROWS))
    n = counts.sum()
    mean = counts @ means / n  # about ref
    return ref + mean, (m2.sum(0) + counts @ (means - mean).square()) / n


def affine_rows(X: torch.Tensor, shift: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``(X - shift) / scale`` in float64, cast to ``dtype`` (float32 / float64), for X (n, ...)
    (see :func:`rows_supported`) and shift () or the shape of one row's last axis."""
    flat = X.reshape(X.shape[0], -1) if X.dim() != 2 else X
    d = flat.shape[1]
    shift = shift.double().cpu()
    if shift.numel() == 1:
        row = shift.reshape(1).expand(d)
    else:
        row = shift.expand(*X.shape[1:]).reshape(-1)
    out = torch.empty(flat.shape, dtype=dtype)
    numba_threads()
    if flat.numel():
        _affine(flat.numpy(), row.contiguous().numpy(), float(scale), out.numpy())
    return out.view(X.shape)


__all__ = [
    "affine_rows",
    "column_moments",
    "numba_threads",
    "quadratic_features",
    "quadratic_supported",
    "rows_supported",
]
