"""EM for any :class:`~bayesclust.models.family.EMFamily`, chunked over the data.

A family writes every component's weighted log density as one matmul on its feature map,
``log w_k + log p(x | theta_k) = phi(x) . A[:, k] + c[k]``, so the E-step is one (n x Q) @ (Q x K)
product per chunk and the M-step needs only the statistics G (K, Q + 1) = r^T [phi(X), 1]
(responsibilities r (n, K)). Memory is O(chunk x (Q + K)), never O(N x K x D), and there is no
Python loop over components. :func:`em_step` is the engine Step; the totals go through
``streaming.reduce_statistics`` (the distributed seam). float64 blocks in memory take their
elementwise work (softmax, log-likelihood, counts) in one compiled call between the two products
(:func:`_fused_feature_lane`); with few feature columns and components, the whole block, products
included, and the labels pass's argmax too (:mod:`_feature_kernels`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch

from ..models.family import EMFamily
from ..models.gaussian import CholeskyCoefficients, GMMParams, NotPositiveDefiniteError, cholesky_coefficients
from . import _cholesky_kernels as kernels
from . import _feature_kernels as feature_kernels
from . import em_cholesky, lanes
from .responsibilities import EXP_FLOOR, exp_normalise_
from .streaming import Features, reduce_statistics, weighted_statistics


class Centred(NamedTuple):
    """Components (indices (T,)) whose log densities and statistics the feature form takes from x
    centred on their means, in the Cholesky form (coefficients, c (T,), factors P), because their
    uncentred float32 forms cancel (``GaussianFamily.centred_components``)."""

    idx: torch.Tensor
    coef: CholeskyCoefficients
    c: torch.Tensor
    P: torch.Tensor

    def overwrite(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``logits`` (m, K) with the centred components' columns recomputed from the rows x (m, D)."""
        logits[:, self.idx] = em_cholesky.weighted_log_prob(x, self.coef, self.c, self.P)
        return logits


def block_rows(q: int, itemsize: int, chunk_size: int) -> int:
    """Rows per block of phi (rows x q, about 4 MiB): both of a block's products read it while it
    is in cache, and each product is large enough to run at the BLAS rate."""
    return max(256, min(chunk_size, (1 << 22) // (q * itemsize)))


def e_step(
    feats: Features, A: torch.Tensor, c: torch.Tensor, *, accumulate: bool = True, exact: bool = False,
    centred: Centred | None = None,
) -> tuple[float, torch.Tensor | None]:
    """Chunked E-step: total log-likelihood and, if ``accumulate``, G = r^T [phi, 1] (K, Q + 1)
    float64: each block's sums are added in float64 (float32 data: the block's products are float32,
    or float64 with ``exact``).

    ``feats(slice)`` returns phi of those rows (a view of a cache or computed on the fly). Rows are
    taken in cache-sized blocks (:func:`block_rows`) so that the E-step matmul and the M-step
    statistics matmul read the same block of phi while it is still in cache: both products are
    memory-bound, so this halves the traffic to main memory. ``centred``: components whose log
    densities and statistics are taken from the rows x centred on their means (:class:`Centred`,
    :class:`em_cholesky.CentredSums`, from the rows of the block just mapped) in place of
    phi's uncentred forms, which cancel for them. Coefficients in the Cholesky form go to
    :func:`em_cholesky.e_step` (G in float64).
    """
    if isinstance(A, CholeskyCoefficients):
        return em_cholesky.e_step(feats, A, c, accumulate=accumulate)
    exact = exact and A.dtype != torch.float64
    fused = _fused_slices(feats, A, exact, centred)
    if fused is not None:
        slices, work, mode = fused
        if mode == "rows":
            parts = _rows_pass(feats, A, c, accumulate, slices)
        else:
            lane = _fused_feature_lane(feats, A, c, accumulate, mode)
            parts = lanes.run(feats, slices, lane, work, FUSED_MIN_ELEMENTS)
    else:
        step = block_rows(A.shape[0], A.element_size(), feats.chunk_size)
        lane = _feature_lane(feats, A, c, accumulate, exact, centred)
        parts = lanes.run(feats, list(feats.slices(step)), lane, _work(feats, A, 2 if accumulate else 1))
    total = reduce_statistics(sum(p.total for p in parts))
    if not accumulate:
        return float(total), None
    G = reduce_statistics(sum(torch.cat([p.GT, p.counts[:, None]], 1) for p in parts))
    if centred is not None:
        sums = parts[0].sums
        for p in parts[1:]:
            sums.absorb(p.sums)
        G[centred.idx] = sums.total()
    return float(total), G


def _work(feats: Features, A: torch.Tensor, products: int) -> float:
    """FLOPs of a pass of ``products`` (n, Q) x (Q, K) products, a float32 one counted as half."""
    return 2.0 * products * feats.n * A.shape[0] * A.shape[1] * A.element_size() / 8


class _LaneSums(NamedTuple):
    """One lane's sums in :func:`e_step`: log-likelihood, the statistics as (K, Q) rows, counts (K,)
    and the centred components' :class:`em_cholesky.CentredSums` (None where not accumulated)."""

    total: torch.Tensor
    GT: torch.Tensor | None
    counts: torch.Tensor | None
    sums: em_cholesky.CentredSums | None


def _feature_lane(
    feats: Features, A: torch.Tensor, c: torch.Tensor, accumulate: bool, exact: bool, centred: Centred | None
) -> Callable[[int, list[slice]], _LaneSums]:
    """The blocks of one lane of :func:`e_step` in the feature form."""
    kw = {"dtype": torch.float64, "device": A.device}

    def lane(i: int, blocks: list[slice]) -> _LaneSums:
        total = torch.zeros((), **kw)
        # the statistics as (K, Q) rows: r^T phi streams phi's rows, 1.2-2.5x faster than phi^T r
        GT = torch.zeros(A.shape[1], A.shape[0], **kw) if accumulate else None
        counts = torch.zeros(A.shape[1], **kw) if accumulate else None
        sums = None if centred is None or GT is None else em_cholesky.CentredSums(centred.coef.means, exact)
        for sl in blocks:
            phi = feats(sl)
            logits = torch.addmm(c, phi, A, out=feats.scratch(f"logits{i}", (phi.shape[0], A.shape[1]), A))
            if centred is not None:
                x = feats.rows(sl)
                centred.overwrite(logits, x)
            resp, norm, loglik = exp_normalise_(logits, 1)  # (m, K)
            total += loglik
            if GT is not None:
                resp.div_(norm)
                if sums is not None:
                    sums.add(x, resp[:, centred.idx])
                if exact:  # the block's copy in float64
                    phi, resp = phi.double(), resp.double()
                if phi.dtype == GT.dtype:
                    GT.addmm_(resp.T, phi)
                else:  # a float32 block's sums, added in float64: no rounding that grows with N
                    GT += resp.T @ phi
                counts += resp.sum(0)
        return _LaneSums(total, GT, counts, sums)

    return lane


# fused feature-form passes (:func:`_fused_feature_lane`) run their lanes in threads from this many
# elements N K a pass (:func:`lanes.threaded`), with blocks whose (K, m) float64 responsibilities take
# _FUSED_BLOCK_BYTES (they stay in cache between the kernel and the second product). Below it they run
# in turn on torch's threads (blocks of _FUSED_TURN_BYTES, so that each product splits) only up to
# FUSED_TURN_MAX_K components: there torch's reductions along a short last axis are its slow case,
# beyond it torch's two threads beat the one-threaded kernel. Whole 5-iteration float64 fits
# (benchmarks/results/speed.md): threads won at N K = 1.6e6 and lost at 4e5; in turn, K = 4 won,
# K = 8 was even, K = 16 and 64 lost. Fused blocks take their first product as (K, m) = A^T phi^T,
# 8-42% slower than (m, K) = phi A at one thread (the elementwise kernel vectorises along m): a cost
# that grows with Q, the saving does not. Up to FUSED_MAX_Q feature columns: Q = 325 (D = 24) gained,
# Q = 561 (D = 32, K = 64) lost 3-5%.
FUSED_MIN_ELEMENTS = 1e6
FUSED_TURN_MAX_K = 4
FUSED_MAX_Q = 400
# in lanes in threads below this K the (K, m) product is taken as (m, K) and copied: at K = 4 it took
# 0.26 s of a 0.44 s fit (N = 10^6, D = 8, cProfile), and the copy won; at K = 16 the copy lost
FUSED_DIRECT_MIN_K = 8
_FUSED_BLOCK_BYTES = 256 << 10
_FUSED_TURN_BYTES = 2 << 20
# up to FUSED_ROWS_MAX_Q feature columns and FUSED_ROWS_MAX_K components, passes whose lanes run in
# threads (from FUSED_MIN_ELEMENTS) take each block whole in one compiled call (:func:`_rows_pass`),
# products included: there BLAS runs the block's (m, Q) x (Q, K) products at a few GFLOP/s. Blocks of
# _ROWS_BLOCK rows. Measured (benchmarks/results/speed.md): one thread, 8,192 rows, Q = 6 to 15 at
# K = 2 and 4 took 1.25-2.5x less time than the fused block above, at K = 8 even or slower; whole
# fits at N = 10^6 1.2-1.5x faster; at N = 10^5, in threads, no faster and more spread.
FUSED_ROWS_MAX_Q = 21
FUSED_ROWS_MAX_K = 4
# the labels pass (:func:`argmax_chunks`) takes :func:`_feature_kernels.feature_argmax` up to these
# (one thread against torch's two at N = 5 10^4: 1.1-1.9x faster at Q <= 10, K <= 16; 0.8x at Q = 15)
FUSED_LABELS_MAX_Q = 10
FUSED_LABELS_MAX_K = 16
_ROWS_BLOCK = 4096


def _compiled_rows(feats: Features, A: torch.Tensor, centred: Centred | None, float32: bool = False) -> bool:
    """Whether a pass may take the compiled feature-form kernels: float64 CPU data in memory
    (``feats.cached``; ``float32``: float32 data too) and no centred components."""
    dtypes = (torch.float64, torch.float32) if float32 else (torch.float64,)
    return feats.cached and A.device.type == "cpu" and A.dtype in dtypes and centred is None


def _fused_slices(
    feats: Features, A: torch.Tensor, exact: bool, centred: Centred | None
) -> tuple[list[slice], float, str] | None:
    """The blocks, work N K and mode of a fused feature-form pass, or None where the pass keeps
    :func:`_feature_lane`: fused passes take float64 CPU data in memory (``feats.cached``), at most
    ``FUSED_MAX_Q`` feature columns and no centred components. Modes: "rows" (:func:`_rows_pass`, in
    threads, up to ``FUSED_ROWS_MAX_Q`` columns and ``FUSED_ROWS_MAX_K`` components; float32 rows too,
    computed in float64), "threads" or, up to ``FUSED_TURN_MAX_K`` components, "turn"
    (:func:`_fused_feature_lane`; see ``FUSED_MIN_ELEMENTS``). Otherwise float32 keeps the torch path,
    whose rounding its fallbacks (float64 sums, then the Cholesky form) were set against (``exact``:
    float32 blocks with float64 products, which the "rows" mode's are)."""
    q, k = A.shape
    if not _compiled_rows(feats, A, centred, float32=True) or q > FUSED_MAX_Q:
        return None
    work = float(feats.n * k)
    if q <= FUSED_ROWS_MAX_Q and k <= FUSED_ROWS_MAX_K:
        blocks = list(feats.slices(min(feats.chunk_size, _ROWS_BLOCK)))
        if lanes.threaded(feats, len(blocks), work, FUSED_MIN_ELEMENTS):
            return blocks, work, "rows"
    if A.dtype != torch.float64 or exact:
        return None

    def rows(nbytes: int) -> int:
        return max(256, min(feats.chunk_size, nbytes // (8 * k)))

    small = list(feats.slices(rows(_FUSED_BLOCK_BYTES)))
    if lanes.threaded(feats, len(small), work, FUSED_MIN_ELEMENTS):
        return small, work, "threads"
    return (list(feats.slices(rows(_FUSED_TURN_BYTES))), work, "turn") if k <= FUSED_TURN_MAX_K else None


def _fused_feature_lane(
    feats: Features, A: torch.Tensor, c: torch.Tensor, accumulate: bool, mode: str
) -> Callable[[int, list[slice]], _LaneSums]:
    """:func:`_feature_lane` (float64) with each block's elementwise work in one compiled call: the
    weighted log densities (K, m) (one product ``A^T phi^T + c``; in lanes in threads (``mode``
    "threads") below ``FUSED_DIRECT_MIN_K`` components taken as (m, K) and copied),
    :func:`_cholesky_kernels.normalise_counts` (softmax, log-likelihood and counts, in place) and
    ``r^T phi`` (the second product), in place of some ten torch operations a block."""
    k, floor, AT, ck = A.shape[1], EXP_FLOOR[A.element_size()], A.T, c[:, None]
    direct = mode == "turn" or k >= FUSED_DIRECT_MIN_K
    X, kw = feats.cache, {"dtype": torch.float64, "device": A.device}

    def lane(i: int, blocks: list[slice]) -> _LaneSums:
        GT = torch.zeros(k, A.shape[0], **kw) if accumulate else None
        counts = torch.zeros(k, **kw)
        n = counts.numpy()
        rows = max((sl.stop - sl.start for sl in blocks), default=0)
        work, bits = np.empty((2, rows)), np.empty(rows, dtype=np.int64)
        total = 0.0
        for sl in blocks:
            phi = X[sl]
            m = phi.shape[0]
            if direct:  # in the labels pass's slot, as the torch lane's logits
                resp = torch.addmm(ck, AT, phi.T, out=feats.scratch(f"logits{i}", (k, m), A))
            else:
                logits = torch.addmm(c, phi, A, out=feats.scratch(f"logits{i}", (m, k), A))
                resp = feats.scratch(f"resp{i}", (k, m), A).copy_(logits.T)
            total += kernels.normalise_counts(resp.numpy(), floor, work, bits, n, accumulate)
            if GT is not None:
                GT.addmm_(resp, phi)
        return _LaneSums(torch.tensor(total, **kw), GT, counts if accumulate else None, None)

    return lane


def _rows_pass(
    feats: Features, A: torch.Tensor, c: torch.Tensor, accumulate: bool, blocks: list[slice]
) -> list[_LaneSums]:
    """A fused pass in the "rows" mode (:func:`_fused_slices`): each block whole in
    :func:`_feature_kernels.feature_rows` (log densities, softmax, log-likelihood, counts and
    ``r^T phi``, in float64 for float32 rows too). The lanes take blocks from one queue as they free
    up (a lane slowed by another thread on its core takes fewer), and each block's sums go to its own
    row, added in block order at the end: the sums do not depend on which lane took a block. One
    :class:`_LaneSums`."""
    (q, k), floor, kw = A.shape, EXP_FLOOR[8], {"dtype": torch.float64, "device": A.device}
    coef, const, X = _float64_coefficients(A, c) + (feats.cache,)
    step, n_blocks = blocks[0].stop - blocks[0].start, len(blocks)
    totals, counts, G = np.zeros(n_blocks), np.zeros((n_blocks, k)), np.zeros((n_blocks, k, q))

    def lane(i: int, queue: Iterable[slice]) -> None:
        tile = feature_kernels.TILE
        lg, pt, work = np.empty(k * tile), np.empty(q * tile), np.empty((2, tile))
        bits = np.empty(tile, dtype=np.int64)
        for sl in queue:
            b = sl.start // step
            totals[b] = feature_kernels.feature_rows(
                X[sl].numpy(), coef, const, floor, lg, pt, work, bits, counts[b], G[b], accumulate)

    lanes.run(feats, blocks, lane, shared=True)
    total = torch.tensor(float(totals.sum()), **kw)
    if not accumulate:
        return [_LaneSums(total, None, None, None)]
    return [_LaneSums(total, torch.from_numpy(G.sum(0)), torch.from_numpy(counts.sum(0)), None)]


def _float64_coefficients(A: torch.Tensor, c: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A (Q, K) and c (K,) as contiguous float64 arrays, for the compiled kernels."""
    return (np.ascontiguousarray(A.numpy(), dtype=np.float64),
            np.ascontiguousarray(c.numpy(), dtype=np.float64))


def log_resp_chunks(feats: Features, A: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted log densities (N, K) and per-point log-likelihood (N,), chunked."""
    if isinstance(A, CholeskyCoefficients):
        return em_cholesky.log_resp_chunks(feats, A, c)
    n, chunk_size = feats.n, feats.chunk_size
    logits = torch.empty(n, A.shape[1], dtype=A.dtype, device=A.device)
    ll = torch.empty(n, dtype=A.dtype, device=A.device)
    step = block_rows(A.shape[0], A.element_size(), chunk_size)
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        block = torch.addmm(c, feats(sl), A, out=logits[sl])
        ll[sl] = torch.logsumexp(block, dim=1)
    return logits, ll


def argmax_chunks(
    feats: Features, A: torch.Tensor, c: torch.Tensor, centred: Centred | None = None
) -> torch.Tensor:
    """argmax_k of phi(x) . A[:, k] + c[k] for every row (N,), block by block (no (N, K) array);
    the ``centred`` components' log densities from x centred on their means (:class:`Centred`)."""
    if isinstance(A, CholeskyCoefficients):
        return em_cholesky.argmax_chunks(feats, A, c)
    labels = torch.empty(feats.n, dtype=torch.long, device=A.device)
    rows = _rows_labels(feats, A, centred)
    if rows is not None:
        return _rows_argmax(feats, A, c, rows, labels)

    def lane(i: int, blocks: Iterable[slice]) -> None:
        for sl in blocks:
            out = feats.scratch(f"logits{i}", (sl.stop - sl.start, A.shape[1]), A)
            block = torch.addmm(c, feats(sl), A, out=out)
            if centred is not None:
                centred.overwrite(block, feats.rows(sl))
            labels[sl] = torch.max(block, 1).indices  # the first maximum, as argmax, at 2-3x its speed

    lanes.run(feats, list(feats.slices(block_rows(A.shape[0], A.element_size(), feats.chunk_size))), lane,
              _work(feats, A, 1), shared=True)
    return labels


def _rows_labels(feats: Features, A: torch.Tensor, centred: Centred | None) -> list[slice] | None:
    """The blocks of a labels pass that takes :func:`_feature_kernels.feature_argmax` (float64 or
    float32 CPU data in memory, at most ``FUSED_LABELS_MAX_Q`` feature columns and
    ``FUSED_LABELS_MAX_K`` components, no centred components), or None."""
    q, k = A.shape
    if q > FUSED_LABELS_MAX_Q or k > FUSED_LABELS_MAX_K or not _compiled_rows(feats, A, centred, True):
        return None
    return list(feats.slices(min(feats.chunk_size, _ROWS_BLOCK)))


def _rows_argmax(
    feats: Features, A: torch.Tensor, c: torch.Tensor, blocks: list[slice], labels: torch.Tensor
) -> torch.Tensor:
    """``labels`` (N,) of :func:`argmax_chunks` by :func:`_feature_kernels.feature_argmax`, the lanes
    taking ``blocks`` from one queue, in threads from ``FUSED_MIN_ELEMENTS``."""
    (q, k), X, out = A.shape, feats.cache, labels.numpy()
    coef, const = _float64_coefficients(A, c)

    def lane(i: int, queue: Iterable[slice]) -> None:
        lg, pt = np.empty(k * feature_kernels.TILE), np.empty(q * feature_kernels.TILE)
        for sl in queue:
            feature_kernels.feature_argmax(X[sl].numpy(), coef, const, lg, pt, out[sl])

    lanes.run(feats, blocks, lane, float(feats.n * k), FUSED_MIN_ELEMENTS, shared=True)
    return labels


def em_step(family: EMFamily, feats: Features, n_total: int | None = None) -> Callable[[dict, int], float]:
    """The EM Step function: E-step at ``state["params"]``, then the M-step into it.

    Returns the objective before the update, (log-likelihood + log prior) / N, with N the number
    of points in the whole fit (``n_total``; default ``feats.n``).
    """
    n = feats.n if n_total is None else int(n_total)
    current = [family, feats]
    checked: dict[str, Any] = {"params": None, "coefficients": None}  # the last M-step's, validated

    def step(state: dict[str, Any], iteration: int) -> float:
        with lanes.hold():  # a pass in lanes keeps torch at one thread through the (small) M-step
            return _step(state)

    def _step(state: dict[str, Any]) -> float:
        fam, fts = current
        params = state["params"]
        if checked["params"] is params:
            A, c = checked["coefficients"]
        else:
            A, c = fam.log_prob_coefficients(params)
        loglik, G = e_step(fts, A, c, exact=_exact(fam), centred=centred_set(fam, params))
        objective = (loglik + fam.log_prior(params)) / n
        while True:
            try:
                new = fam.m_step(G, params)
                coefficients = fam.log_prob_coefficients(new)  # factorises every covariance
                break
            except NotPositiveDefiniteError:
                # uncentred second moments (the feature map) lose a tight component's covariance to
                # cancellation, and float32 block sums may too: redo this M-step, and the rest of the
                # fit, with the family's fallback (float64 sums, then statistics centred on each
                # component's mean, then those in float64); every rank takes it, as G is global
                fam = _fallback(fam, feats.d, params.means.dtype)
                if fam is None:
                    raise
                lanes.release()  # the fallback's passes may run on torch's threads, not in lanes
                if fam.feature_dim(feats.d) != fts.q:  # a new map (phi = x): not cached
                    fts = feats.remapped(fam.feature_map)
                    state["formulation"] = "cholesky"
                current[:] = [fam, fts]
                _, G = e_step(fts, *fam.log_prob_coefficients(params), exact=_exact(fam),
                              centred=centred_set(fam, params))
        checked.update(params=new, coefficients=coefficients)
        state["params"] = new
        return objective

    return step


def centred_set(family: EMFamily, params: Any) -> Centred | None:
    """The components that the feature form takes centred (the family's ``centred_components``), in
    the Cholesky form of :func:`bayesclust.models.gaussian.cholesky_coefficients`; None if none."""
    pick = getattr(family, "centred_components", None)
    idx = None if pick is None else pick(params)
    if idx is None:
        return None
    sub = GMMParams(params.weights[idx], params.means[idx], params.covariances[idx])
    coef, c = cholesky_coefficients(sub, "full")
    return Centred(idx, coef, c, em_cholesky.factors(coef))


def _exact(family: EMFamily) -> bool:
    return bool(getattr(family, "exact_statistics", False))


def _fallback(family: EMFamily, d: int, dtype: torch.dtype) -> EMFamily | None:
    fallback = getattr(family, "fallback", None)
    return None if fallback is None else fallback(d, dtype)


def statistics_from_resp(feats: Features, resp: torch.Tensor, *, cholesky: bool = False) -> torch.Tensor:
    """G (K, Q + 1) = resp^T [phi, 1] for given responsibilities resp (n, K) (initialisation); with
    ``cholesky`` (phi is x itself) the same statistics from centred moments, in float64."""
    if cholesky:
        return em_cholesky.statistics_from_resp(feats, resp)
    return weighted_statistics(feats, resp, counts=True)


def stepwise_statistics(
    running: torch.Tensor | None, G: torch.Tensor, n_batch: int, step: int, kappa: float
) -> torch.Tensor:
    """Stepwise (online) EM, Cappe & Moulines (2009): the running per-point statistics (K, Q + 1)
    float64 after a batch whose statistics are ``G`` (K, Q + 1) over ``n_batch`` points.

    ``s <- (1 - g) s + g G / n_batch`` with step size ``g = (step + 2) ** -kappa``, kappa in
    (0.5, 1] (the first batch, ``running=None``, gives ``G / n_batch``).
    """
    batch = G.double().cpu() / float(n_batch)
    if running is None:
        return batch
    gamma = float(step + 2) ** -float(kappa)
    return (1.0 - gamma) * running + gamma * batch
