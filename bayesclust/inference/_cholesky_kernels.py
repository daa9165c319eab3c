"""Fused elementwise passes of the Cholesky E-step (:mod:`bayesclust.inference.em_cholesky`), compiled by
Numba: single-threaded and without the GIL, so that each lane of :mod:`lanes` runs them beside its own
single-threaded torch products.

A block's products stay in torch (BLAS): float64 ``u = x P_k`` (K, m, D) and ``sum w w^T``; float32
``y = z P_k`` and ``sum (r z) z^T``, with ``z = x - mu_k`` from :func:`centre` (one pass, in place of
torch's broadcast subtraction). Between them the torch path takes about a dozen operations (the
``b_k`` subtraction, the norm and its scaling, the softmax, the square root of r, the weighting, the
first moments, the counts), each a pass over its array and a dispatch. Here one call (:func:`e_block`;
float32: :func:`e_block_centred`, whose responsibilities and first moments are taken in float64) reads
the rows once for their log densities and once more to weigh them. Numba has no
vector exp without SVML, so :func:`_exp_rows` has its own.

The feature form's blocks (:mod:`bayesclust.inference.em`) take :func:`normalise_counts` between
their two products.

Sums run in a fixed order (rows in order within a block), so results do not depend on threads. The
fast-math flags allow reassociation and contraction only, so the D-wide sums vectorise and infinities
and NaNs keep their meaning.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_FLAGS = {"reassoc", "contract", "nsz"}


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def log_density(u, b, c, out):  # pragma: no cover - compiled
    """``out[k, i] = c[k] - |u[k, i] - b[k]|^2 / 2`` for u (K, m, D), b (K, D), c (K,), out (K, m)."""
    k_, m, d_ = u.shape
    for k in range(k_):
        for i in range(m):
            s = 0.0
            for d in range(d_):
                v = u[k, i, d] - b[k, d]
                s += v * v
            out[k, i] = c[k] - 0.5 * s


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def weigh_rows(u, r, b, n, s1):  # pragma: no cover - compiled
    """For u (K, m, D) and responsibilities r (K, m): ``u[k, i] <- sqrt(r[k, i]) (u[k, i] - b[k])`` in
    place, ``n[k] += sum_i r[k, i]`` and ``s1[k] += sum_i r[k, i] (u[k, i] - b[k])`` (n (K,), s1 (K, D))."""
    k_, m, d_ = u.shape
    for k in range(k_):
        nk = 0.0
        for i in range(m):
            rv = r[k, i]
            nk += rv
            root = math.sqrt(rv)
            for d in range(d_):
                v = (u[k, i, d] - b[k, d]) * root
                u[k, i, d] = v
                s1[k, d] += root * v
        n[k] += nk


# exp(x) = 2^t exp(r), t = round(x / ln 2), r = x - t ln 2 in [-ln 2 / 2, ln 2 / 2] (ln 2 in two parts,
# Cody and Waite 1980), exp(r) by its Taylor series to r^13 / 13! (the next term is below 5e-18)
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_C = tuple(1.0 / math.factorial(j) for j in range(14))
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = _C[2:]


@njit(nogil=True, fastmath={"contract"}, cache=True)  # no reassociation: it would undo the reduction
def _exp_rows(x, floor, bits):  # pragma: no cover - compiled
    """``x[i] <- exp(max(x[i], floor))`` for x (m,) <= 0 and ``floor >= -1000``, vectorised (no libm
    call); ``bits`` (m,) int64 is a work array."""
    m = x.shape[0]
    for i in range(m):
        v = max(x[i], floor)
        t = np.floor(v * _LOG2E + 0.5)
        r = (v - t * _LN2_HI) - t * _LN2_LO
        p = _C12 + r * _C13
        p = _C11 + r * p
        p = _C10 + r * p
        p = _C9 + r * p
        p = _C8 + r * p
        p = _C7 + r * p
        p = _C6 + r * p
        p = _C5 + r * p
        p = _C4 + r * p
        p = _C3 + r * p
        p = _C2 + r * p
        p = 1.0 + r * p
        x[i] = 1.0 + r * p
        bits[i] = (np.int64(t) + 1023) << 52
    two_t = bits.view(np.float64)
    for i in range(m):
        x[i] *= two_t[i]


_NORMALISE_TILE = 512  # rows a tile of :func:`_normalise`: its (K, t) values stay in L1 / L2 between passes


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def _normalise(logits, floor, work, bits):  # pragma: no cover - compiled
    """Weighted log densities (K, m) float64 -> responsibilities in place (relative ones below
    ``exp(floor)`` floored, as :func:`bayesclust.inference.responsibilities.exp_normalise_`); returns
    the rows' summed log-likelihood. ``work`` (2, >= min(m, 512)) float64, ``bits`` (>= min(m, 512),)
    int64. Rows go in tiles, so that the passes over a tile (peak, exp, sum, scaling) read it from
    cache, not from memory."""
    k_, m = logits.shape
    total = 0.0
    # sum_i log(norm_i) as the logs of products of ``group`` norms (each in [1, K]: the peak's term is
    # 1), so that the loop vectorises and takes one libm log per group, not one per row
    group = max(1, int(1000.0 / max(1.0, math.log2(k_))))
    for s in range(0, m, _NORMALISE_TILE):
        t = min(m, s + _NORMALISE_TILE) - s
        peak, norm = work[0, :t], work[1, :t]
        for i in range(t):
            peak[i] = logits[0, s + i]
            norm[i] = 0.0
        for k in range(1, k_):
            row = logits[k, s : s + t]
            for i in range(t):
                peak[i] = max(peak[i], row[i])
        for k in range(k_):
            row = logits[k, s : s + t]
            for i in range(t):
                row[i] -= peak[i]
            _exp_rows(row, floor, bits)
            for i in range(t):
                norm[i] += row[i]
        for i in range(t):
            total += peak[i]
        for start in range(0, t, group):
            p = 1.0
            for i in range(start, min(t, start + group)):
                p *= norm[i]
            total += math.log(p)
        for i in range(t):
            norm[i] = 1.0 / norm[i]
        for k in range(k_):
            row = logits[k, s : s + t]
            for i in range(t):
                row[i] *= norm[i]
    return total


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def normalise_counts(logits, floor, work, bits, n, count):  # pragma: no cover - compiled
    """Weighted log densities (K, m) (float32 or float64) -> responsibilities in place
    (:func:`_normalise`) and, if ``count``, ``n[k] += sum_i r[k, i]`` (n (K,) float64); returns the
    rows' summed log-likelihood. The feature form's fused block (:mod:`bayesclust.inference.em`)."""
    total = _normalise(logits, floor, work, bits)
    if count:
        k_, m = logits.shape
        for k in range(k_):
            nk = 0.0
            for i in range(m):
                nk += logits[k, i]
            n[k] += nk
    return total


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def e_block(u, b, c, floor, logits, work, bits, n, s1, weigh):  # pragma: no cover - compiled
    """One block of the float64 E-step from ``u = x P_k`` (K, m, D): the responsibilities r (K, m) of
    ``c_k - |u_k - b_k|^2 / 2`` into ``logits`` (:func:`_normalise`) and, if ``weigh``, u overwritten
    by ``sqrt(r) (u - b_k)``, ``n += sum_i r`` and ``s1 += sum_i r (u - b_k)``; returns the block's
    log-likelihood. ``work`` (2, >= m) float64 and ``bits`` (>= m,) int64 are work arrays."""
    log_density(u, b, c, logits)
    total = _normalise(logits, floor, work, bits)
    if weigh:
        weigh_rows(u, logits, b, n, s1)
    return total


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def centre(x, mu, z):  # pragma: no cover - compiled
    """``z[k, i] = x[i] - mu[k]`` for x (m, D) and z (K, m, D), both contiguous, and mu (K, D)."""
    k_, m, d_ = z.shape
    xf = x.reshape(m * d_)
    for k in range(k_):
        zf, muk = z[k].reshape(m * d_), mu[k]
        for i in range(m):
            base = i * d_
            for d in range(d_):
                zf[base + d] = xf[base + d] - muk[d]


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def centred_log_density(y, c, out):  # pragma: no cover - compiled
    """``out[k, i] = c[k] - |y[k, i]|^2 / 2`` in float64 for whitened rows y (K, m, D) of any float."""
    k_, m, d_ = y.shape
    for k in range(k_):
        for i in range(m):
            s = 0.0
            for d in range(d_):
                v = np.float64(y[k, i, d])
                s += v * v
            out[k, i] = c[k] - 0.5 * s


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def e_block_centred(y, z, c, floor, logits, work, bits, n, s1, weigh):  # pragma: no cover - compiled
    """One block of the E-step of centred rows (float32: :class:`em_cholesky.CentredSums`) from
    ``z = x - mu_k`` and ``y = z P_k`` (K, m, D): the responsibilities r (K, m) of
    ``c_k - |y|^2 / 2`` into ``logits`` (float64, :func:`_normalise`) and, if ``weigh``, y overwritten
    by ``r z``, ``n += sum_i r`` and ``s1 += sum_i r z`` (both float64); returns the block's
    log-likelihood."""
    centred_log_density(y, c, logits)
    total = _normalise(logits, floor, work, bits)
    if weigh:
        k_, m, d_ = z.shape
        for k in range(k_):
            nk = 0.0
            for i in range(m):
                rv = logits[k, i]
                nk += rv
                for d in range(d_):
                    v = rv * z[k, i, d]
                    y[k, i, d] = v
                    s1[k, d] += v
            n[k] += nk
    return total
