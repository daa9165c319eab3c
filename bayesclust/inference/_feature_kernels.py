"""A whole block of the float64 feature-form E-step in one compiled call, for few feature columns and
components (:mod:`bayesclust.inference.em`, ``FUSED_ROWS_MAX_Q`` and ``FUSED_ROWS_MAX_K``).

There BLAS serves the block's two products badly: (m, Q) x (Q, K) with Q = 6 and K = 4 ran at some
4 GFLOP/s on one thread, and the (m, K) result then needs a transposed copy for the softmax along K
(benchmarks/results/speed.md). :func:`feature_rows` takes the block in tiles of rows small enough for
L1: each tile is transposed to (Q, t), its weighted log densities (K, t) taken by multiply-adds along
the rows, normalised (:func:`_cholesky_kernels._normalise`), and its statistics ``r^T phi`` (K, Q)
and counts added, so the block's rows are read once and nothing of size m is written.

Sums run in a fixed order (tiles in order, rows in order within a tile), so results do not depend on
threads; the fast-math flags are those of :mod:`_cholesky_kernels`.
"""

from __future__ import annotations

from numba import njit

from ._cholesky_kernels import _FLAGS, _normalise

TILE = 256  # rows a tile: its (Q, t) rows and (K, t) log densities stay in L1 for Q K small


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def _tile_logits(pt, A, c, lg):  # pragma: no cover - compiled
    """``lg[k, i] = c[k] + sum_q A[q, k] pt[q, i]`` for pt (Q, t), A (Q, K), c (K,), lg (K, t): four
    columns a sweep over the row, so that a row of ``lg`` is loaded and stored once per four."""
    q_, t = pt.shape
    for k in range(lg.shape[0]):
        row = lg[k]
        ck = c[k]
        for i in range(t):
            row[i] = ck
        q = 0
        while q + 4 <= q_:
            a0, a1, a2, a3 = A[q, k], A[q + 1, k], A[q + 2, k], A[q + 3, k]
            p0, p1, p2, p3 = pt[q], pt[q + 1], pt[q + 2], pt[q + 3]
            for i in range(t):
                row[i] += (a0 * p0[i] + a1 * p1[i]) + (a2 * p2[i] + a3 * p3[i])
            q += 4
        while q < q_:
            a, p = A[q, k], pt[q]
            for i in range(t):
                row[i] += a * p[i]
            q += 1


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def _tile_statistics(pt, r, n, G):  # pragma: no cover - compiled
    """``n[k] += sum_i r[k, i]`` and ``G[k, q] += sum_i r[k, i] pt[q, i]`` for r (K, t), pt (Q, t)."""
    q_, t = pt.shape
    for k in range(r.shape[0]):
        row = r[k]
        nk = 0.0
        for i in range(t):
            nk += row[i]
        n[k] += nk
        q = 0
        while q + 4 <= q_:
            p0, p1, p2, p3 = pt[q], pt[q + 1], pt[q + 2], pt[q + 3]
            s0 = s1 = s2 = s3 = 0.0
            for i in range(t):
                v = row[i]
                s0 += v * p0[i]
                s1 += v * p1[i]
                s2 += v * p2[i]
                s3 += v * p3[i]
            G[k, q] += s0
            G[k, q + 1] += s1
            G[k, q + 2] += s2
            G[k, q + 3] += s3
            q += 4
        while q < q_:
            p = pt[q]
            s = 0.0
            for i in range(t):
                s += row[i] * p[i]
            G[k, q] += s
            q += 1


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def _tile(phi, s, t, A, c, pt, lg):  # pragma: no cover - compiled
    """Rows ``s:s + t`` of phi (m, Q) transposed into ``pt`` as (Q, t), and their weighted log densities
    (K, t) into ``lg`` (:func:`_tile_logits`); returns both views."""
    q_, k_ = A.shape
    tile = pt[: q_ * t].reshape(q_, t)
    for i in range(t):
        for q in range(q_):
            tile[q, i] = phi[s + i, q]
    logits = lg[: k_ * t].reshape(k_, t)
    _tile_logits(tile, A, c, logits)
    return tile, logits


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def feature_rows(phi, A, c, floor, lg, pt, work, bits, n, G, accumulate):  # pragma: no cover - compiled
    """One block of the feature-form E-step in float64: rows phi (m, Q) (C-contiguous, float64 or
    float32, each tile taken into float64), coefficients
    A (Q, K) and c (K,); returns the rows' summed log-likelihood and, if ``accumulate``, adds the
    counts ``sum_i r[i, k]`` to n (K,) and ``r^T phi`` to G (K, Q). Work arrays: lg (>= K TILE,),
    pt (>= Q TILE,), work (2, >= TILE) float64, bits (>= TILE,) int64."""
    m = phi.shape[0]
    total = 0.0
    for s in range(0, m, TILE):
        t = min(m, s + TILE) - s
        tile, logits = _tile(phi, s, t, A, c, pt, lg)
        total += _normalise(logits, floor, work, bits)
        if accumulate:
            _tile_statistics(tile, logits, n, G)
    return total


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def feature_argmax(phi, A, c, lg, pt, labels):  # pragma: no cover - compiled
    """``labels[i] = argmax_k phi[i] . A[:, k] + c[k]`` (the first maximum) for rows phi (m, Q)
    (C-contiguous), A (Q, K), c (K,), labels (m,) int64; work arrays lg (>= K TILE,), pt (>= Q TILE,)."""
    m, k_ = phi.shape[0], A.shape[1]
    for s in range(0, m, TILE):
        t = min(m, s + TILE) - s
        tile, logits = _tile(phi, s, t, A, c, pt, lg)
        best, arg = logits[0], labels[s : s + t]
        for i in range(t):
            arg[i] = 0
        for k in range(1, k_):  # row by row, so that the comparisons vectorise
            row = logits[k]
            for i in range(t):
                if row[i] > best[i]:
                    best[i] = row[i]
                    arg[i] = k
