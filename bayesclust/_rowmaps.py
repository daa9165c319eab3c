"""Compiled (Numba) row maps used below the layers: each output row depends on one input row only.

:func:`quadratic_features` writes the full / tied Gaussian feature map ``[x_i x_j for i <= j, x]``
row by row. The torch form (D slice products, see :func:`bayesclust.models.gaussian.feature_map`)
writes each product into a column block of every row, so the (n, Q) output passes through the cache D
times; here each row's Q values are written once, in order. Rows are independent, so the result does
not depend on the number of threads.
"""

from __future__ import annotations

import numba
import torch
from numba import njit, prange


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


__all__ = ["numba_threads", "quadratic_features", "quadratic_supported"]
