"""Entropy losses for discriminative (softmax) clustering, computed in log space.

Every function takes **logits** ``z`` of shape ``(..., K)`` (class dimension last; any leading batch
dimensions) and works with ``log sigma = log_softmax(z)``, never with ``log(softmax(z))``, so no
loss under- or overflows for confident predictions. Targets ``y`` are either probability vectors of
the same shape as the logits or integer class labels of shape ``(...)``.

``reduction`` is ``"mean"`` (over all leading dimensions), ``"sum"`` or ``"none"``.

:data:`CLUSTERING_LOSSES` names the losses ``EntropyClustering(loss=...)`` trains with: for each, how
its batch loss is computed and which pseudo-label solver (if any) feeds it its targets.

References: Bridle, Heading & MacKay (1991) for the MI loss; Krause, Perona & Gomes (2010) for
decisiveness/fairness; Zhang's Waterloo thesis (collision cross-entropy); Wang et al. (2019) for
reverse / symmetric CE; Hu et al. (2017, IMSAT) for self-augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "CLUSTERING_LOSSES",
    "ClusteringLoss",
    "LossWeights",
    "collision_cross_entropy",
    "cross_entropy",
    "decisiveness",
    "fairness",
    "log_mean_prediction",
    "mi_loss",
    "multi_view_swapped_loss",
    "nt_xent",
    "prototype_logits",
    "renyi_entropy",
    "reverse_cross_entropy",
    "self_augmentation_loss",
    "shannon_entropy",
    "swapped_prediction_loss",
]

_REDUCTIONS = ("mean", "sum", "none")
FAIRNESS_KINDS = ("entropy", "kl_uniform", "kl_reverse")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction={reduction!r} is not supported; choose one of {list(_REDUCTIONS)}.")


def _log_target(logits: torch.Tensor, target: torch.Tensor, log_target: bool) -> torch.Tensor:
    """``log y`` with the shape of ``logits``; integer labels become one-hot (log 0 = -inf)."""
    if not target.is_floating_point():
        if target.shape != logits.shape[:-1]:
            raise ValueError(
                f"integer target has shape {tuple(target.shape)} but logits have batch shape "
                f"{tuple(logits.shape[:-1])}; pass one label per row."
            )
        k = logits.shape[-1]
        if bool((target < 0).any()) or bool((target >= k).any()):
            raise ValueError(f"integer target must lie in [0, {k - 1}] for K={k} classes.")
        oh = F.one_hot(target.long(), k).to(logits.dtype)
        return torch.log(oh)
    if target.shape != logits.shape:
        raise ValueError(
            f"target has shape {tuple(target.shape)} but logits have shape {tuple(logits.shape)}; "
            "pass soft targets of the same shape (or integer labels)."
        )
    target = target.to(logits.dtype)
    return target if log_target else torch.log(target)


def shannon_entropy(logits: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    r"""Shannon entropy of each prediction, :math:`H(\sigma) = -\sum_k \sigma_k \ln \sigma_k`."""
    log_p = logits.log_softmax(-1)
    return _reduce(-(log_p.exp() * log_p).sum(-1), reduction)


def renyi_entropy(logits: torch.Tensor, alpha: float = 2.0, reduction: str = "none") -> torch.Tensor:
    r"""Renyi entropy of order ``alpha > 0`` of each prediction.

    :math:`H_\alpha(\sigma) = \frac{1}{1-\alpha} \ln \sum_k \sigma_k^\alpha
    = \frac{1}{1-\alpha}\,\mathrm{logsumexp}_k(\alpha \ln \sigma_k)`;
    ``alpha = 2`` is the collision entropy :math:`-\ln \sum_k \sigma_k^2`, ``alpha -> 1`` the Shannon
    entropy (used exactly at ``alpha == 1``).
    """
    alpha = float(alpha)
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}.")
    if alpha == 1.0:
        return shannon_entropy(logits, reduction)
    log_p = logits.log_softmax(-1)
    return _reduce(torch.logsumexp(alpha * log_p, -1) / (1.0 - alpha), reduction)


def decisiveness(logits: torch.Tensor, alpha: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    r"""Decisiveness term: the (mean) Renyi entropy of order ``alpha`` of the predictions.

    :math:`\frac1N \sum_i H_\alpha(\sigma_i)`; small when every prediction is confident.
    ``alpha = 1`` (default) is Shannon, ``alpha = 2`` the collision entropy.
    """
    return _reduce(renyi_entropy(logits, alpha), reduction)


def log_mean_prediction(logits: torch.Tensor) -> torch.Tensor:
    r"""Log of the mean prediction over all leading dimensions, shape ``(K,)``.

    :math:`\ln \bar\sigma_k = \mathrm{logsumexp}_i \ln\sigma_{ik} - \ln N`.
    """
    log_p = logits.log_softmax(-1).reshape(-1, logits.shape[-1])
    return torch.logsumexp(log_p, 0) - math.log(log_p.shape[0])


def fairness(
    logits: torch.Tensor, kind: str = "entropy", log_mean: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Fairness (balance) term on the mean prediction :math:`\bar\sigma`.

    * ``"entropy"``: :math:`-H(\bar\sigma) = \sum_k \bar\sigma_k \ln \bar\sigma_k`;
    * ``"kl_uniform"``: :math:`KL(\bar\sigma \| u) = \ln K - H(\bar\sigma)` (same minimiser, >= 0);
    * ``"kl_reverse"``: the zero-avoiding
      :math:`KL(u \| \bar\sigma) = -\ln K - \frac1K\sum_k \ln\bar\sigma_k`.

    ``log_mean`` (shape ``(K,)``) may be given instead of recomputing it from ``logits``.
    """
    if kind not in FAIRNESS_KINDS:
        raise ValueError(f"kind={kind!r} is not supported; choose one of {list(FAIRNESS_KINDS)}.")
    lm = log_mean_prediction(logits) if log_mean is None else log_mean
    k = lm.shape[-1]
    if kind == "entropy":
        return (lm.exp() * lm).sum(-1)
    if kind == "kl_uniform":
        return (lm.exp() * lm).sum(-1) + math.log(k)
    return -math.log(k) - lm.mean(-1)


def mi_loss(
    logits: torch.Tensor, weight: float = 1.0, alpha: float = 1.0, fairness_kind: str = "entropy"
) -> torch.Tensor:
    r"""Bridle's mutual-information loss (negative MI between input and cluster).

    :math:`L = \frac1N\sum_i H_\alpha(\sigma_i) - w\,H(\bar\sigma)`; with ``w = 1`` and
    ``alpha = 1`` this is :math:`-I(X; C)`. ``alpha != 1`` gives the Renyi decisiveness variant;
    ``fairness_kind`` swaps the :func:`fairness` term (``-H`` is ``"entropy"``).
    """
    return decisiveness(logits, alpha) + weight * fairness(logits, fairness_kind)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean", log_target: bool = False
) -> torch.Tensor:
    r"""Standard cross-entropy with soft targets, :math:`H(y, \sigma) = -\sum_k y_k \ln\sigma_k`."""
    log_p = logits.log_softmax(-1)
    log_y = _log_target(logits, target, log_target)
    # y ln sigma with 0 * ln(.) = 0 exactly (y may have zeros).
    y = log_y.exp()
    return _reduce(-(y * log_p).sum(-1), reduction)


def reverse_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    log_target: bool = False,
    min_log_target: float = -4.0,
) -> torch.Tensor:
    r"""Reverse cross-entropy :math:`H(\sigma, y) = -\sum_k \sigma_k \ln y_k`.

    ``ln y_k`` is floored at ``min_log_target`` (``ln 0`` would be ``-inf``; Wang et al. 2019 use
    ``A = -4``), so one-hot targets give the bounded loss ``-A (1 - \sigma_y)``.
    """
    log_p = logits.log_softmax(-1)
    log_y = _log_target(logits, target, log_target).clamp_min(float(min_log_target))
    return _reduce(-(log_p.exp() * log_y).sum(-1), reduction)


def collision_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean", log_target: bool = False
) -> torch.Tensor:
    r"""Collision cross-entropy :math:`H_C(\sigma, y) = -\ln \sum_k \sigma_k y_k`.

    Computed as :math:`-\mathrm{logsumexp}_k(\ln\sigma_k + \ln y_k)`: the negative log-probability
    that two independent draws from ``sigma`` and ``y`` collide. It equals standard CE for one-hot
    ``y``, is symmetric in ``(sigma, y)``, and a uniform ``y`` gives a constant (zero gradient).
    """
    log_p = logits.log_softmax(-1)
    log_y = _log_target(logits, target, log_target)
    return _reduce(-torch.logsumexp(log_p + log_y, -1), reduction)


def self_augmentation_loss(
    logits_a: torch.Tensor, logits_b: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    r"""Symmetric KL between the predictions for two views of the same inputs.

    :math:`\frac12[KL(\sigma^a \| \sigma^b) + KL(\sigma^b \| \sigma^a)]
    = \frac12 \sum_k (\sigma^a_k - \sigma^b_k)(\ln\sigma^a_k - \ln\sigma^b_k)`.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(
            f"the two views have logits of shapes {tuple(logits_a.shape)} and "
            f"{tuple(logits_b.shape)}; they must match."
        )
    la, lb = logits_a.log_softmax(-1), logits_b.log_softmax(-1)
    return _reduce(0.5 * ((la.exp() - lb.exp()) * (la - lb)).sum(-1), reduction)


def swapped_prediction_loss(
    logits: tuple[torch.Tensor, torch.Tensor], codes: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    r"""SwAV's swapped prediction: each view predicts the other's codes.

    ``logits = (z_1, z_2)`` and ``codes = (q_1, q_2)`` are (B, K) each;
    :math:`\frac12 [H(q_1, \sigma(z_2)) + H(q_2, \sigma(z_1))]` with :math:`H` the standard cross-entropy.
    """
    (z1, z2), (q1, q2) = logits, codes
    return 0.5 * (cross_entropy(z2, q1) + cross_entropy(z1, q2))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    r"""SimCLR's NT-Xent (Chen et al. 2020, eq. 1) over a batch of B positive pairs ``(z1_i, z2_i)``.

    ``z1``, ``z2`` (B, F) are L2-normalised here; with ``s_ij`` the cosine similarity of the 2B
    embeddings, each one's loss is :math:`-\log \frac{e^{s_{ip}/\tau}}{\sum_{j \ne i} e^{s_{ij}/\tau}}`
    with p its positive and the other 2B - 2 embeddings of the batch the negatives; the mean over 2B.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two (B, F) batches of the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, positive)


def prototype_logits(z: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV's scores: cosine similarities of embeddings ``z`` (B, F) to ``prototypes`` (K, F), both
    L2-normalised, divided by ``temperature``; (B, K) logits."""
    return F.normalize(z, dim=1) @ F.normalize(prototypes, dim=1).T / temperature


def multi_view_swapped_loss(logits: list[torch.Tensor], codes: list[torch.Tensor]) -> torch.Tensor:
    r"""SwAV's swapped prediction over V views (Caron et al. 2020, eq. 1 with multi-crop): each view
    with codes (the global views, ``len(codes)`` of them, first in ``logits``) is predicted by
    every other view; the mean of :math:`H(q_s, \sigma(z_t))` over those (s, t) pairs."""
    if not codes or len(logits) < 2 or len(codes) > len(logits):
        raise ValueError(f"swapped prediction needs >= 2 views and 1..{len(logits)} coded views, got "
                         f"{len(logits)} views and {len(codes)} codes.")
    terms = [cross_entropy(z, q) for s, q in enumerate(codes) for t, z in enumerate(logits) if t != s]
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class LossWeights:
    """The hyperparameters a clustering loss reads: fairness weight ``lam`` (also the weight of the
    EM pseudo-labels' fairness term), ``renyi_order`` and the ``fairness`` kind (:func:`fairness`)."""

    lam: float = 1.0
    renyi_order: float = 2.0
    fairness: str = "entropy"


BatchLoss = Callable[[Any, Any, LossWeights], torch.Tensor]


@dataclass(frozen=True)
class ClusteringLoss:
    """One clustering loss of :data:`CLUSTERING_LOSSES`.

    ``batch_loss(logits, targets, weights)`` is the scalar loss of a mini-batch: ``logits`` (B, K),
    ``targets`` the batch's (B, K) pseudo-labels (``None`` without ``pseudo_labels``). For a
    per-batch solver (``"swav"``) both are pairs, one per augmented view.

    ``pseudo_labels`` names the solver of the targets (``inference/discriminative.py`` runs it):
    ``None`` (trained directly), ``"em_collision"`` / ``"em_reverse"`` (EM soft labels for collision /
    reverse CE over the whole data), ``"sela"`` (Sinkhorn hard labels over the whole data) or
    ``"swav"`` (Sinkhorn codes of each mini-batch's two views). Until the first whole-data labels
    exist (``warmup``), the batch loss is that of ``"mi"``.
    """

    batch_loss: BatchLoss
    pseudo_labels: str | None = None


def _mi_batch(logits: torch.Tensor, targets: Any, w: LossWeights) -> torch.Tensor:
    return mi_loss(logits, w.lam, 1.0, w.fairness)


def _renyi_batch(logits: torch.Tensor, targets: Any, w: LossWeights) -> torch.Tensor:
    return mi_loss(logits, w.lam, w.renyi_order, w.fairness)


def _on_targets(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> BatchLoss:
    """A batch loss that compares the logits with the pseudo-labels only."""

    def batch(logits: Any, targets: Any, w: LossWeights) -> torch.Tensor:
        return fn(logits, targets)

    return batch


CLUSTERING_LOSSES: dict[str, ClusteringLoss] = {
    # Bridle's MI: mean H(sigma) - lam H(mean sigma) (with the chosen fairness term)
    "mi": ClusteringLoss(_mi_batch),
    # Renyi decisiveness of order renyi_order + lam * fairness
    "renyi": ClusteringLoss(_renyi_batch),
    # collision CE on EM soft labels
    "collision": ClusteringLoss(_on_targets(collision_cross_entropy), "em_collision"),
    # standard CE on SeLa's balanced hard labels
    "sela": ClusteringLoss(_on_targets(cross_entropy), "sela"),
    # swapped prediction of per-batch Sinkhorn codes
    "swav": ClusteringLoss(_on_targets(swapped_prediction_loss), "swav"),
    # standard CE on the collision EM soft labels
    "ce": ClusteringLoss(_on_targets(cross_entropy), "em_collision"),
    # reverse CE on EM soft labels solved for reverse CE
    "rce": ClusteringLoss(_on_targets(reverse_cross_entropy), "em_reverse"),
}
