"""Training steps for DTI clustering, run by :class:`bayesclust.inference.engine.Engine`.

One engine iteration is one mini-batch: :func:`make_gradient_step` draws the batch, computes the
assignments and the loss given by the model, and takes an Adam step. :func:`make_activation_step`
switches a transformation module on (the curriculum, scheduled with ``Step.start``) and
:func:`make_reassign_step` replaces starved clusters by a noisy copy of the largest one, heads and
Adam moments included (Monnier et al. 2020, Sec. 3.3).

The state dict holds ``net`` (the ``DTINetwork``), ``optimizer``, ``X`` (N, C, H, W) on the device,
``order`` / ``cursor`` (the current shuffled pass), ``counts`` (assignments since the last check)
and ``n_reassigned``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .engine import Engine

LossFn = Callable[[Any, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _next_batch(state: dict[str, Any], engine: Engine, batch_size: int) -> torch.Tensor:
    n = state["X"].shape[0]
    if state["cursor"] >= n or state["order"] is None:
        state["order"], state["cursor"] = engine.randperm(n), 0
    start = state["cursor"]
    state["cursor"] = start + batch_size
    return state["order"][start : start + batch_size]


def make_gradient_step(engine: Engine, loss_fn: LossFn, batch_size: int) -> Callable[[dict, int], float]:
    """``loss_fn(net, x) -> (loss, assignments (B,))``; the step returns the batch loss."""

    def step(state: dict[str, Any], iteration: int) -> float:
        idx = _next_batch(state, engine, batch_size)
        net, opt = state["net"], state["optimizer"]
        net.train()
        opt.zero_grad(set_to_none=True)
        loss, assign = loss_fn(net, state["X"][idx])
        loss.backward()
        opt.step()
        state["counts"] += torch.bincount(assign.detach(), minlength=state["counts"].numel()).to(
            state["counts"].dtype
        )
        return float(loss.detach())

    return step


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
