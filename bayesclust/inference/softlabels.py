"""Soft pseudo-labels by EM (majorise-minimise) with the network's predictions held fixed.

:func:`em_soft_labels` finds soft labels ``y`` (N, K) minimising
``mean_i H(sigma_i, y_i) + lambda * KL(u || mean_i y_i)`` with ``H`` the collision CE
``-ln(sigma . y)`` or the reverse CE ``-sum_k sigma_k ln y_k`` (Zhang & Boykov 2023); an iteration
runs either as chunked torch ops (any device) or as one compiled pass per row
(``inference/_em_kernels.py``, Numba, CPU). :func:`soft_label_objective` evaluates the objective,
:func:`one_hot_into` writes hard labels into an (N, K) buffer. Memory beyond the inputs is O(chunk x K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import torch

from .._validation import check_option, check_positive_int, check_scalar
from .engine import Engine
from .sinkhorn import _CACHE_ELEMS, _DEFAULT_CHUNK, _check_matrix

__all__ = ["SoftLabelResult", "em_soft_labels", "one_hot_into", "soft_label_objective"]

_EM_LOSSES = ("collision", "reverse")
_BACKENDS = ("auto", "fused", "torch")


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
    r"""``mean_i H(sigma_i, y_i) + lam * KL(u || mean_i y_i)`` for ``loss`` collision or reverse CE.

    ``probs`` (N, K) are the predictions ``sigma``, ``y`` (N, K) the soft labels; computed in float64.
    """
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


def one_hot_into(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Write the one-hot rows of ``labels`` (N,) into ``out`` (N, K) in place (no int64 N x K temporary)."""
    out.zero_().scatter_(1, labels.view(-1, 1), 1.0)
    return out


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
    init : (N, K) starting ``y`` (default ``sigma``), floored at 1e-6 and renormalised.
    chunk_size : rows per chunk (default: ~1 MiB chunks).
    out : optional (N, K) buffer to write ``y`` into (may be ``init`` itself: saves an N x K buffer).
    backend : ``"fused"`` (compiled one-pass iterations, ``inference/_em_kernels.py``: CPU tensors,
        contiguous, float32/float64), ``"torch"`` (chunked torch ops, any device) or ``"auto"``
        (fused where it applies).
    """
    lam, max_iter, tol, chunk_size = _check_em_args(
        probs, lam, loss, max_iter, tol, init, chunk_size, out, backend
    )
    y = out if out is not None else torch.empty_like(probs)
    fused = _em_kernels_for(backend, probs, y, init)
    if lam == 0.0 and loss == "collision":
        one_hot_into(y, probs.argmax(1))
        return SoftLabelResult(y, [soft_label_objective(probs, y, 0.0, loss, chunk_size)], 0, True)
    col = _init_labels(probs, y, init, fused, chunk_size)
    return _em_iterations(probs, y, col, lam, loss, max_iter, tol, chunk_size, fused)


def _em_iterations(
    probs: torch.Tensor,
    y: torch.Tensor,
    col: torch.Tensor,
    lam: float,
    loss: str,
    max_iter: int,
    tol: float,
    chunk_size: int,
    fused: ModuleType | None,
) -> SoftLabelResult:
    """EM iterations in place on ``y`` (N, K) from its float64 column sums ``col`` (K,)."""
    n, k = probs.shape
    tiny = torch.finfo(probs.dtype).tiny * 1e6
    history: list[float] = []
    converged = False
    for _ in range(max_iter):
        b = (lam / k / col).to(probs.dtype)  # b_k = lam / (K colsum_k): Jensen weight of -ln ybar_k
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


def _check_em_args(
    probs: torch.Tensor,
    lam: float,
    loss: str,
    max_iter: int,
    tol: float,
    init: torch.Tensor | None,
    chunk_size: int | None,
    out: torch.Tensor | None,
    backend: str,
) -> tuple[float, int, float, int]:
    """Validate :func:`em_soft_labels`' arguments; returns ``(lam, max_iter, tol, chunk_size)``."""
    _check_matrix(probs, "probs", "predictions")
    lam = check_scalar(lam, "lam", low=0.0)
    check_option(loss, "loss", _EM_LOSSES)
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_scalar(tol, "tol", low=0.0)
    k = probs.shape[1]
    chunk_size = check_positive_int(
        max(1, _CACHE_ELEMS // k) if chunk_size is None else chunk_size, "chunk_size"
    )
    if init is not None and init.shape != probs.shape:
        raise ValueError(f"init has shape {tuple(init.shape)}; it must match probs {tuple(probs.shape)}.")
    if out is not None and (out.shape != probs.shape or out.dtype != probs.dtype):
        raise ValueError(f"out must be a {probs.dtype} tensor of shape {tuple(probs.shape)}.")
    check_option(backend, "backend", _BACKENDS)
    return lam, max_iter, tol, chunk_size


def _init_labels(
    probs: torch.Tensor,
    y: torch.Tensor,
    init: torch.Tensor | None,
    fused: ModuleType | None,
    chunk_size: int,
) -> torch.Tensor:
    """``y = max(init or sigma, 1e-6)`` row-normalised, in place; returns its float64 column sums (K,)."""
    if fused is not None:
        return fused.init_labels(probs if init is None else init, y, 1e-6)
    col = torch.zeros(probs.shape[1], dtype=torch.float64, device=probs.device)
    for sl in Engine.chunks(probs.shape[0], chunk_size):
        src = probs[sl] if init is None else init[sl].to(probs.dtype)
        q = src.clamp_min(1e-6)
        q /= q.sum(1, keepdim=True)
        y[sl] = q
        col += q.sum(0).double()
    return col


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


def _em_kernels_for(
    backend: str, probs: torch.Tensor, y: torch.Tensor, init: torch.Tensor | None
) -> ModuleType | None:
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
