"""Training steps and chunked evaluation for DTI clustering, run by :class:`~.engine.Engine`.

One engine iteration is one mini-batch: :func:`make_gradient_step` is the one mini-batch loop of
:func:`~.neural.minibatch_step` with the model's loss, which also counts the batch's assignments.
:func:`make_activation_step` switches a transformation module on (the curriculum, scheduled with
``Step.start``) and :func:`make_reassign_step` replaces starved clusters by a noisy copy of the
largest one, heads and Adam moments included (Monnier et al. 2020, Sec. 3.3).
:func:`make_schedule` puts the three together.

The state dict holds ``net`` (the ``DTINetwork``), ``optimizer``, ``X`` (N, C, H, W) on the device,
``order`` / ``cursor`` (the current shuffled pass), ``counts`` (assignments since the last check)
and ``n_reassigned``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..models.dti import DTINetwork, gmm_loss, kmeans_loss
from .engine import Engine, Step
from .neural import minibatch_step

LossFn = Callable[[Any, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def make_gradient_step(
    engine: Engine, loss_fn: LossFn, n: int, batch_size: int
) -> Callable[[dict, int], float]:
    """``loss_fn(net, x) -> (loss, assignments (B,))``; one Adam step on the next batch of
    ``range(n)``, which returns the batch loss and adds the assignments to ``state["counts"]``."""

    def batch_loss(state: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        loss, assign = loss_fn(state["net"], state["X"][idx])
        counts = state["counts"]
        counts += torch.bincount(assign.detach(), minlength=counts.numel()).to(counts.dtype)
        return loss

    return minibatch_step(engine, n, batch_size, batch_loss, module_key="net")


def make_activation_step(index: int) -> Callable[[dict, int], None]:
    """Switch transformation module ``index`` on (its heads start at the identity)."""

    def step(state: dict[str, Any], iteration: int) -> None:
        state["net"].active[index] = True

    return step


def reassign_clusters(
    state: dict[str, Any], threshold: float, noise: float, generator: torch.Generator
) -> list[int]:
    """Replace every cluster with fewer than ``threshold * total`` assignments; returns their ids.

    The replacement copies the largest cluster's prototype (plus Gaussian noise of std ``noise``),
    every per-cluster parameter (heads, variances) and the Adam moments of those slices; for a GMM
    the mixing mass of the largest cluster is split between the two.
    """
    net, opt, counts = state["net"], state["optimizer"], state["counts"]
    total = float(counts.sum())
    if total <= 0:
        return []
    starved = [int(j) for j in torch.nonzero(counts < threshold * total).flatten()]
    moved = []
    for j in starved:
        i = int(torch.argmax(counts))
        if i == j:
            continue
        with torch.no_grad():
            for p in net.cluster_parameters():
                p[j] = p[i]
                for key in ("exp_avg", "exp_avg_sq"):
                    buf = opt.state.get(p, {}).get(key)
                    if buf is not None:
                        buf[j] = buf[i]
            eps = torch.randn(net.prototypes[j].shape, generator=generator).to(net.prototypes)
            net.prototypes[j] += noise * eps
            if getattr(net, "mix_logits", None) is not None:
                half = net.mix_logits[i] - torch.log(torch.tensor(2.0)).to(net.mix_logits)
                net.mix_logits[i] = half
                net.mix_logits[j] = half
        counts[j] = counts[i] / 2
        counts[i] = counts[i] / 2
        moved.append(j)
    return moved


def make_reassign_step(threshold: float, noise: float, engine: Engine) -> Callable[[dict, int], None]:
    """Check assignment counts accumulated since the last check, reassign, reset the counts."""

    def step(state: dict[str, Any], iteration: int) -> None:
        moved = reassign_clusters(state, threshold, noise, engine.generator)
        state["n_reassigned"] += len(moved)
        state["counts"].zero_()

    return step


def make_schedule(
    engine: Engine,
    *,
    n: int,
    batch_size: int,
    names: Sequence[str],
    starts: Sequence[int],
    n_clusters: int,
    gmm: bool,
    empty_threshold: float,
    reassign_every: int,
    reassign_noise: float,
) -> list[Step]:
    """Module ``names[i]`` switched on at iteration ``starts[i]``, the gradient step on mini-batches
    of ``range(n)``, and (when ``empty_threshold > 0``) every ``reassign_every`` iterations the
    reassignment of clusters with fewer than ``empty_threshold / n_clusters`` of the assignments."""
    once = engine.max_iter + 1
    schedule = [
        Step(f"activate_{name}", make_activation_step(i), every=once, start=s)
        for i, (name, s) in enumerate(zip(names, starts, strict=True))
    ]
    loss_fn = gmm_loss if gmm else kmeans_loss
    schedule.append(Step("gradient", make_gradient_step(engine, loss_fn, n, batch_size)))
    if empty_threshold > 0:
        threshold = empty_threshold / n_clusters
        schedule.append(
            Step("reassign", make_reassign_step(threshold, reassign_noise, engine),
                 every=reassign_every, start=reassign_every - 1)
        )
    return schedule


def per_cluster(net: DTINetwork, X: torch.Tensor, what: str, chunk_size: int) -> torch.Tensor:
    """``net`` on ``X`` (N, C, H, W) in chunks, without gradients: ``"cost"`` (N, K) per-pixel mean
    squared errors, ``"logp"`` (N, K) joint log densities, ``"recon"`` (N, K, C, H, W)."""
    outs = []
    with torch.no_grad():
        for sl in Engine.chunks(X.shape[0], chunk_size):
            x = X[sl]
            recon = net.reconstruct(x)
            if what == "cost":
                outs.append(net.kmeans_cost(x, recon[0]))
            elif what == "logp":
                outs.append(net.gmm_log_prob(x, recon))
            else:
                outs.append(recon[0])
    return torch.cat(outs)


def full_loss(net: DTINetwork, X: torch.Tensor, chunk_size: int) -> float:
    """The training objective on all of ``X`` (lower is better): mean per-pixel squared error of
    the best cluster, or for a GMM the negative mean log-likelihood per image."""
    if net.gmm:
        return -float(torch.logsumexp(per_cluster(net, X, "logp", chunk_size), 1).mean())
    return float(per_cluster(net, X, "cost", chunk_size).min(1).values.mean())
