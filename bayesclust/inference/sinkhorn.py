"""Sinkhorn-Knopp scaling for balanced pseudo-labels, streamed over row chunks.

:func:`sinkhorn` is the one entry point (``method=...``, in the style of POT's ``ot.sinkhorn``): it
validates the problem and dispatches to a variant,

* :func:`sinkhorn_log` -- log-domain iterations (exp/log bound; never under- or overflow);
* :func:`sinkhorn_kernel` -- matvecs with the row-shifted kernel ``G`` (the fast path), rescued by
  log-domain iterations when a matvec under- or overflows;
* :func:`sinkhorn_overrelaxed` -- the kernel path with an over-relaxed column update.

Built on them: :func:`sela_labels` (SeLa, Asano et al. 2020: balanced hard labels over the whole data
set from the kernel ``sigma^lambda``) and :func:`swav_codes` (SwAV, Caron et al. 2020: balanced soft
codes per mini-batch from ``exp(s / eps)``). Memory beyond the inputs is O(chunk x K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .._device import resolve_dtype
from .._validation import check_option, check_positive_int, check_scalar
from .engine import Engine

__all__ = [
    "SinkhornProblem",
    "SinkhornResult",
    "sela_labels",
    "sinkhorn",
    "sinkhorn_kernel",
    "sinkhorn_log",
    "sinkhorn_overrelaxed",
    "swav_codes",
]

_DEFAULT_CHUNK = 1 << 16  # rows per chunk of the exp/log-bound log-domain passes
_CACHE_ELEMS = 1 << 18  # elements per chunk of the matvec / elementwise passes (1 MiB of float32)
_METHODS = ("auto", "kernel", "log")
_MAX_RESCUES = 8  # log-domain rescues of the kernel path before it finishes in the log domain


@dataclass
class SinkhornResult:
    """Dual potentials of the plan ``P_ik = exp(log_kernel_ik + log_u_i + log_v_k)``.

    ``log_u`` (N,), ``log_v`` (K,); ``error`` is the L1 error of the column marginals after the last
    row update (rows are then exact); ``n_iter`` the number of iterations run; ``converged`` whether
    ``error <= tol``; ``errors`` the error of every iteration; ``method`` the path that produced them:
    ``"kernel"``, ``"kernel+log"`` (rescued), ``"log"`` or ``"kernel->log"`` (fallback).
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


@dataclass
class SinkhornProblem:
    """A validated problem: scale ``exp(scale * log_kernel)`` (N, K) to the marginals.

    ``log_r`` (N,) and ``log_c`` (K,) are log marginals summing to one, ``log_v`` (K,) the starting
    column potential (``warm``: given by the caller). Iterations run in ``dtype`` over chunks of
    ``chunk_size`` rows until the column-marginal L1 error is ``<= tol`` or ``max_iter`` is reached.
    """

    log_kernel: torch.Tensor
    log_r: torch.Tensor
    log_c: torch.Tensor
    log_v: torch.Tensor
    scale: float
    max_iter: int
    tol: float
    chunk_size: int
    dtype: torch.dtype
    warm: bool = False


def _check_matrix(t: torch.Tensor, name: str, what: str) -> None:
    """``t`` must be a non-empty 2-D tensor (N, K)."""
    if not isinstance(t, torch.Tensor) or t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor (N, K) of {what}.")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}).")


def _log_marginal(m: torch.Tensor | None, n: int, name: str, dt: torch.dtype, dev) -> torch.Tensor:
    if m is None:
        return torch.full((n,), -math.log(n), dtype=dt, device=dev)
    m = torch.as_tensor(m, dtype=dt, device=dev)
    if m.shape != (n,) or bool((m <= 0).any()) or not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} must be a positive finite vector of length {n}.")
    return (m / m.sum()).log()


# ---------------------------------------------------------------------------- the dispatcher
def sinkhorn(
    log_kernel: torch.Tensor,
    row_marginal: torch.Tensor | None = None,
    col_marginal: torch.Tensor | None = None,
    *,
    method: str = "auto",
    max_iter: int = 100,
    tol: float = 1e-6,
    dtype: str | torch.dtype | None = None,
    chunk_size: int | None = None,
    init_log_v: torch.Tensor | None = None,
    scale: float = 1.0,
    overwrite: bool = False,
    prescale: int = 2,
    relax: float = 1.0,
) -> SinkhornResult:
    r"""Sinkhorn-Knopp: scale the kernel ``exp(scale * log_kernel)`` (N, K) to the given marginals.

    Parameters
    ----------
    log_kernel : (N, K) log-scores (``log sigma`` with ``scale = lambda`` for SeLa, scores / eps for SwAV).
    row_marginal, col_marginal : positive (N,) and (K,) weights, normalised to sum to one
        (uniform by default).
    method : ``"log"`` (:func:`sinkhorn_log`), ``"kernel"`` (:func:`sinkhorn_kernel`, or
        :func:`sinkhorn_overrelaxed` when ``relax > 1``; raises when a matvec under- or overflows)
        or ``"auto"`` (the same kernel path, rescued in the log domain instead of raising).
    max_iter, tol : stop when the L1 error of the column marginals (rows are exact after each row
        update) is ``<= tol``.
    dtype : computation dtype (``"float64"`` for tight tolerances); default that of ``log_kernel``.
    chunk_size : rows per chunk (memory beyond the kernel O(chunk x K)); default ~1 MiB-sized chunks
        for the kernel path, 65,536 rows for the log path.
    init_log_v : (K,) warm start for the column potential (e.g. from the previous epoch).
    scale : the kernel is ``scale * log_kernel`` (applied per chunk).
    overwrite : the kernel path may store ``G`` in ``log_kernel``'s memory (saves one N x K buffer;
        ``log_kernel`` is destroyed; needs ``dtype`` equal to its dtype).
    prescale : max-plus scaling passes before the kernel is built (0 = none; skipped when
        ``init_log_v`` is given).
    relax : over-relaxation ``omega`` in [1, 2) of the kernel path's column update (1: plain Sinkhorn).

    Returns a :class:`SinkhornResult` whose potentials refer to ``exp(scale * log_kernel)``.
    """
    check_option(method, "method", _METHODS)
    prescale = check_positive_int(prescale, "prescale", minimum=0)
    omega = check_scalar(relax, "relax", low=1.0, high=2.0, high_inclusive=False)
    problem = _make_problem(
        log_kernel, row_marginal, col_marginal, method, max_iter, tol, dtype, chunk_size, init_log_v, scale
    )
    dt = problem.dtype
    if overwrite and log_kernel.dtype != dt:
        raise ValueError(
            f"overwrite=True needs dtype equal to log_kernel's dtype ({log_kernel.dtype}), got {dt}."
        )
    if method == "log":
        return sinkhorn_log(problem)
    kw = {"overwrite": overwrite, "prescale": prescale, "rescue": method == "auto"}
    if omega > 1.0:
        return sinkhorn_overrelaxed(problem, omega, **kw)
    return sinkhorn_kernel(problem, **kw)


def _make_problem(
    log_kernel: torch.Tensor,
    row_marginal: torch.Tensor | None,
    col_marginal: torch.Tensor | None,
    method: str,
    max_iter: int,
    tol: float,
    dtype: str | torch.dtype | None,
    chunk_size: int | None,
    init_log_v: torch.Tensor | None,
    scale: float,
) -> SinkhornProblem:
    """Validate :func:`sinkhorn`'s arguments into a :class:`SinkhornProblem`."""
    _check_matrix(log_kernel, "log_kernel", "log-scores")
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_scalar(tol, "tol", low=0.0)
    dt = log_kernel.dtype if dtype is None else resolve_dtype(dtype)
    n, k = log_kernel.shape
    if chunk_size is None:
        chunk_size = _DEFAULT_CHUNK if method == "log" else max(1, _CACHE_ELEMS // k)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    dev = log_kernel.device
    return SinkhornProblem(
        log_kernel,
        _log_marginal(row_marginal, n, "row_marginal", dt, dev),
        _log_marginal(col_marginal, k, "col_marginal", dt, dev),
        torch.zeros(k, dtype=dt, device=dev) if init_log_v is None else init_log_v.to(dev, dt).clone(),
        float(scale), max_iter, tol, chunk_size, dt, warm=init_log_v is not None,
    )


# ---------------------------------------------------------------------------- log domain
def _log_iteration(
    log_kernel: torch.Tensor,
    scale: float,
    log_r: torch.Tensor,
    log_c: torch.Tensor,
    log_v: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One log-domain iteration: ``(log_u (N,), new log_v (K,), column-marginal L1 error)``."""
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


def sinkhorn_log(
    problem: SinkhornProblem, errors: list[float] | None = None, method: str = "log"
) -> SinkhornResult:
    r"""Log-domain iterations on a validated :class:`SinkhornProblem` (see :func:`sinkhorn`).

    Alternates :math:`\ln u_i = \ln r_i - \mathrm{logsumexp}_k(s\ell_{ik} + \ln v_k)` and
    :math:`\ln v_k = \ln c_k - \mathrm{logsumexp}_i(s\ell_{ik} + \ln u_i)`, one pass over the row
    chunks per iteration. ``errors`` (appended to) continues an earlier path's error list;
    ``method`` names the path in the result.
    """
    p = problem
    errors = [] if errors is None else errors
    err = errors[-1] if errors else math.inf
    log_v = p.log_v
    log_u = log_v.new_zeros(p.log_kernel.shape[0])
    for _ in range(max(1, p.max_iter)):
        log_u, log_v, err = _log_iteration(p.log_kernel, p.scale, p.log_r, p.log_c, log_v, p.chunk_size)
        errors.append(err)
        if err <= p.tol:
            break
    if not all(map(math.isfinite, errors)) or not bool(torch.isfinite(log_v).all()):
        raise FloatingPointError(
            "Sinkhorn produced non-finite potentials; some column of the kernel is entirely -inf "
            "or the marginals are inconsistent with the kernel's support."
        )
    return SinkhornResult(log_u, log_v, len(errors), err, err <= p.tol, errors, method)


# ---------------------------------------------------------------------------- kernel path
class _Relaxation:
    r"""The column update :math:`\ln v \leftarrow (1-\omega)\ln v + \omega \ln(c / G^\top u)`.

    ``omega = 1`` is plain Sinkhorn. Safeguarded: whenever the marginal error grows, ``omega`` is
    halved towards 1.
    """

    def __init__(self, omega: float) -> None:
        self.omega = omega

    def observe(self, err: float, errors: list[float]) -> None:
        if self.omega > 1.0 and errors and err > errors[-1]:
            self.omega = 1.0 + 0.5 * (self.omega - 1.0)

    def apply(self, v: torch.Tensor, v_plain: torch.Tensor) -> torch.Tensor:
        if self.omega > 1.0:  # v^(1 - omega) (c / G^T u)^omega
            return v.pow(1.0 - self.omega) * v_plain.pow(self.omega)
        return v_plain


class _KernelScaling:
    """State of the kernel path: ``G = exp(scale * log_kernel - shift_i - w_k)`` (N, K) and the
    scalings ``u`` (N,), ``v`` (K,) of ``G``; the kernel's potentials are ``u exp(-shift)``,
    ``v exp(-w)``."""

    def __init__(self, p: SinkhornProblem, overwrite: bool, prescale: int) -> None:
        n, k = p.log_kernel.shape
        dt, dev = p.dtype, p.log_kernel.device
        self.p = p
        self.shift = torch.empty(n, dtype=dt, device=dev)
        self.w = self._max_plus_scaling(-p.log_v, 0 if p.warm else prescale)
        self.g = p.log_kernel if overwrite else torch.empty((n, k), dtype=dt, device=dev)
        # floor of the exponent, safely above the denormal range (exp near it still goes subnormal)
        self.log_tiny = math.log(torch.finfo(dt).tiny) + 2.0
        self.tiny = float(torch.full((64,), self.log_tiny, dtype=dt).exp_()[0])  # exp_ at the floor
        self.max_range = -0.5 * self.log_tiny  # largest ln(max v / min v) before absorbing v into G
        self.build()
        self.r, self.c = p.log_r.exp(), p.log_c.exp()
        self.v = torch.ones(k, dtype=dt, device=dev)
        self.u = torch.empty(n, dtype=dt, device=dev)
        self.errors: list[float] = []
        self.err = math.inf
        self.rescues = 0

    def _max_plus_scaling(self, w: torch.Tensor, passes: int) -> torch.Tensor:
        # max-plus (tropical) scaling: shift_i = max_k(a_ik - w_k), w_k = max_i(a_ik - shift_i) make
        # every entry <= 0 with a zero in each row and (nearly) each column, so G keeps its dynamic
        # range where it matters (SeLa's sigma^25 spans far more than float32's e^-87 otherwise)
        p = self.p
        k = p.log_kernel.shape[1]
        for _ in range(passes):
            col_max = torch.full((k,), -math.inf, dtype=p.dtype, device=w.device)
            for sl in Engine.chunks(p.log_kernel.shape[0], p.chunk_size):
                a = p.log_kernel[sl].to(p.dtype) * p.scale
                self.shift[sl] = (a - w).amax(1)
                col_max = torch.maximum(col_max, (a - self.shift[sl, None]).amax(0))
            w = torch.where(torch.isfinite(col_max), col_max, 0.0)  # an all -inf column stays zero
        return w

    def build(self) -> None:
        """``G`` (N, K) from ``w``, each row shifted to a maximum of 1 (``shift`` (N,) keeps the shifts)."""
        p = self.p
        for sl in Engine.chunks(p.log_kernel.shape[0], p.chunk_size):
            a = p.log_kernel[sl].to(p.dtype) * p.scale - self.w
            m = a.amax(1)
            self.shift[sl] = m
            # exp(max(a - m, floor)) - exp(floor): entries below ~e^-85 (float32) become exact zeros
            # without ever computing a denormal (which costs ~50x on x86)
            self.g[sl] = a.sub_(m[:, None]).clamp_min_(self.log_tiny).exp_().sub_(self.tiny)

    def matvecs(self) -> torch.Tensor | None:
        """``u = r / (G v)`` and ``G^T u`` (K,) in one pass; None if a matvec under/overflowed."""
        self.v = self.v / self.v.max()  # max(v) = 1 before the row update: the pair stays consistent
        gtu = torch.zeros_like(self.v)
        for sl in Engine.chunks(self.g.shape[0], self.p.chunk_size):
            gs = self.g[sl]
            torch.div(self.r[sl], torch.mv(gs, self.v), out=self.u[sl])
            gtu.addmv_(gs.T, self.u[sl])  # while the chunk is in cache
        good = bool(torch.isfinite(self.u).all()) and bool((gtu > 0).all())
        return gtu if good and bool(torch.isfinite(gtu).all()) else None

    def update_columns(self, gtu: torch.Tensor, relax: _Relaxation) -> str:
        """The column update: ``"done"`` (converged or out of iterations), ``"next"`` or ``"failed"``."""
        err = float((self.v * gtu - self.c).abs().sum())
        relax.observe(err, self.errors)
        self.errors.append(err)
        self.err = err
        v_new = self.c / gtu
        if err <= self.p.tol or len(self.errors) >= self.p.max_iter:
            self.v = v_new  # a plain last update: the returned columns are exact
            return "done"
        v_new = relax.apply(self.v, v_new)
        lv = v_new.log()
        if not bool(torch.isfinite(lv).all()):
            return "failed"
        if float(lv.max() - lv.min()) < self.max_range:
            self.v = v_new
        else:  # finite but wide: absorb v into the kernel and rebuild it
            self.w = self.w - lv
            self.build()
            self.v = torch.ones_like(self.v)
        return "next"

    def rescue(self) -> bool:
        """One exact log-domain iteration from the last good potentials, absorbed into ``G``;
        False when it is not finite either."""
        p = self.p
        _, lv, err = _log_iteration(p.log_kernel, p.scale, p.log_r, p.log_c, self.v.log() - self.w,
                                    p.chunk_size)
        self.errors.append(err)
        self.err = err
        if not bool(torch.isfinite(lv).all()):
            return False
        self.w = -lv
        self.build()
        self.v = torch.ones_like(self.v)
        return True

    def result(self) -> SinkhornResult:
        """The potentials, or the log domain from the last finite column potential."""
        p, errors = self.p, self.errors
        if errors and errors[-1] <= p.tol or len(errors) >= p.max_iter:
            log_u, log_v = self.u.log() - self.shift, self.v.log() - self.w
            if bool(torch.isfinite(log_u).all()) and bool(torch.isfinite(log_v).all()):
                name = "kernel" if self.rescues == 0 else "kernel+log"
                return SinkhornResult(log_u, log_v, len(errors), self.err, self.err <= p.tol, errors, name)
        v = self.v
        last_v = torch.where(torch.isfinite(v) & (v > 0), v, torch.ones_like(v)).log() - self.w
        rest = replace(p, log_v=last_v, max_iter=p.max_iter - len(errors))
        return sinkhorn_log(rest, errors, "kernel->log")


def _kernel_failure(n_iter: int, rescue: bool) -> FloatingPointError:
    hint = (
        " and overwrite=True destroyed the log-kernel the log-domain rescue needs; call again with "
        "overwrite=False or method='log'."
        if rescue
        else "; use method='auto' or method='log'."
    )
    return FloatingPointError(
        f"the kernel Sinkhorn under/overflowed after {n_iter} iterations (a kernel column or row is "
        "numerically zero)" + hint
    )


def _kernel_sinkhorn(
    p: SinkhornProblem, relax: _Relaxation, overwrite: bool, prescale: int, rescue: bool
) -> SinkhornResult:
    ks = _KernelScaling(p, overwrite, prescale)
    while len(ks.errors) < p.max_iter:
        gtu = ks.matvecs()
        if gtu is not None:
            status = ks.update_columns(gtu, relax)
            if status == "done":
                break
            if status == "next":
                continue
        # a matvec under/overflowed: rescue in the log domain (needs the log-kernel: not after overwrite)
        if not rescue or overwrite:
            raise _kernel_failure(len(ks.errors), rescue)
        ks.rescues += 1
        if ks.rescues > _MAX_RESCUES or not ks.rescue() or ks.err <= p.tol:
            break
    return ks.result()


def sinkhorn_kernel(
    problem: SinkhornProblem, *, overwrite: bool = False, prescale: int = 2, rescue: bool = True
) -> SinkhornResult:
    r"""Kernel-path iterations on a validated :class:`SinkhornProblem` (see :func:`sinkhorn`).

    Builds the row-shifted kernel :math:`G_{ik} = \exp(s\,\ell_{ik} - \max_j s\,\ell_{ij})` once (for
    SeLa: :math:`\sigma^\lambda` scaled per row to a maximum of 1, so no row underflows) and alternates
    :math:`u = r / (G v)` and :math:`v = c / (G^\top u)`, one streaming pass over cache-sized row
    chunks per iteration. When a matvec under- or overflows (a zero or non-finite ``G v`` or
    ``G^T u``), ``rescue`` runs one exact log-domain iteration whose potentials are absorbed into a
    rebuilt ``G`` (``"kernel+log"``; at most 8 times, then the log domain to the end,
    ``"kernel->log"``); without ``rescue`` it raises ``FloatingPointError``. A finite ``v`` whose
    range grows past half the exponent range is absorbed the same way, without the log iteration.
    ``overwrite`` stores ``G`` in ``problem.log_kernel`` (no rescue is then possible); ``prescale``
    max-plus scaling passes (cheap ``amax`` passes) precede the first build on a cold start.
    """
    return _kernel_sinkhorn(problem, _Relaxation(1.0), overwrite, prescale, rescue)


def sinkhorn_overrelaxed(
    problem: SinkhornProblem,
    relax: float = 1.9,
    *,
    overwrite: bool = False,
    prescale: int = 2,
    rescue: bool = True,
) -> SinkhornResult:
    r""":func:`sinkhorn_kernel` with the over-relaxed column update of Thibault et al. (2021),
    :math:`\ln v \leftarrow (1-\omega)\ln v + \omega \ln(c / G^\top u)`, ``omega = relax`` in [1, 2).

    Same fixed point, fewer iterations on peaked kernels (SeLa's ``sigma^25``). Safeguarded: whenever
    the marginal error grows, ``omega`` is halved towards 1.
    """
    return _kernel_sinkhorn(problem, _Relaxation(float(relax)), overwrite, prescale, rescue)


# ---------------------------------------------------------------------------- pseudo-labels
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
    in :func:`sinkhorn`; over-relaxed by default (``relax=1.9``; 1 gives plain Sinkhorn).
    """
    lam = check_scalar(lam, "lam", low=0.0, low_inclusive=False)
    _check_matrix(log_probs, "log_probs", "log-predictions")
    out = sinkhorn(
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
    _check_matrix(scores, "scores", "scores")
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
        res = sinkhorn(s / epsilon, max_iter=n_iter, tol=0.0)
        # the sample's own potential only rescales its row, so the code is a row softmax
        return (s[: scores.shape[0]] / epsilon + res.log_v).softmax(1).to(scores.dtype)
