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

from .._validation import check_option, check_positive_int, check_scalar
from .engine import Engine

__all__ = [
    "SinkhornResult",
    "SoftLabelResult",
    "em_soft_labels",
    "sela_labels",
    "sinkhorn_knopp",
    "soft_label_objective",
    "swav_codes",
]

_DEFAULT_CHUNK = 1 << 16


@dataclass
class SinkhornResult:
    """Dual potentials of the plan ``P_ik = exp(log_kernel_ik + log_u_i + log_v_k)``.

    ``error`` is the L1 error of the column marginals after the last row update (rows are then
    exact); ``n_iter`` the number of iterations run; ``converged`` whether ``error <= tol``.
    """

    log_u: torch.Tensor
    log_v: torch.Tensor
    n_iter: int
    error: float
    converged: bool
    errors: list[float] = field(default_factory=list)

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
    chunk_size: int = _DEFAULT_CHUNK,
    init_log_v: torch.Tensor | None = None,
    scale: float = 1.0,
) -> SinkhornResult:
    r"""Log-domain Sinkhorn-Knopp: scale ``exp(log_kernel)`` to the given marginals.

    Alternates :math:`\ln u_i = \ln r_i - \mathrm{logsumexp}_k(\ln K_{ik} + \ln v_k)` and
    :math:`\ln v_k = \ln c_k - \mathrm{logsumexp}_i(\ln K_{ik} + \ln u_i)`, one streaming pass over
    row chunks per iteration; uniform marginals by default (both sum to one).

    Parameters
    ----------
    log_kernel : (N, K) log-scores (``lambda * log sigma`` for SeLa, ``scores / eps`` for SwAV).
    row_marginal, col_marginal : positive (N,) and (K,) weights (normalised to sum to one).
    max_iter, tol : stop when the column-marginal L1 error is ``<= tol``.
    dtype : computation dtype of the potentials and sums (``"float64"`` for tight tolerances);
        default: that of ``log_kernel``. The kernel itself is converted chunk by chunk.
    chunk_size : rows per chunk (memory O(chunk x K)).
    init_log_v : warm start for the column potential (e.g. from the previous epoch).
    scale : the kernel is ``scale * log_kernel`` (applied per chunk, never materialised).
    """
    _check_log_kernel(log_kernel)
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_scalar(tol, "tol", low=0.0)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    dt = log_kernel.dtype if dtype is None else _dtype(dtype)
    n, k = log_kernel.shape
    dev = log_kernel.device
    log_r = _log_marginal(row_marginal, n, "row_marginal", dt, dev)
    log_c = _log_marginal(col_marginal, k, "col_marginal", dt, dev)
    log_v = torch.zeros(k, dtype=dt, device=dev) if init_log_v is None else init_log_v.to(dev, dt).clone()
    log_u = torch.empty(n, dtype=dt, device=dev)
    errors: list[float] = []
    err = math.inf
    for _ in range(max_iter):
        col_lse = torch.full((k,), -math.inf, dtype=dt, device=dev)
        for sl in Engine.chunks(n, chunk_size):
            a = log_kernel[sl].to(dt)
            a = a * scale + log_v if scale != 1.0 else a + log_v  # a new tensor: never edit the input
            log_u[sl] = log_r[sl] - torch.logsumexp(a, 1)
            a += log_u[sl, None]  # now ln K + ln u + ln v: the current plan on this chunk
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(a, 0))
        err = float((col_lse.exp() - log_c.exp()).abs().sum())
        errors.append(err)
        log_v = log_c - (col_lse - log_v)  # col_lse - log_v = logsumexp_i(ln K + ln u)
        if err <= tol:
            break
    if not all(map(math.isfinite, errors)) or not bool(torch.isfinite(log_v).all()):
        raise FloatingPointError(
            "Sinkhorn produced non-finite potentials; some column of the kernel is entirely -inf "
            "or the marginals are inconsistent with the kernel's support."
        )
    return SinkhornResult(log_u, log_v, len(errors), err, err <= tol, errors)


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
    chunk_size: int = _DEFAULT_CHUNK,
    init_log_v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SinkhornResult]:
    r"""SeLa hard pseudo-labels: equipartitioned argmax of the Sinkhorn plan for ``sigma^lambda``.

    Solves :math:`\max_Q \langle Q, \lambda \ln\sigma\rangle + H(Q)` over plans with uniform
    marginals and labels each row by :math:`\arg\max_k (\lambda \ln\sigma_{ik} + \ln v_k)`.
    ``log_probs`` is (N, K) ``log sigma``; returns ``(labels (N,), SinkhornResult)``.
    """
    lam = check_scalar(lam, "lam", low=0.0, low_inclusive=False)
    _check_log_kernel(log_probs)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    out = sinkhorn_knopp(
        log_probs, max_iter=max_iter, tol=tol, dtype=dtype, chunk_size=chunk_size,
        init_log_v=init_log_v, scale=lam,
    )
    labels = torch.empty(log_probs.shape[0], dtype=torch.long, device=log_probs.device)
    for sl in Engine.chunks(log_probs.shape[0], chunk_size):
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
    chunk_size: int = _DEFAULT_CHUNK,
    out: torch.Tensor | None = None,
) -> SoftLabelResult:
    r"""Soft pseudo-labels minimising ``F(y) = mean_i H(sigma_i, y_i) + lam * KL(u || ybar)``.

    With the predictions ``sigma`` fixed, ``F`` is convex in ``y``. Both ``-ln`` terms are bounded by
    Jensen (majorise-minimise, i.e. EM): with :math:`S_{ik} = \sigma_{ik} y_{ik} / \sigma_i\cdot y_i`
    (collision CE; :math:`S = \sigma` for reverse CE) and :math:`T_{ik} = y_{ik} / \sum_j y_{jk}`,
    the surrogate is minimised in closed form by

    .. math:: y_{ik} \propto S_{ik} / N + \lambda\, T_{ik} / K,

    so every iteration does not increase ``F``. ``lam -> 0`` (collision) tends to the one-hot
    ``argmax sigma``; ``lam = 0`` returns it directly.

    Parameters
    ----------
    probs : (N, K) predictions ``sigma`` (rows on the simplex).
    lam : weight of the fairness term ``KL(u || mean y)`` (zero-avoiding: keeps every cluster).
    loss : ``"collision"`` (``-ln sigma . y``) or ``"reverse"`` (``-sum_k sigma_k ln y_k``).
    max_iter, tol : stop when ``F`` decreases by less than ``tol``.
    init : starting ``y`` (default ``sigma``, floored away from zero).
    out : optional (N, K) buffer to write ``y`` into (saves one N x K allocation).
    """
    _check_log_kernel(probs)
    lam = check_scalar(lam, "lam", low=0.0)
    check_option(loss, "loss", ("collision", "reverse"))
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_scalar(tol, "tol", low=0.0)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    n, k = probs.shape
    dt = probs.dtype
    tiny = torch.finfo(dt).tiny * 1e6
    y = out if out is not None else torch.empty_like(probs)
    if lam == 0.0 and loss == "collision":
        for sl in Engine.chunks(n, chunk_size):
            y[sl] = torch.nn.functional.one_hot(probs[sl].argmax(1), k).to(dt)
        return SoftLabelResult(y, [soft_label_objective(probs, y, 0.0, loss, chunk_size)], 0, True)
    col = torch.zeros(k, dtype=torch.float64, device=probs.device)
    for sl in Engine.chunks(n, chunk_size):
        src = probs[sl] if init is None else init[sl].to(dt)
        y[sl] = src.clamp_min(1e-6)
        y[sl] /= y[sl].sum(1, keepdim=True)
        col += y[sl].sum(0, dtype=torch.float64)
    history: list[float] = []
    converged = False
    a, b = 1.0 / n, lam / k
    for _ in range(max_iter):
        inv_col = (1.0 / col).to(dt)
        fair = -math.log(k) - float((col / n).log().mean())
        new_col = torch.zeros_like(col)
        data = 0.0
        for sl in Engine.chunks(n, chunk_size):
            p, q = probs[sl], y[sl]
            if loss == "collision":
                s = p * q
                rs = s.sum(1, keepdim=True).clamp_min(tiny)
                data += float(-rs.log().sum(dtype=torch.float64))
                s /= rs
            else:
                data += float(-(p * q.clamp_min(tiny).log()).sum(dtype=torch.float64))
                s = p.clone()
            # y_new = S/N + lam T/K, T = y / colsum (Jensen weights of -ln ybar_k), row-normalised
            s.mul_(a).add_(q * inv_col, alpha=b)
            s /= s.sum(1, keepdim=True)
            y[sl] = s
            new_col += s.sum(0, dtype=torch.float64)
        history.append(data / n + lam * fair)
        col = new_col
        if len(history) > 1 and history[-2] - history[-1] < tol:
            converged = True
            break
    return SoftLabelResult(y, history, len(history), converged)
