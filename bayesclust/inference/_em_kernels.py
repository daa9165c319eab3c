"""Fused CPU passes of the soft pseudo-label EM (:func:`softlabels.em_soft_labels`), compiled by Numba.

The torch path of an EM iteration runs about eight elementwise/reduction ops per cache-sized chunk of
``sigma`` and ``y`` (N, K). Here each row is read once from memory for its two dot products and
updated in place while it is still in L1, so an iteration streams ``sigma`` and ``y`` once: about
3 bytes moved per byte of ``y`` (read sigma and y, write y). Timings against the torch path:
``benchmarks/RESULTS.md`` (``bench_discriminative.py --only pseudolabel-cost``).

Rows are split into a fixed number of blocks (independent of the thread count), each summed
sequentially, so results do not depend on the number of threads. Column sums are accumulated in the
input dtype over runs of ``_FLUSH`` rows and then in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from .._rowmaps import numba_threads
from .engine import deferred_interrupt

_BLOCKS = 64  # row blocks of the parallel loop (fixed: results do not depend on the thread count)
_FLUSH = 256  # rows summed in the input dtype before adding into the float64 column sums


@njit(inline="always", cache=True)
def _flush(col, acc):  # pragma: no cover - compiled
    """``col += acc`` (float64 += input dtype), then ``acc = 0``."""
    for j in range(acc.shape[0]):
        col[j] += acc[j]
        acc[j] = 0.0


@njit(parallel=True, fastmath=True, cache=True)
def _init_pass(src, y, floor, nblk):  # pragma: no cover - compiled
    """``y_i = max(src_i, floor) / sum``; returns the float64 column sums of ``y``."""
    n, k = src.shape
    rows = (n + nblk - 1) // nblk
    cols = np.zeros((nblk, k))
    for t in prange(nblk):
        acc = np.zeros_like(src[0])
        for i in range(t * rows, min(n, (t + 1) * rows)):
            s = 0.0
            for j in range(k):
                v = max(src[i, j], floor)
                y[i, j] = v
                s += v
            r = 1.0 / s
            for j in range(k):
                v = y[i, j] * r
                y[i, j] = v
                acc[j] += v
            if (i - t * rows) % _FLUSH == _FLUSH - 1:
                _flush(cols[t], acc)
        _flush(cols[t], acc)
    return cols.sum(0)


@njit(parallel=True, fastmath=True, cache=True)
def _collision_pass(p, q, b, inv_n, tiny, nblk):  # pragma: no cover - compiled
    """One collision-CE EM iteration in place on ``q``; returns (column sums, sum_i ln sigma_i . y_i).

    ``q_ik <- q_ik (a_i p_ik + b_k) / z_i``, ``a_i = 1 / (N sigma_i . y_i)``, ``z_i = 1/N + y_i . b``
    (the update of :func:`softlabels.em_soft_labels`).
    """
    n, k = p.shape
    rows = (n + nblk - 1) // nblk
    cols = np.zeros((nblk, k))
    logs = np.zeros(nblk)
    for t in prange(nblk):
        acc = np.zeros_like(p[0])
        ls = 0.0
        for i in range(t * rows, min(n, (t + 1) * rows)):
            s = inv_n - inv_n  # a zero of the input dtype: float32 sums vectorise twice as wide
            z = s
            for j in range(k):
                s += p[i, j] * q[i, j]
                z += q[i, j] * b[j]
            s = max(s, tiny)
            ls += math.log(s)
            z += inv_n
            c = 1.0 / z
            a = c * inv_n / s
            for j in range(k):
                v = q[i, j] * (a * p[i, j] + c * b[j])
                q[i, j] = v
                acc[j] += v
            if (i - t * rows) % _FLUSH == _FLUSH - 1:
                _flush(cols[t], acc)
        _flush(cols[t], acc)
        logs[t] = ls
    return cols.sum(0), logs.sum()


@njit(parallel=True, fastmath=True, cache=True)
def _reverse_pass(p, q, b, inv_n, tiny, nblk):  # pragma: no cover - compiled
    """One reverse-CE EM iteration in place on ``q``; returns (column sums, sum_ik sigma_ik ln y_ik).

    ``q_ik <- (p_ik / N + b_k q_ik) / z_i``, ``z_i = 1/N + y_i . b``.
    """
    n, k = p.shape
    rows = (n + nblk - 1) // nblk
    cols = np.zeros((nblk, k))
    logs = np.zeros(nblk)
    for t in prange(nblk):
        acc = np.zeros_like(p[0])
        ls = 0.0
        for i in range(t * rows, min(n, (t + 1) * rows)):
            z = inv_n - inv_n
            d = 0.0
            for j in range(k):
                z += q[i, j] * b[j]
                d += p[i, j] * math.log(max(q[i, j], tiny))
            ls += d
            c = 1.0 / (z + inv_n)
            for j in range(k):
                v = (p[i, j] * inv_n + b[j] * q[i, j]) * c
                q[i, j] = v
                acc[j] += v
            if (i - t * rows) % _FLUSH == _FLUSH - 1:
                _flush(cols[t], acc)
        _flush(cols[t], acc)
        logs[t] = ls
    return cols.sum(0), logs.sum()


def supported(*tensors: torch.Tensor) -> bool:
    """Whether the fused passes can run on these (N, K) tensors: CPU, contiguous, one float dtype."""
    t0 = tensors[0]
    return t0.dtype in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.is_contiguous() and t.dtype == t0.dtype and t.dim() == 2
        for t in tensors
    )


def init_labels(src: torch.Tensor, y: torch.Tensor, floor: float) -> torch.Tensor:
    """``y = max(src, floor)`` row-normalised (``src`` may be ``y``); returns float64 column sums (K,)."""
    numba_threads()
    nblk = max(1, min(_BLOCKS, src.shape[0]))
    with deferred_interrupt():
        cols = _init_pass(src.numpy(), y.numpy(), float(floor), nblk)
    return torch.from_numpy(cols)


def em_iteration(
    p: torch.Tensor, q: torch.Tensor, b: torch.Tensor, loss: str, tiny: float
) -> tuple[torch.Tensor, float]:
    """One EM iteration in place on ``q`` (N, K): ``(float64 column sums (K,), data sum)``.

    The data sum is ``sum_i ln sigma_i . y_i`` (collision) or ``sum_ik sigma_ik ln y_ik`` (reverse) at
    the ``q`` before the update.
    """
    numba_threads()
    n = p.shape[0]
    nblk = max(1, min(_BLOCKS, n))
    dt = np.float32 if p.dtype == torch.float32 else np.float64
    fn = _collision_pass if loss == "collision" else _reverse_pass
    with deferred_interrupt():
        cols, data = fn(p.numpy(), q.numpy(), b.numpy(), dt(1.0 / n), dt(tiny), nblk)
    return torch.from_numpy(cols), float(data)
