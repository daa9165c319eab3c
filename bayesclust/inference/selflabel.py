"""Pseudo-label solvers for self-labelling clustering, with the network's predictions held fixed.

* :func:`sinkhorn_knopp` — entropic optimal transport in the log domain (chunked over rows, optional
  float64), stopping when the column-marginal L1 error falls below ``tol``;
* :func:`sela_labels` — SeLa (Asano et al. 2020): balanced hard labels over the whole data set from
  the kernel ``sigma^lambda``;
* :func:`swav_codes` — SwAV (Caron et al. 2020): balanced soft codes per mini-batch, ``exp(s/eps)``,
  a few iterations, with an optional queue of earlier scores;
* :func:`em_soft_labels` — the EM (majorise-minimise) solver for soft pseudo-labels ``y`` minimising
  ``mean_i H(sigma_i, y_i) + lambda * KL(u || mean_i y_i)`` with ``H`` the collision CE
  ``-ln(sigma . y)`` or the reverse CE ``-sum_k sigma_k ln y_k`` (Zhang & Boykov 2023).

Every solver streams over row chunks, so memory beyond the inputs is O(chunk x K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._device import empty_buffer
from .._validation import check_option, check_positive_int, check_scalar
from .engine import Engine

__all__ = [
    "SinkhornResult",
    "SoftLabelResult",
    "em_soft_labels",
    "one_hot_into",
    "sela_labels",
    "sinkhorn_knopp",
    "soft_label_objective",
    "swav_codes",
]

_DEFAULT_CHUNK = 1 << 16  # rows per chunk of the exp/log-bound log-domain passes
_CACHE_ELEMS = 1 << 18  # elements per chunk of the matvec / elementwise passes (1 MiB of float32)


@dataclass
class SinkhornResult:
    """Dual potentials of the plan ``P_ik = exp(log_kernel_ik + log_u_i + log_v_k)``.

    ``error`` is the L1 error of the column marginals after the last row update (rows are then
    exact); ``n_iter`` the number of iterations run; ``converged`` whether ``error <= tol``;
    ``method`` the path that produced them: ``"kernel"``, ``"log"`` or ``"kernel->log"`` (fallback).
    """

    log_u: torch.Tensor
    log_v: torch.Tensor
    n_iter: int
    error: float
    converged: bool
    errors: list[float] = field(default_factory=list)
    method: str = "log"

    def log_plan(self, log_kernel: torch.Tensor) -> torch.Tensor:
        """The log transport plan (N, K) (materialises it; use on mini-batches)."""
        dt = self.log_v.dtype
        return log_kernel.to(dt) + self.log_u[:, None] + self.log_v[None, :]


def _check_log_kernel(log_kernel: torch.Tensor) -> None:
    if not isinstance(log_kernel, torch.Tensor) or log_kernel.ndim != 2:
        raise ValueError("log_kernel must be a 2-D tensor (N, K) of log-scores.")
    if log_kernel.shape[0] == 0 or log_kernel.shape[1] == 0:
        raise ValueError(f"log_kernel is empty (shape {tuple(log_kernel.shape)}).")


def _log_marginal(m: torch.Tensor | None, n: int, name: str, dt: torch.dtype, dev) -> torch.Tensor:
    if m is None:
        return torch.full((n,), -math.log(n), dtype=dt, device=dev)
    m = torch.as_tensor(m, dtype=dt, device=dev)
    if m.shape != (n,) or bool((m <= 0).any()) or not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} must be a positive finite vector of length {n}.")
    return (m / m.sum()).log()


def sinkhorn_knopp(
    log_kernel: torch.Tensor,
    row_marginal: torch.Tensor | None = None,
    col_marginal: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    dtype: str | torch.dtype | None = None,
    chunk_size: int | None = None,
    init_log_v: torch.Tensor | None = None,
    scale: float = 1.0,
    method: str = "auto",
    overwrite: bool = False,
    prescale: int = 2,
    relax: float = 1.0,
) -> SinkhornResult:
    r"""Sinkhorn-Knopp: scale the kernel ``exp(scale * log_kernel)`` (N, K) to the given marginals.

    ``method="kernel"`` (the fast path) builds the row-shifted kernel
    :math:`G_{ik} = \exp(s\,\ell_{ik} - \max_j s\,\ell_{ij})` once (for SeLa: :math:`\sigma^\lambda`
    scaled per row to a maximum of 1, so no row underflows) and alternates the matvecs
    :math:`u = r / (G v)` and :math:`v = c / (G^\top u)`, one streaming pass over cache-sized row chunks
    per iteration. ``method="log"`` alternates :math:`\ln u_i = \ln r_i - \mathrm{logsumexp}_k
    (s\ell_{ik} + \ln v_k)`, :math:`\ln v_k = \ln c_k - \mathrm{logsumexp}_i(s\ell_{ik} + \ln u_i)`
    (exp/log bound, never under- or overflows). ``"auto"`` runs the kernel path and falls back to the
    log domain when a matvec under- or overflows (a zero or non-finite ``G v`` or ``G^T u``, e.g. a
    column whose kernel underflows entirely): one exact log-domain iteration whose potentials are then
    absorbed into a rebuilt ``G`` (``"kernel+log"``; at most 8 times, then log domain to the end,
    ``"kernel->log"``). A finite ``v`` whose range grows past half the exponent range is absorbed
    the same way, without the log iteration.

    Parameters
    ----------
    log_kernel : (N, K) log-scores (``log sigma`` with ``scale = lambda`` for SeLa, scores / eps for SwAV).
    row_marginal, col_marginal : positive (N,) and (K,) weights, normalised to sum to one
        (uniform by default).
    max_iter, tol : stop when the L1 error of the column marginals (rows are exact after each row
        update) is ``<= tol``.
    dtype : computation dtype (``"float64"`` for tight tolerances); default that of ``log_kernel``.
    chunk_size : rows per chunk (memory beyond the kernel O(chunk x K)); default ~1 MiB-sized chunks
        for the kernel path, 65,536 rows for the log path.
    init_log_v : warm start for the column potential (e.g. from the previous epoch).
    scale : the kernel is ``scale * log_kernel`` (applied per chunk).
    method : ``"auto"``, ``"kernel"`` or ``"log"``.
    overwrite : the kernel path may store ``G`` in ``log_kernel``'s memory (saves one N x K buffer;
        ``log_kernel`` is destroyed; needs ``dtype`` equal to its dtype).
    prescale : max-plus scaling passes before the kernel is built (cheap ``amax`` passes; 0 = none;
        skipped when ``init_log_v`` is given).
    relax : over-relaxation ``omega`` in [1, 2) of the column update on the kernel path,
        :math:`\ln v \leftarrow (1-\omega)\ln v + \omega \ln(c / G^\top u)` (Thibault et al., 2021,
        "Overrelaxed Sinkhorn-Knopp algorithm for regularized optimal transport"; ``1`` is plain
        Sinkhorn). Same fixed point, fewer iterations on peaked kernels (SeLa's ``sigma^25``).
        Safeguarded: whenever the marginal error grows, ``omega`` is halved towards 1.

    Returns a :class:`SinkhornResult` whose potentials refer to ``exp(scale * log_kernel)``.
    """
    _check_log_kernel(log_kernel)
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_scalar(tol, "tol", low=0.0)
    check_option(method, "method", ("auto", "kernel", "log"))
    prescale = check_positive_int(prescale, "prescale", minimum=0)
    omega = check_scalar(relax, "relax", low=1.0, high=2.0, high_inclusive=False)
    dt = log_kernel.dtype if dtype is None else _dtype(dtype)
    n, k = log_kernel.shape
    if chunk_size is None:
        chunk_size = _DEFAULT_CHUNK if method == "log" else max(1, _CACHE_ELEMS // k)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if overwrite and log_kernel.dtype != dt:
        raise ValueError(
            f"overwrite=True needs dtype equal to log_kernel's dtype ({log_kernel.dtype}), got {dt}."
        )
    dev = log_kernel.device
    log_r = _log_marginal(row_marginal, n, "row_marginal", dt, dev)
    log_c = _log_marginal(col_marginal, k, "col_marginal", dt, dev)
    log_v = torch.zeros(k, dtype=dt, device=dev) if init_log_v is None else init_log_v.to(dev, dt).clone()
    scale = float(scale)
    errors: list[float] = []
    if method == "log":
        return _sinkhorn_log(log_kernel, log_r, log_c, log_v, scale, max_iter, tol, chunk_size, errors, "log")
    # ---- kernel path: G = exp(scale * log_kernel - shift_i - w_k) with max-plus (tropical) scaling:
    # a few passes of shift_i = max_k(a_ik - w_k), w_k = max_i(a_ik - shift_i) make every entry <= 0
    # with a zero in each row and (nearly) each column, so G keeps its dynamic range where it matters
    # (SeLa's sigma^25 spans far more than float32's e^-87 otherwise).
    w = -log_v
    shift = torch.empty(n, dtype=dt, device=dev)
    for _ in range(prescale if init_log_v is None else 0):
        col_max = torch.full((k,), -math.inf, dtype=dt, device=dev)
        for sl in Engine.chunks(n, chunk_size):
            a = log_kernel[sl].to(dt) * scale
            shift[sl] = (a - w).amax(1)
            col_max = torch.maximum(col_max, (a - shift[sl, None]).amax(0))
        w = torch.where(torch.isfinite(col_max), col_max, 0.0)  # an all -inf column stays all zero
    g = log_kernel if overwrite else torch.empty((n, k), dtype=dt, device=dev)
    # floor of the exponent, safely above the denormal range (exp near it still goes subnormal)
    log_tiny = math.log(torch.finfo(dt).tiny) + 2.0
    tiny = float(torch.full((64,), log_tiny, dtype=dt).exp_()[0])  # what exp_ returns at the floor
    max_range = -0.5 * log_tiny  # largest ln(max v / min v) kept before absorbing v into the kernel

    def build(w: torch.Tensor) -> None:
        for sl in Engine.chunks(n, chunk_size):
            a = log_kernel[sl].to(dt) * scale - w
            m = a.amax(1)
            shift[sl] = m
            # exp(max(a - m, floor)) - exp(floor): entries below ~e^-85 (float32) become exact zeros
            # without ever computing a denormal (which costs ~50x on x86)
            g[sl] = a.sub_(m[:, None]).clamp_min_(log_tiny).exp_().sub_(tiny)

    build(w)
    r, c = log_r.exp(), log_c.exp()
    # potentials of the kernel: u = u_G exp(-shift), v = v_G exp(-w)
    v = torch.ones(k, dtype=dt, device=dev)
    u = torch.empty(n, dtype=dt, device=dev)
    err = math.inf
    rescues = 0
    while len(errors) < max_iter:
        v = v / v.max()  # keep max(v) = 1 (before the row update, so the returned pair is consistent)
        gtu = torch.zeros(k, dtype=dt, device=dev)
        for sl in Engine.chunks(n, chunk_size):
            gs = g[sl]
            torch.div(r[sl], torch.mv(gs, v), out=u[sl])  # u = r / (G v)
            gtu.addmv_(gs.T, u[sl])  # G^T u, while the chunk is in cache
        good = bool(torch.isfinite(u).all()) and bool((gtu > 0).all()) and bool(torch.isfinite(gtu).all())
        if good:
            err = float((v * gtu - c).abs().sum())
            if omega > 1.0 and errors and err > errors[-1]:
                omega = 1.0 + 0.5 * (omega - 1.0)  # safeguard: relax less once the error grows
            errors.append(err)
            v_new = c / gtu
            if err <= tol or len(errors) >= max_iter:
                v = v_new  # a plain last update: the returned columns are exact
                break
            if omega > 1.0:  # v^(1 - omega) (c / G^T u)^omega
                v_new = v.pow(1.0 - omega) * v_new.pow(omega)
            lv = v_new.log()
            if bool(torch.isfinite(lv).all()) and float(lv.max() - lv.min()) < max_range:
                v = v_new
                continue
            if bool(torch.isfinite(lv).all()):  # finite but wide: absorb v into the kernel, rebuild
                w = w - lv
                build(w)
                v = torch.ones_like(v)
                continue
        # a matvec under/overflowed: one exact log-domain iteration from the last good potentials,
        # absorbed into the kernel (needs the log-kernel: impossible after overwrite)
        if method == "kernel" or overwrite:
            raise FloatingPointError(
                f"the kernel Sinkhorn under/overflowed after {len(errors)} iterations (a kernel column or "
                "row is numerically zero)"
                + ("; use method='auto' or method='log'." if method == "kernel" else
                   " and overwrite=True destroyed the log-kernel the log-domain rescue needs; call "
                   "again with overwrite=False or method='log'.")
            )
        rescues += 1
        if rescues > 8:  # the kernel keeps failing: finish in the log domain
            break
        _, lv_full, err = _log_iteration(log_kernel, scale, log_r, log_c, v.log() - w, chunk_size)
        errors.append(err)
        if not bool(torch.isfinite(lv_full).all()):
            break
        w = -lv_full
        build(w)
        v = torch.ones_like(v)
        if err <= tol:
            break
    if errors and errors[-1] <= tol or len(errors) >= max_iter:
        log_u, log_v = u.log() - shift, v.log() - w
        if bool(torch.isfinite(log_u).all()) and bool(torch.isfinite(log_v).all()):
            name = "kernel" if rescues == 0 else "kernel+log"
            return SinkhornResult(log_u, log_v, len(errors), err, err <= tol, errors, name)
    # ---- fallback: the log domain from the last finite column potential
    last_v = torch.where(torch.isfinite(v) & (v > 0), v, torch.ones_like(v)).log() - w
    return _sinkhorn_log(
        log_kernel, log_r, log_c, last_v, scale, max_iter - len(errors), tol, chunk_size,
        errors, "kernel->log",
    )


def _log_iteration(log_kernel, scale, log_r, log_c, log_v, chunk_size):
    """One log-domain Sinkhorn iteration: ``(log_u, new log_v, column-marginal L1 error)``."""
    n, k = log_kernel.shape
    dt, dev = log_v.dtype, log_v.device
    log_u = torch.empty(n, dtype=dt, device=dev)
    col_lse = torch.full((k,), -math.inf, dtype=dt, device=dev)
    for sl in Engine.chunks(n, chunk_size):
        a = log_kernel[sl].to(dt)
        a = a * scale + log_v if scale != 1.0 else a + log_v  # a new tensor: never edit the input
        log_u[sl] = log_r[sl] - torch.logsumexp(a, 1)
        a += log_u[sl, None]  # now ln K + ln u + ln v: the current plan on this chunk
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(a, 0))
    err = float((col_lse.exp() - log_c.exp()).abs().sum())
    return log_u, log_c - (col_lse - log_v), err  # col_lse - log_v = logsumexp_i(ln K + ln u)


def _sinkhorn_log(
    log_kernel, log_r, log_c, log_v, scale, max_iter, tol, chunk_size, errors, method
) -> SinkhornResult:
    """The log-domain iterations (see :func:`sinkhorn_knopp`); appends to ``errors``."""
    err = errors[-1] if errors else math.inf
    log_u = log_v.new_zeros(log_kernel.shape[0])
    for _ in range(max(1, max_iter)):
        log_u, log_v, err = _log_iteration(log_kernel, scale, log_r, log_c, log_v, chunk_size)
        errors.append(err)
        if err <= tol:
            break
    if not all(map(math.isfinite, errors)) or not bool(torch.isfinite(log_v).all()):
        raise FloatingPointError(
            "Sinkhorn produced non-finite potentials; some column of the kernel is entirely -inf "
            "or the marginals are inconsistent with the kernel's support."
        )
    return SinkhornResult(log_u, log_v, len(errors), err, err <= tol, errors, method)


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    from .._device import resolve_dtype

    return resolve_dtype(dtype)


def sela_labels(
    log_probs: torch.Tensor,
    lam: float = 25.0,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    dtype: str | torch.dtype | None = None,
    chunk_size: int | None = None,
    init_log_v: torch.Tensor | None = None,
    method: str = "auto",
    overwrite: bool = False,
    relax: float = 1.9,
) -> tuple[torch.Tensor, SinkhornResult]:
    r"""SeLa hard pseudo-labels: equipartitioned argmax of the Sinkhorn plan for ``sigma^lambda``.

    Solves :math:`\max_Q \langle Q, \lambda \ln\sigma\rangle + H(Q)` over plans with uniform
    marginals and labels each row by :math:`\arg\max_k (\lambda \ln\sigma_{ik} + \ln v_k)`.
    ``log_probs`` is (N, K) ``log sigma``; returns ``(labels (N,), SinkhornResult)``. ``method``,
    ``overwrite`` (``log_probs`` then holds the kernel afterwards), ``relax`` and ``chunk_size`` as
    in :func:`sinkhorn_knopp`; over-relaxed by default (``relax=1.9``: the same plan in fewer
    iterations on ``sigma^lambda``, under 0.7x of plain Sinkhorn's in the tests; 1 gives plain Sinkhorn).
    """
    lam = check_scalar(lam, "lam", low=0.0, low_inclusive=False)
    _check_log_kernel(log_probs)
    out = sinkhorn_knopp(
        log_probs, max_iter=max_iter, tol=tol, dtype=dtype, chunk_size=chunk_size,
        init_log_v=init_log_v, scale=lam, method=method, overwrite=overwrite, relax=relax,
    )
    n, k = log_probs.shape
    step = chunk_size or max(1, _CACHE_ELEMS // k)
    labels = torch.empty(n, dtype=torch.long, device=log_probs.device)
    v = out.log_v.exp() if overwrite else None
    for sl in Engine.chunks(n, step):
        if overwrite:  # log_probs now holds G_ik ∝ sigma_ik^lam: argmax of G_ik v_k
            labels[sl] = (log_probs[sl] * v).argmax(1)
        else:
            labels[sl] = (lam * log_probs[sl].to(out.log_v.dtype) + out.log_v).argmax(1)
    return labels, out


def swav_codes(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    n_iter: int = 3,
    queue: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""SwAV soft codes for one mini-batch: rows of the Sinkhorn plan for ``exp(scores / eps)``.

    ``scores`` (B, K) are prototype similarities (or logits); ``queue`` (Q, K) earlier scores that
    join the transport problem (so small batches can still be balanced) but whose codes are dropped.
    Returns (B, K) codes, each row summing to one, computed in float64 without gradient.
    """
    _check_log_kernel(scores)
    epsilon = check_scalar(epsilon, "epsilon", low=0.0, low_inclusive=False)
    n_iter = check_positive_int(n_iter, "n_iter")
    with torch.no_grad():
        s = scores.detach().double()
        if queue is not None:
            if queue.ndim != 2 or queue.shape[1] != scores.shape[1]:
                raise ValueError(
                    f"queue must have shape (Q, {scores.shape[1]}), got {tuple(queue.shape)}."
                )
            s = torch.cat([s, queue.detach().to(s)], 0)
        res = sinkhorn_knopp(s / epsilon, max_iter=n_iter, tol=0.0)
        # the sample's own potential only rescales its row, so the code is a row softmax
        return (s[: scores.shape[0]] / epsilon + res.log_v).softmax(1).to(scores.dtype)


@dataclass
class SoftLabelResult:
    """Soft pseudo-labels ``y`` (N, K), the objective before each iteration and the final one."""

    y: torch.Tensor
    objective: list[float]
    n_iter: int
    converged: bool


def soft_label_objective(
    probs: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    loss: str = "collision",
    chunk_size: int = _DEFAULT_CHUNK,
) -> float:
    r"""``mean_i H(sigma_i, y_i) + lam * KL(u || mean_i y_i)`` for ``loss`` collision or reverse CE."""
    n, k = probs.shape
    dt = torch.float64
    total = 0.0
    col = torch.zeros(k, dtype=dt, device=probs.device)
    for sl in Engine.chunks(n, chunk_size):
        p, q = probs[sl].to(dt), y[sl].to(dt)
        if loss == "collision":
            total += float(-(p * q).sum(1).log().sum())
        else:
            total += float(-(p * q.log()).sum())
        col += q.sum(0)
    if lam == 0.0:  # no fairness term (an unused class would make it 0 * inf)
        return total / n
    fair = -math.log(k) - float((col / n).log().mean())
    return total / n + lam * fair


def em_soft_labels(
    probs: torch.Tensor,
    lam: float = 1.0,
    *,
    loss: str = "collision",
    max_iter: int = 50,
    tol: float = 1e-6,
    init: torch.Tensor | None = None,
    chunk_size: int | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> SoftLabelResult:
    r"""Soft pseudo-labels minimising ``F(y) = mean_i H(sigma_i, y_i) + lam * KL(u || ybar)``.

    With the predictions ``sigma`` fixed, ``F`` is convex in ``y``. Both ``-ln`` terms are bounded by
    Jensen (majorise-minimise, i.e. EM): with :math:`S_{ik} = \sigma_{ik} y_{ik} / \sigma_i\cdot y_i`
    (collision CE; :math:`S = \sigma` for reverse CE) and :math:`T_{ik} = y_{ik} / \sum_j y_{jk}`,
    the surrogate is minimised in closed form by

    .. math:: y_{ik} \propto S_{ik} / N + \lambda\, T_{ik} / K,

    so every iteration does not increase ``F``. For collision CE the update is
    :math:`y_{ik} \leftarrow y_{ik}(a_i\sigma_{ik} + b_k) / z_i` with :math:`a_i = 1/(N\,\sigma_i\cdot y_i)`,
    :math:`b_k = \lambda / (K \sum_j y_{jk})` and :math:`z_i = 1/N + y_i \cdot b`: a row dot, a matvec
    and a rank-one update per cache-sized chunk, one streaming pass over ``sigma`` and ``y`` per
    iteration. ``lam -> 0`` (collision) tends to the one-hot ``argmax sigma``; ``lam = 0`` returns it.

    Parameters
    ----------
    probs : (N, K) predictions ``sigma`` (rows on the simplex).
    lam : weight of the fairness term ``KL(u || mean y)`` (zero-avoiding: keeps every cluster).
    loss : ``"collision"`` (``-ln sigma . y``) or ``"reverse"`` (``-sum_k sigma_k ln y_k``).
    max_iter, tol : stop when ``F`` decreases by less than ``tol``.
    init : starting ``y`` (default ``sigma``), floored at 1e-6 and renormalised.
    chunk_size : rows per chunk (default: ~1 MiB chunks).
    out : optional (N, K) buffer to write ``y`` into (may be ``init`` itself: saves an N x K buffer).
    backend : ``"fused"`` (compiled one-pass iterations, ``inference/_em_kernels.py``: CPU tensors,
        contiguous, float32/float64), ``"torch"`` (chunked torch ops, any device) or ``"auto"``
        (fused where it applies).
    """
    _check_log_kernel(probs)
    lam = check_scalar(lam, "lam", low=0.0)
    check_option(loss, "loss", ("collision", "reverse"))
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_scalar(tol, "tol", low=0.0)
    n, k = probs.shape
    chunk_size = check_positive_int(
        max(1, _CACHE_ELEMS // k) if chunk_size is None else chunk_size, "chunk_size"
    )
    if init is not None and init.shape != probs.shape:
        raise ValueError(f"init has shape {tuple(init.shape)}; it must match probs {tuple(probs.shape)}.")
    if out is not None and (out.shape != probs.shape or out.dtype != probs.dtype):
        raise ValueError(f"out must be a {probs.dtype} tensor of shape {tuple(probs.shape)}.")
    check_option(backend, "backend", ("auto", "fused", "torch"))
    dt = probs.dtype
    tiny = torch.finfo(dt).tiny * 1e6
    y = out if out is not None else empty_buffer(n, k, dt, probs.device)
    fused = _em_kernels_for(backend, probs, y, init)
    if lam == 0.0 and loss == "collision":
        one_hot_into(y, probs.argmax(1))
        return SoftLabelResult(y, [soft_label_objective(probs, y, 0.0, loss, chunk_size)], 0, True)
    if fused is not None:
        col = fused.init_labels(probs if init is None else init, y, 1e-6)
    else:
        col = torch.zeros(k, dtype=torch.float64, device=probs.device)
        for sl in Engine.chunks(n, chunk_size):
            src = probs[sl] if init is None else init[sl].to(dt)
            q = src.clamp_min(1e-6)
            q /= q.sum(1, keepdim=True)
            y[sl] = q
            col += q.sum(0).double()
    history: list[float] = []
    converged = False
    for _ in range(max_iter):
        b = (lam / k / col).to(dt)  # b_k = lam / (K colsum_k): Jensen weight of -ln ybar_k
        fair = -math.log(k) - float((col / n).log().mean())
        if fused is not None:  # the same update, one pass over sigma and y
            new_col, data_sum = fused.em_iteration(probs, y, b, loss, tiny)
            data = -data_sum
        else:
            new_col, data = _em_iteration_torch(probs, y, b, loss, tiny, chunk_size)
        history.append(data / n + lam * fair)
        col = new_col
        if len(history) > 1 and history[-2] - history[-1] < tol:
            converged = True
            break
    return SoftLabelResult(y, history, len(history), converged)


def one_hot_into(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Write the one-hot rows of ``labels`` (N,) into ``out`` (N, K) in place (no int64 N x K temporary)."""
    out.zero_().scatter_(1, labels.view(-1, 1), 1.0)
    return out


def _em_iteration_torch(
    probs: torch.Tensor, y: torch.Tensor, b: torch.Tensor, loss: str, tiny: float, chunk_size: int
) -> tuple[torch.Tensor, float]:
    """One EM iteration in place on ``y`` by chunked torch ops: (float64 column sums, data term * N)."""
    n = probs.shape[0]
    new_col = torch.zeros(probs.shape[1], dtype=torch.float64, device=probs.device)
    data = 0.0
    for sl in Engine.chunks(n, chunk_size):
        p, q = probs[sl], y[sl]
        z = torch.mv(q, b).add_(1.0 / n)  # z_i = 1/N + y_i . b, the row normaliser
        if loss == "collision":
            s = torch.linalg.vecdot(p, q).clamp_min_(tiny)  # sigma_i . y_i
            data -= float(s.log().sum(dtype=torch.float64))
            t = p * (1.0 / (n * s * z))[:, None]  # a_i sigma_ik / z_i
            t.addr_(1.0 / z, b)  # + b_k / z_i
            q.mul_(t)
        else:
            data -= float((p * q.clamp_min(tiny).log()).sum(dtype=torch.float64))
            q.mul_(b).add_(p, alpha=1.0 / n).div_(z[:, None])  # (sigma / N + b y) / z
        new_col += q.sum(0).double()
    return new_col, data


def _em_kernels_for(backend: str, probs: torch.Tensor, y: torch.Tensor, init: torch.Tensor | None):
    """The fused-kernel module if ``backend`` asks for it and the tensors allow it, else None."""
    if backend == "torch":
        return None
    from . import _em_kernels

    tensors = (probs, y) if init is None else (probs, y, init)
    if _em_kernels.supported(*tensors):
        return _em_kernels
    if backend == "fused":
        raise ValueError(
            "backend='fused' needs contiguous CPU float32/float64 tensors of one dtype "
            f"(probs: {probs.dtype} on {probs.device}); use backend='torch' or 'auto'."
        )
    return None
