"""Training steps and chunked evaluation for DTI clustering, run by :class:`~.engine.Engine`.

One engine iteration is one mini-batch: :func:`make_gradient_step` is the one mini-batch loop of
:func:`~.neural.minibatch_step` with the model's loss, which also counts the batch's assignments.
:func:`make_activation_step` switches a transformation module on (the curriculum, scheduled with
``Step.start``) and :func:`make_reassign_step` replaces starved clusters by a noisy copy of the
largest one, heads and Adam moments included (Monnier et al. 2020, Sec. 3.3).
:func:`make_schedule` puts the three together, after :func:`sync_step` (a distributed fit: equal
shards, rank 0's network on every rank; the gradients are averaged in ``neural.optimizer_step`` and the
reassignment counts summed over ranks).

The state dict holds ``net`` (the ``DTINetwork``), ``optimizer``, ``X`` (N, C, H, W) on the device,
``order`` / ``cursor`` (the current shuffled pass), ``counts`` (assignments since the last check)
and ``n_reassigned``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..models.dti import DTINetwork, gmm_loss, kmeans_loss
from .distributed import broadcast_module, check_equal_shards
from .engine import Engine, Step
from .neural import minibatch_step
from .streaming import reduce_statistics

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


def sync_step(state: dict[str, Any], iteration: int) -> None:
    """A distributed fit (DistributedDataParallel's start): every rank holds the same number of
    images (the same batches, hence gradient all-reduces, and the same shared random stream) and
    starts from rank 0's network (prototypes initialised from rank 0's shard). Nothing in one process."""
    check_equal_shards(state["X"].shape[0])
    broadcast_module(state["net"])


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
        # the counts of every rank's batches: all ranks reassign the same clusters alike
        state["counts"].copy_(reduce_statistics(state["counts"]))
        moved = reassign_clusters(state, threshold, noise, engine.generator)
        state["n_reassigned"] += len(moved)
        state["counts"].zero_()

    return step


# ------------------------------------------------------------------ default run length (issue 18)
# Chosen on 2,000-image subsets of MNIST-train and USPS-train (benchmarks/results/defaults.md), not on
# the benchmark's USPS-test / MNIST-test.
TARGET_EPOCHS = 20  # passes over the data when N is large enough
MIN_STEPS, MAX_STEPS = 3000, 10000  # Adam steps per run: floor for small N, cap for large N
STAGE_FRACTION = 0.1  # module i switched on after (i + 1) stages of this share of the run (<= 0.5 / M)
# cluster-pixel-steps (K * C*H*W * steps * batch/64) for all runs together: set by time, not accuracy.
# One run of 7.7e6 (2,000 images 16 x 16, K = 10, 3,000 steps) took 1.3-2 min on one core of the 2-core
# VM (defaults.md), so 3e7 is about 5-8 minutes: three runs of such a set, one run of MNIST-test.
RESTART_BUDGET = 3.0e7
MAX_AUTO_RESTARTS = 3
REASSIGN_PER_CLUSTER = 100  # reassignment checks count at least this many assignments per cluster


def default_steps(n: int, batch_size: int) -> int:
    """Adam steps of one run: ``TARGET_EPOCHS`` passes, clipped to ``[MIN_STEPS, MAX_STEPS]``."""
    return min(MAX_STEPS, max(MIN_STEPS, TARGET_EPOCHS * -(-n // batch_size)))


def default_curriculum(max_iter: int, n_modules: int) -> list[int]:
    """Start iteration of each module: prototypes alone for the first stage, one module added per
    stage of ``STAGE_FRACTION`` of the run (shorter with more than 5 modules), so that all modules
    train together for at least the second half."""
    stage = min(STAGE_FRACTION, 0.5 / max(n_modules, 1))
    return [round((i + 1) * stage * max_iter) for i in range(n_modules)]


def default_n_init(max_iter: int, n_clusters: int, pixels: int, batch_size: int) -> int:
    """As many runs (1 to ``MAX_AUTO_RESTARTS``) as fit ``RESTART_BUDGET`` cluster-pixel-steps, the
    cost of one step growing with ``K * C*H*W * batch_size``."""
    per_run = max_iter * n_clusters * pixels * batch_size / 64
    return int(min(MAX_AUTO_RESTARTS, max(1, RESTART_BUDGET // per_run)))


def default_reassign_every(n: int, n_clusters: int, batch_size: int) -> int:
    """Iterations between reassignment checks: one epoch, but at least ``REASSIGN_PER_CLUSTER * K``
    assignments, so that the share of a cluster is measured on enough images."""
    return max(-(-n // batch_size), -(-REASSIGN_PER_CLUSTER * n_clusters // batch_size))


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
    schedule = [Step("sync", sync_step, every=once, start=0)]
    schedule += [
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
