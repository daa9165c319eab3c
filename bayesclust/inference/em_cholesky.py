"""EM passes in the Cholesky formulation (full / tied covariances at large D), chunked over the data.

With ``Sigma_k^-1 = P_k P_k^T`` (:class:`~bayesclust.models.gaussian.CholeskyCoefficients`) the
weighted log density of a block of rows x (m, D) is ``c_k - |(x - mu_k) P_k|^2 / 2``: for full
covariances one batched (K, m, D) @ (K, D, D) product and a squared norm per component, with no
D^2 / 2 feature columns to build or read. The M-step statistics are weighted sums over the same
(K, m, D) array, weighted in place by sqrt(r) so that ``sum r z z^T`` is one batched product
``(sqrt(r) z)^T (sqrt(r) z)``: in float64 z is y itself and its sums are mapped back through P_k
(:class:`_Whitened`); in float32 z is ``x - mu_k`` (centred about each component's current mean, so
float32 loses no digits to uncentred second moments, and y keeps the digits that ``x P_k - b_k``
loses to cancellation for a tight component). Sums are taken in the data's dtype per block and in
float64 across blocks, then turned into the feature layout G (K, Q + 1) of
:func:`bayesclust.models.gaussian.unpack_stats`, so the family's M-step is unchanged. The data comes
from ``feats(slice)``, which is x itself in this formulation (in memory, out of core or one shard of
a distributed fit).

Full covariances in memory on the CPU run their passes in :mod:`lanes` (from ``LANE_MIN_ELEMENTS``):
each block is its products in torch (float64: ``u = x P_k``; float32: ``y = z P_k`` of
``z = x - mu_k``, a kernel's) and the statistics' product, and between them one compiled kernel
(:func:`_cholesky_kernels.e_block`, ``e_block_centred``) in place of some twenty torch operations, each
a pass over its array and a dispatch under the GIL. The lanes' batched (K, m, D) products run in
torch's BLAS or in numpy's (:func:`bayesclust._device.host_blas`: where MKL runs them well below the
BLAS rate, benchmarks/results/speed.md); with numpy the float64 second moments are one symmetric
product ``w^T w`` instead of :class:`_Whitened`'s split halves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from .._device import host_blas
from ..models.gaussian import CholeskyCoefficients
from . import _cholesky_kernels as kernels
from . import lanes
from .responsibilities import EXP_FLOOR, exp_normalise_
from .streaming import Features, reduce_statistics, weighted_statistics

_BLOCK_BYTES = 2 << 20  # one block's (K, rows, D) arrays stay near this size (two of them live at once)
_LANE_BLOCK_BYTES = 1 << 20  # in lanes, one core's share of L2 holds its lane's block
_MIN_ROWS = 256  # but no fewer rows: at large K D, 64-128-row products ran 10-20% slower
# fused passes in lanes from this many elements N K D of a pass's rows u, a float32 one counted as
# half: what the kernels save grows with them, and the lanes' fixed cost (waking a thread, two
# switches of the thread count) lost at N K D = 1.3e6 in float64 (whole fits, 0.92x at N = 10^4,
# D = 32, K = 4) and gained from 2.6e6 (1.05x; 1.29x at N = 10^5, D = 8, K = 4); float32 lost at
# 2.6e6 and gained from 6.4e6 (benchmarks/results/speed.md)
LANE_MIN_ELEMENTS = 2.5e6


def block_rows(k: int, d: int, itemsize: int, chunk_size: int, block_bytes: int = _BLOCK_BYTES) -> int:
    """Rows per block so the block's (K, rows, D) arrays take about ``block_bytes``."""
    return max(min(_MIN_ROWS, chunk_size), min(chunk_size, block_bytes // max(1, k * d * itemsize)))


def factors(coef: CholeskyCoefficients) -> torch.Tensor:
    """The precision factors P, contiguous: (K, D, D) for full covariances, the shared (D, D) if tied."""
    k, d = coef.means.shape
    return coef.W.contiguous() if coef.tied else coef.W.view(d, k, d).transpose(0, 1).contiguous()


def _block_arrays(
    feats: Features, m: int, means: torch.Tensor, P: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`component_rows`'s ``out`` for a block of m rows, kept for the fit
    (:meth:`Features.scratch`): y (K, m, D), and z (K, m, D) where float32 full covariances centre x,
    in ``means``' (K, D) dtype."""
    shape = (means.shape[0], m, means.shape[1])
    centred = P.dim() == 3 and means.dtype != torch.float64
    return feats.scratch("rows", shape, means), feats.scratch("rows2", shape, means) if centred else None


def component_rows(
    x: torch.Tensor, coef: CholeskyCoefficients, P: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, y), both (K, m, D), for rows x (m, D) with factors P (:func:`factors`):
    ``y_ik = (x_i - mu_k) P_k``, and z the rows whose weighted sums are the M-step statistics.

    float64: ``y = x P_k - b_k`` by one broadcast product, and z = y (:class:`_Whitened` maps its sums
    back). float32: z = x - mu_k, so y keeps the digits that ``x P_k - b_k`` loses to cancellation for
    a tight component, and the statistics are centred (:class:`CentredSums`). Tied covariances whiten x
    once, ``y = x P - b_k``, in both dtypes. ``out``: the buffers of :func:`_block_arrays`."""
    y_out, z_out = (None, None) if out is None else out
    if P.dim() == 2:
        y = _tied_rows(x, coef, P, y_out)
        if x.dtype == torch.float64:
            return y, y
        return torch.sub(x.unsqueeze(0), coef.means.unsqueeze(1), out=z_out), y
    if x.dtype == torch.float64:
        y = torch.matmul(x, P, out=y_out).sub_(coef.b.unsqueeze(1))  # broadcast: 5-15% faster than baddbmm
        return y, y
    z = torch.sub(x.unsqueeze(0), coef.means.unsqueeze(1), out=z_out)
    return z, torch.bmm(z, P, out=y_out)


def _tied_rows(
    x: torch.Tensor, coef: CholeskyCoefficients, P: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """y (K, m, D) = x P - b_k for the rows x (m, D) and the shared factor P (D, D) (into ``out``)."""
    return torch.sub(torch.matmul(x, P).unsqueeze(0), coef.b.unsqueeze(1), out=out)


def _log_prob(y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return c - 0.5 * torch.linalg.vector_norm(y, dim=-1).square_()  # one reduction, no (m, K, D) temp


def weighted_log_prob(
    x: torch.Tensor, coef: CholeskyCoefficients, c: torch.Tensor, P: torch.Tensor | None = None
) -> torch.Tensor:
    """``log w_k + log N(x_i | mu_k, Sigma_k)`` (m, K) of the rows x (m, D) (``P``: ``factors(coef)``,
    taken once by a caller looping over blocks)."""
    return _component_log_prob(x, coef, c, factors(coef) if P is None else P).T


def _component_log_prob(
    x: torch.Tensor, coef: CholeskyCoefficients, c: torch.Tensor, P: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``log w_k + log N(x_i | mu_k, Sigma_k)`` (K, m) (factors P of :func:`factors`)."""
    if P.dim() == 2:  # tied: y alone (float32 need not centre x)
        y = _tied_rows(x, coef, P, None if out is None else out[0])
    else:
        y = component_rows(x, coef, P, out)[1]
    return _log_prob(y, c[:, None])


def _layout(n: torch.Tensor, s1: torch.Tensor, S: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Centred statistics about ``ref`` (K, D) -> G (K, Q + 1) float64: [sum x x^T (upper triangle,
    row-major), sum x, count] with sum x = s1 + n a and sum x x^T = S + a s1^T + s1 a^T + n a a^T."""
    a = ref.double()
    sx = s1 + n[:, None] * a
    outer = a[:, :, None] * s1[:, None, :]
    sxx = S + outer + outer.transpose(1, 2) + n[:, None, None] * a[:, :, None] * a[:, None, :]
    i, j = torch.triu_indices(a.shape[1], a.shape[1], device=a.device)
    return torch.cat([sxx[:, i, j], sx, n[:, None]], dim=1)


class CentredSums:
    """Running float64 sums (count, first and second moments about ``ref``) of weighted rows; the
    block products in the data's dtype, or in float64 where ``exact``."""

    def __init__(self, ref: torch.Tensor, exact: bool = False) -> None:
        k, d = ref.shape
        self.exact = exact
        self.ref = (ref.double() if exact else ref).contiguous()  # the (K, m, D) products take its layout
        kw = {"dtype": torch.float64, "device": ref.device}
        self.n, self.s1, self.S = torch.zeros(k, **kw), torch.zeros(k, d, **kw), torch.zeros(k, d, d, **kw)

    def add(self, x: torch.Tensor, r: torch.Tensor) -> None:
        """Rows x (m, D) with weights r (m, K)."""
        if self.exact:
            x, r = x.double(), r.double()
        self.add_centred(x.unsqueeze(0) - self.ref.unsqueeze(1), r.T)

    def add_centred(self, diff: torch.Tensor, rT: torch.Tensor) -> None:
        """Differences ``diff_kid = x_id - ref_kd`` (K, m, D) with weights rT (K, m); float64 ``diff``
        is overwritten."""
        if self.exact:
            diff, rT = diff.double(), rT.double()
        if diff.dtype == torch.float64:
            # diff weighted in place by sqrt(r): sum r z z^T = (sqrt(r) z)^T (sqrt(r) z) and sum r z are
            # batched products, with no second (K, m, D) array
            self.n += rT.sum(1)
            root = rT.sqrt().unsqueeze(1)  # (K, 1, m)
            weighted = diff.mul_(root.transpose(1, 2))
            self.s1 += torch.bmm(root, weighted).squeeze(1)
            self.S += torch.bmm(weighted.transpose(1, 2), weighted)
            return
        weighted = diff * rT.unsqueeze(-1)  # (K, m, D)
        self.n += rT.sum(1).double()
        self.s1 += weighted.sum(1).double()  # a pairwise sum: a (K, 1, m) product loses float32 digits
        self.S += torch.bmm(weighted.transpose(1, 2), diff).double()

    def absorb(self, other: CentredSums) -> CentredSums:
        """These sums plus ``other``'s (same reference)."""
        self.n += other.n
        self.s1 += other.s1
        self.S += other.S
        return self

    def total(self) -> torch.Tensor:
        """G (K, Q + 1) float64, summed over processes."""
        n, s1, S = (reduce_statistics(t) for t in (self.n, self.s1, self.S))
        return _layout(n, s1, S, self.ref)


SPLIT_MIN_D = 8  # from this D on, sum r y y^T is taken over column halves (:class:`_Whitened`)


class _Whitened:
    """The sums of :class:`CentredSums` from the E-step's whitened rows ``y_ik = (x_i - mu_k) P_k`` (no
    second (K, m, D) difference array), in float64: ``sum r y = s1 P_k`` and ``sum r y y^T = P_k^T S_k
    P_k``, mapped back at the end. The symmetric product skips its upper-right block: with
    y = [y_a, y_b] (the first ``D // 2`` columns, the rest), ``y_a^T y_a`` and ``y^T y_b`` hold every
    entry, for 3/4 of the FLOPs (``split``; numpy's ``w^T w`` is one symmetric rank-m update instead).
    float32 centres x itself (:class:`CentredSums`)."""

    def __init__(self, coef: CholeskyCoefficients, split: bool = True) -> None:
        k, d = coef.means.shape
        self.ref, W = coef.means.double(), coef.W.double()
        self.P = W if coef.tied else W.view(d, k, d).transpose(0, 1)  # (D, D) or (K, D, D), upper
        self.h = d // 2 if split and d >= SPLIT_MIN_D else 0
        kw = {"dtype": torch.float64, "device": W.device}
        self.n, self.s1 = torch.zeros(k, **kw), torch.zeros(k, 1, d, **kw)
        self.Sa, self.Sb = torch.zeros(k, self.h, self.h, **kw), torch.zeros(k, d, d - self.h, **kw)

    def add_centred(self, y: torch.Tensor, rT: torch.Tensor) -> None:
        """Whitened rows y (K, m, D) with weights rT (K, m); both are overwritten."""
        self.n += rT.sum(1)
        root = rT.sqrt_().unsqueeze(1)  # (K, 1, m)
        w = y.mul_(root.transpose(1, 2))
        self.s1.baddbmm_(root, w)
        self.add_products(w)

    def operands(self, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(sum, left, right)`` of ``sum w w^T``'s blocks for weighted rows w (K, m, D): each block is
        ``sum += left @ right`` (views of w, so a lane makes them once for its buffer)."""
        h = self.h
        whole = [(self.Sb, w.transpose(1, 2), w[:, :, h:])]
        return [(self.Sa, w[:, :, :h].transpose(1, 2), w[:, :, :h])] + whole if h else whole

    def add_products(self, w: torch.Tensor) -> None:
        """``sum w w^T`` of the weighted rows w (K, m, D), in its two blocks."""
        for S, left, right in self.operands(w):
            S.baddbmm_(left, right)

    def absorb(self, other: _Whitened) -> _Whitened:
        """These sums plus ``other``'s (same coefficients)."""
        self.n += other.n
        self.s1 += other.s1
        self.Sa += other.Sa
        self.Sb += other.Sb
        return self

    def total(self) -> torch.Tensor:
        """G (K, Q + 1) float64, summed over processes."""
        h, d = self.h, self.ref.shape[1]
        S = torch.empty(self.Sb.shape[0], d, d, dtype=torch.float64, device=self.Sb.device)
        S[:, :, h:] = self.Sb
        S[:, :h, :h] = self.Sa
        S[:, h:, :h] = self.Sb[:, :h].transpose(1, 2)
        n, s1, S = (reduce_statistics(t) for t in (self.n, self.s1, S))
        P = self.P  # sum r y = s1 P and sum r y y^T = P^T S P
        s1 = torch.linalg.solve_triangular(P, s1, upper=True, left=False).squeeze(-2)
        Z = torch.linalg.solve_triangular(P, S, upper=True, left=False)  # T P^-1
        return _layout(n, s1, torch.linalg.solve_triangular(P.transpose(-1, -2), Z, upper=False), self.ref)


def e_step(
    feats: Features, coef: CholeskyCoefficients, c: torch.Tensor, *, accumulate: bool = True
) -> tuple[float, torch.Tensor | None]:
    """Total log-likelihood and, if ``accumulate``, G (K, Q + 1) float64 (see the module docstring).

    Every block runs in the (K, m, D) layout of :func:`component_rows`, whose z are weighted in place
    for the statistics."""
    k, d = coef.means.shape
    P = factors(coef)
    fused = _lane_pass(feats, coef)
    if fused is not None:
        run = _fused_e_step if coef.dtype == torch.float64 else _fused_centred_e_step
        return run(feats, coef, c, P, fused, accumulate)
    step = block_rows(k, d, coef.element_size(), feats.chunk_size)
    total = torch.zeros((), dtype=torch.float64, device=coef.device)
    stats = None
    if accumulate:
        stats = _Whitened(coef) if coef.dtype == torch.float64 else CentredSums(coef.means, coef.exact)
    for sl in feats.slices(step):
        z, y = component_rows(feats(sl), coef, P, _block_arrays(feats, sl.stop - sl.start, coef.means, P))
        resp, norm, loglik = exp_normalise_(_log_prob(y, c[:, None]), 0)
        if stats is not None:
            stats.add_centred(z, resp.div_(norm))
        total += loglik
    total = reduce_statistics(total)
    return float(total), None if stats is None else stats.total()


def _lane_work(n: int, k: int, d: int, itemsize: int) -> float:
    """A fused pass's work: elements N K D of its rows u, a float32 one counted as half."""
    return float(n * k * d) * itemsize / 8


def fused_passes(n: int, k: int, d: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a fit of n in-memory rows (D features, K full covariances) would run its Cholesky passes
    fused in lanes (as :func:`_lane_pass` decides for each pass)."""
    if dtype not in (torch.float64, torch.float32):
        return False
    work = _lane_work(n, k, d, torch.finfo(dtype).bits // 8)
    return lanes.on_cpu_threads(device) and work >= LANE_MIN_ELEMENTS


def _lane_pass(feats: Features, coef: CholeskyCoefficients) -> tuple[list[slice], float] | None:
    """The blocks and work (elements N K D, a float32 one counted as half) of a fused pass in lanes, or
    None where the pass runs on torch's threads: fused passes take full covariances in float64, or in
    float32 without ``exact`` sums, whose lanes run in threads (:func:`lanes.threaded`, from
    ``LANE_MIN_ELEMENTS``)."""
    k, d = coef.means.shape
    if coef.dtype not in (torch.float64, torch.float32) or coef.tied or coef.exact:
        return None
    # float64: u; float32: z and y, two arrays of half the bytes
    slices = list(feats.slices(block_rows(k, d, 8, feats.chunk_size, _LANE_BLOCK_BYTES)))
    work = _lane_work(feats.n, k, d, coef.element_size())
    return (slices, work) if lanes.threaded(feats, len(slices), work, LANE_MIN_ELEMENTS) else None


class _LaneArrays(dict):
    """Lane ``lane``'s arrays for one fused pass, by block length: ``arrays[m]`` (:class:`_Block`, made at
    the pass's first block of m rows; a pass's blocks have at most two lengths), so that a block pays
    no Python for its buffers' views (benchmarks/results/speed.md). ``numpy``: the blocks' products run
    in numpy's BLAS (:func:`bayesclust._device.host_blas`)."""

    def __init__(
        self, feats: Features, lane: int, P: torch.Tensor, stats: _Whitened | CentredSums | None = None,
        numpy: bool = False,
    ) -> None:
        super().__init__()
        self.feats, self.lane, self.P, self.stats = feats, lane, P, stats
        self.P_np = P.numpy() if numpy else None

    def __missing__(self, m: int) -> _Block:
        block = self[m] = _Block(self.feats, self.lane, m, self.P, self.stats, self.P_np)
        return block


class _Block:
    """One lane's buffers for blocks of m rows (:meth:`Features.scratch` slots named by the lane) and
    their views, made once: ``rows`` (K, m, D) (float64: ``u = x P_k``; float32: ``y = z P_k``) and
    ``rows_np``; float32's centred rows ``z = x - mu_k`` and ``z_np`` (factors P not float64); the
    (K, m) float64 ``logits_t`` and ``logits`` (numpy); and ``ops``, the statistics' products
    ``(sum, left, right, out)`` over these buffers (float64: :meth:`_Whitened.operands`; float32:
    ``(S, y^T, z)``), none without ``stats``. With ``P_np`` (factors P as numpy) the products run in
    numpy, on the buffers' numpy views."""

    def __init__(
        self, feats: Features, lane: int, m: int, P: torch.Tensor, stats: _Whitened | CentredSums | None,
        P_np: np.ndarray | None = None,
    ) -> None:
        k, d = P.shape[0], P.shape[1]
        centred = P.dtype != torch.float64
        self.P, self.P_np = P, P_np
        self.rows = feats.scratch(f"rows{lane}", (k, m, d), P)
        self.rows_np = self.rows.numpy()
        self.logits_t = feats.scratch(f"logits{lane}", (k, m), _FLOAT64)
        self.logits = self.logits_t.numpy()
        self.z = feats.scratch(f"rows2{lane}", (k, m, d), P) if centred else None
        self.z_np = None if self.z is None else self.z.numpy()
        # a product's result before it is added to the float64 sums (float32 rows, or numpy's products)
        out = None if stats is None or not (centred or P_np is not None) else feats.scratch(
            f"sums{lane}", (k, d, d), P)
        ops = [] if stats is None else (
            stats.operands(self.rows) if isinstance(stats, _Whitened)
            else [(stats.S, self.rows.transpose(1, 2), self.z)])
        if P_np is not None:
            self.ops = [(S.numpy(), left.numpy(), right.numpy(), out.numpy()) for S, left, right in ops]
        else:
            self.ops = [(S, left, right, out) for S, left, right in ops]

    def whiten(self, x: torch.Tensor) -> None:
        """``u = x P_k`` (K, m, D) of the rows x (m, D) (float64 factors) into ``rows``."""
        if self.P_np is None:
            torch.matmul(x, self.P, out=self.rows)
        else:
            np.matmul(x.numpy()[None], self.P_np, out=self.rows_np)

    def centre_whiten(self, x: torch.Tensor, means: np.ndarray) -> None:
        """``z = x - mu_k`` and ``y = z P_k`` (K, m, D) of the rows x (m, D) into ``z`` and ``rows``."""
        kernels.centre(x.numpy(), means, self.z_np)
        if self.P_np is None:
            torch.bmm(self.z, self.P, out=self.rows)
        else:
            np.matmul(self.z_np, self.P_np, out=self.rows_np)

    def add_statistics(self) -> None:
        """The statistics' products of the (weighted) rows, added to the lane's float64 sums."""
        for S, left, right, out in self.ops:
            if self.P_np is not None:
                np.add(S, np.matmul(left, right, out=out), out=S)
            elif out is None:
                S.baddbmm_(left, right)
            else:
                S += torch.bmm(left, right, out=out)


_FLOAT64 = torch.empty(0, dtype=torch.float64)  # the dtype and device of the lanes' (K, m) logits


def _numpy_products() -> bool:
    """Whether the lanes' products run in numpy's BLAS (:func:`bayesclust._device.host_blas`)."""
    return host_blas() == "numpy"


def _fused_e_step(
    feats: Features, coef: CholeskyCoefficients, c: torch.Tensor, P: torch.Tensor,
    fused: tuple[list[slice], float], accumulate: bool,
) -> tuple[float, torch.Tensor | None]:
    """:func:`e_step` in lanes, each block a product, :func:`kernels.e_block` and, if ``accumulate``,
    the products of the statistics."""
    b, cv = coef.b.numpy(), c.contiguous().numpy()
    floor, numpy = EXP_FLOOR[8], _numpy_products()

    def lane(i: int, blocks: list[slice]) -> tuple[float, _Whitened]:
        stats = _Whitened(coef, split=not numpy)
        n, s1 = stats.n.numpy(), stats.s1.view(stats.s1.shape[0], -1).numpy()
        rows = max((sl.stop - sl.start for sl in blocks), default=0)
        work, bits = np.empty((2, rows)), np.empty(rows, dtype=np.int64)
        arrays, X = _LaneArrays(feats, i, P, stats if accumulate else None, numpy), feats.cache
        total = 0.0
        for sl in blocks:
            a = arrays[sl.stop - sl.start]
            a.whiten(X[sl])
            total += kernels.e_block(a.rows_np, b, cv, floor, a.logits, work, bits, n, s1, accumulate)
            a.add_statistics()
        return total, stats

    return _run_lanes(feats, fused, lane, accumulate)


def _run_lanes(
    feats: Features, fused: tuple[list[slice], float],
    lane: Callable[[int, list[slice]], tuple[float, _Whitened | CentredSums]], accumulate: bool,
) -> tuple[float, torch.Tensor | None]:
    """A fused E-step's lanes run (:func:`lanes.run`): the total log-likelihood and, if ``accumulate``,
    G of the lanes' sums added in lane order (both summed over processes)."""
    parts = lanes.run(feats, fused[0], lane, fused[1], LANE_MIN_ELEMENTS)
    total = float(reduce_statistics(torch.tensor(sum(p[0] for p in parts), dtype=torch.float64)))
    if not accumulate:
        return total, None
    stats = parts[0][1]
    for p in parts[1:]:
        stats.absorb(p[1])
    return total, stats.total()


def _fused_centred_e_step(
    feats: Features, coef: CholeskyCoefficients, c: torch.Tensor, P: torch.Tensor,
    fused: tuple[list[slice], float], accumulate: bool,
) -> tuple[float, torch.Tensor | None]:
    """:func:`e_step` in lanes for float32 (rows centred on each component, :class:`CentredSums`),
    each block two products, :func:`kernels.e_block_centred` and the second moments' product."""
    cv, floor, means = c.double().numpy(), EXP_FLOOR[4], coef.means.numpy()
    numpy = _numpy_products()

    def lane(i: int, blocks: list[slice]) -> tuple[float, CentredSums]:
        stats = CentredSums(coef.means)
        n, s1 = stats.n.numpy(), stats.s1.numpy()
        rows = max((sl.stop - sl.start for sl in blocks), default=0)
        work, bits = np.empty((2, rows)), np.empty(rows, dtype=np.int64)
        arrays, X = _LaneArrays(feats, i, P, stats if accumulate else None, numpy), feats.cache
        total = 0.0
        for sl in blocks:
            a = arrays[sl.stop - sl.start]
            a.centre_whiten(X[sl], means)
            total += kernels.e_block_centred(a.rows_np, a.z_np, cv, floor, a.logits, work, bits, n, s1,
                                             accumulate)
            a.add_statistics()  # y now holds r z
        return total, stats

    return _run_lanes(feats, fused, lane, accumulate)


def _fused_labels(
    feats: Features, coef: CholeskyCoefficients, c: torch.Tensor, P: torch.Tensor, labels: torch.Tensor
) -> Callable[[int, Iterable[slice]], None]:
    """:func:`argmax_chunks`'s lane, fused."""
    cv, numpy = c.double().contiguous().numpy(), _numpy_products()
    if coef.dtype != torch.float64:
        means = coef.means.numpy()

        def centred(i: int, blocks: Iterable[slice]) -> None:
            arrays = _LaneArrays(feats, i, P, numpy=numpy)
            for sl in blocks:
                a = arrays[sl.stop - sl.start]
                a.centre_whiten(feats.cache[sl], means)
                kernels.centred_log_density(a.rows_np, cv, a.logits)
                labels[sl] = torch.max(a.logits_t, 0).indices

        return centred
    b = coef.b.numpy()

    def lane(i: int, blocks: Iterable[slice]) -> None:
        arrays = _LaneArrays(feats, i, P, numpy=numpy)
        for sl in blocks:
            a = arrays[sl.stop - sl.start]
            a.whiten(feats.cache[sl])
            kernels.log_density(a.rows_np, b, cv, a.logits)
            labels[sl] = torch.max(a.logits_t, 0).indices

    return lane


def log_resp_chunks(
    feats: Features, coef: CholeskyCoefficients, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted log densities (N, K) and per-point log-likelihood (N,), block by block."""
    k, d = coef.means.shape
    logits = torch.empty(feats.n, k, dtype=coef.dtype, device=coef.device)
    P = factors(coef)
    for sl in feats.slices(block_rows(k, d, coef.element_size(), feats.chunk_size)):
        logits[sl] = weighted_log_prob(feats(sl), coef, c, P)
    return logits, torch.logsumexp(logits, dim=1)


def argmax_chunks(feats: Features, coef: CholeskyCoefficients, c: torch.Tensor) -> torch.Tensor:
    """The most probable component of every row (N,), block by block (no (N, K) array)."""
    k, d = coef.means.shape
    labels = torch.empty(feats.n, dtype=torch.long, device=coef.device)
    P = factors(coef)
    fused = _lane_pass(feats, coef)
    if fused is not None:
        lane = _fused_labels(feats, coef, c, P, labels)
        lanes.run(feats, fused[0], lane, fused[1], LANE_MIN_ELEMENTS, shared=True)
        return labels
    for sl in feats.slices(block_rows(k, d, coef.element_size(), feats.chunk_size)):
        out = _block_arrays(feats, sl.stop - sl.start, coef.means, P)
        # in the (K, m) layout; torch.max's indices (the first maximum, as argmax) run 2-20x faster
        # than torch.argmax here
        labels[sl] = torch.max(_component_log_prob(feats(sl), coef, c, P, out), 0).indices
    return labels


def statistics_from_resp(feats: Features, resp: torch.Tensor) -> torch.Tensor:
    """G (K, Q + 1) float64 for given responsibilities resp (n, K) (initialisation): a first pass for
    the weighted means, a second for the moments about them."""
    k, d = resp.shape[1], feats.d
    first = weighted_statistics(feats, resp, counts=True)  # (K, D + 1): sums of x, counts (reduced)
    stats = CentredSums((first[:, :-1] / first[:, -1:].clamp(min=1e-12)).to(resp.dtype))
    for sl in feats.slices(block_rows(k, d, resp.element_size(), feats.chunk_size)):
        stats.add(feats(sl), resp[sl])
    return stats.total()
