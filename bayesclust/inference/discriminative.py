"""Training a softmax clustering head: pseudo-label steps and epochs as engine Steps.

The estimator builds the head and its optimiser; :func:`initial_state` and :func:`build_schedule`
give one restart's state and schedule. The loss comes from ``losses.CLUSTERING_LOSSES``; its
``pseudo_labels`` names the solver of its targets:

* ``"em_collision"``, ``"em_reverse"`` (:func:`softlabels.em_soft_labels`) and ``"sela"``
  (:func:`sinkhorn.sela_labels`) solve on the predictions for the whole data, in a
  ``"pseudo_labels"`` Step before the epoch (from epoch ``warmup`` on), warm-started from the
  previous step's labels (EM) or column potential (SeLa);
* ``"swav"`` (:func:`sinkhorn.swav_codes`) solves per mini-batch, inside the batch loss.

State keys: ``"model"``, ``"optimizer"``, ``"y"`` (N, K) pseudo-labels (None before the first
step), ``"probs"`` (N, K) prediction buffer (None until needed; ``"probs_ready"`` when the last
epoch filled every row), ``"log_v"`` (K,) SeLa's column potential.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .. import losses as L
from ..models.heads import augment, frozen_batchnorm_stats, vat_view
from .engine import Engine, Step
from .neural import epoch_step
from .sinkhorn import sela_labels, swav_codes
from .softlabels import em_soft_labels, one_hot_into

__all__ = [
    "BATCH_CODES",
    "EPOCH_PREDICTIONS_FROM",
    "LABEL_SOLVERS",
    "TrainConfig",
    "augmentation_loss",
    "batch_loss",
    "build_schedule",
    "initial_state",
    "mutual_information",
    "neighbor_loss",
    "predict_logits",
    "prediction_buffer",
    "prediction_source",
    "predictions_into",
    "pseudo_label_step",
]

EPOCH_PREDICTIONS_FROM = 100_000  # label_predictions="auto": reuse the epoch's predictions from here
_CHUNK = 4096  # rows per forward pass of a prediction pass


@dataclass(frozen=True)
class TrainConfig:
    """What one fit trains (see ``EntropyClustering`` for each parameter)."""

    loss: str
    weights: L.LossWeights
    aug_weight: float = 0.0
    augmentation: str = "random"
    vat_eps: float = 1.0
    em_iter: int = 20
    label_predictions: str = "auto"
    warmup: int = 0
    sela_lambda: float = 25.0
    swav_epsilon: float = 0.05
    batch_size: int | None = 256


# ---------------------------------------------------------------------------- predictions
def predict_logits(module: nn.Module, x: torch.Tensor, chunk: int = _CHUNK) -> torch.Tensor:
    """(N, K) logits of ``x`` (N, ...) in eval mode without gradient, chunk by chunk."""
    module.eval()
    with torch.no_grad():
        return torch.cat([module(x[s]) for s in Engine.chunks(x.shape[0], chunk)])


def predictions_into(
    module: nn.Module, x: torch.Tensor, out: torch.Tensor, log: bool, chunk: int = _CHUNK
) -> None:
    """Fill ``out`` (N, K) with softmax (``log``: log-softmax) predictions of ``x``, chunk by chunk."""
    module.eval()
    with torch.no_grad():
        for s in Engine.chunks(x.shape[0], chunk):
            z = module(x[s])
            out[s] = z.log_softmax(1) if log else z.softmax(1)


def mutual_information(logits: torch.Tensor) -> float:
    """Mutual information between the inputs and the clusters of (N, K) logits, ``-mi_loss``."""
    return -float(L.mi_loss(logits.double()))


def prediction_source(label_predictions: str, n: int) -> str:
    """``"fresh"`` or ``"epoch"``: ``"auto"`` is ``"epoch"`` from ``EPOCH_PREDICTIONS_FROM`` rows on."""
    if label_predictions == "auto":
        return "epoch" if n >= EPOCH_PREDICTIONS_FROM else "fresh"
    return label_predictions


# ---------------------------------------------------------------------------- pseudo-label solvers
def _em_solve(state: dict[str, Any], probs: torch.Tensor, cfg: TrainConfig, *, kind: str) -> None:
    """EM soft labels (N, K) into ``state["y"]``, warm-started from (and written over) the last ones."""
    state["y"] = em_soft_labels(
        probs, cfg.weights.lam, loss=kind, max_iter=cfg.em_iter, init=state["y"], out=state["y"]
    ).y


def _sela_solve(state: dict[str, Any], log_probs: torch.Tensor, cfg: TrainConfig) -> None:
    """SeLa hard labels, one-hot (N, K) into ``state["y"]``; kernel Sinkhorn on log sigma,
    warm-started from the last column potential."""
    labels, res = sela_labels(
        log_probs, cfg.sela_lambda, tol=1e-3, overwrite=False, init_log_v=state["log_v"]
    )
    state["log_v"] = res.log_v
    if state["y"] is None:
        state["y"] = torch.empty_like(log_probs)
    one_hot_into(state["y"], labels)


@dataclass(frozen=True)
class _Solver:
    """A whole-data pseudo-label solver: ``solve(state, predictions (N, K), cfg)`` sets
    ``state["y"]``; ``log_predictions``: it solves on log sigma rather than sigma."""

    solve: Callable[[dict[str, Any], torch.Tensor, TrainConfig], None]
    log_predictions: bool = False


LABEL_SOLVERS: dict[str, _Solver] = {
    "em_collision": _Solver(partial(_em_solve, kind="collision")),
    "em_reverse": _Solver(partial(_em_solve, kind="reverse")),
    "sela": _Solver(_sela_solve, log_predictions=True),
}
# per-batch solvers: (B, K) scores of one view -> (B, K) codes
BATCH_CODES: dict[str, Callable[[torch.Tensor, TrainConfig], torch.Tensor]] = {
    "swav": lambda z, cfg: swav_codes(z, cfg.swav_epsilon),
}


# ---------------------------------------------------------------------------- one restart
@dataclass(frozen=True)
class _Context:
    """What a restart's steps share: data (N, ...), config, the loss and its solver, VAT radii."""

    x: torch.Tensor
    n_components: int
    cfg: TrainConfig
    loss: L.ClusteringLoss
    solver: _Solver | None
    radius: torch.Tensor | None  # (N,) per-sample VAT radius, or None for cfg.vat_eps
    neighbors: torch.Tensor | None  # (N, k) indices of each row's nearest neighbours, or None
    generator: torch.Generator
    keep_epoch: bool  # keep the epoch's clean-view predictions for the next pseudo-label step
    dtype: torch.dtype
    device: torch.device


def prediction_buffer(state: dict[str, Any], ctx: _Context) -> torch.Tensor:
    """The (N, K) prediction buffer, allocated when first needed (a new buffer is not "ready")."""
    if state["probs"] is None:
        state["probs"] = torch.empty(ctx.x.shape[0], ctx.n_components, dtype=ctx.dtype, device=ctx.device)
        state["probs_ready"] = False
    return state["probs"]


def augmentation_loss(
    module: nn.Module,
    z: torch.Tensor,
    xb: torch.Tensor,
    eps: float | torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """``aug_weight`` x the symmetric KL between the batch's logits ``z`` (B, K) and those of its
    second view(s) of ``xb`` (B, ...): VAT of radius ``eps`` (scalar or (B,)) and / or random (the
    neighbour view is :func:`neighbor_loss`)."""
    out = z.new_zeros(())
    if cfg.aug_weight == 0.0:
        return out
    if "vat" in cfg.augmentation:
        view = vat_view(module, xb, z, eps, generator=generator)
        with frozen_batchnorm_stats(module):  # running statistics from clean inputs only
            za = module(view)
        out = out + L.self_augmentation_loss(z.detach(), za)
    if "random" in cfg.augmentation:
        out = out + L.self_augmentation_loss(z, module(augment(xb, generator)))
    return cfg.aug_weight * out


def neighbor_loss(module: nn.Module, z: torch.Tensor, idx: torch.Tensor, ctx: _Context) -> torch.Tensor:
    """``aug_weight`` x SCAN's consistency ``-log <sigma(z_i), sigma(z_j)>`` (Van Gansbeke et al. 2020,
    eq. 2: the collision cross-entropy of the two predictions), j a random one of the nearest
    neighbours of each row i of the batch ``idx`` (B,), ``z`` (B, K) its logits."""
    if ctx.neighbors is None or ctx.cfg.aug_weight == 0.0:
        return z.new_zeros(())
    nb = ctx.neighbors[idx]  # (B, k)
    pick = torch.randint(nb.shape[1], (nb.shape[0],), generator=ctx.generator, device=ctx.generator.device)
    zj = module(ctx.x[nb[torch.arange(nb.shape[0], device=nb.device), pick.to(nb.device)]])
    return ctx.cfg.aug_weight * L.collision_cross_entropy(z, zj.log_softmax(-1), log_target=True)


def _two_view_loss(module: nn.Module, xb: torch.Tensor, ctx: _Context) -> torch.Tensor:
    """The batch loss of a per-batch solver: two random views, each one's codes the other's target."""
    codes = BATCH_CODES[ctx.loss.pseudo_labels]
    z1, z2 = module(augment(xb, ctx.generator)), module(augment(xb, ctx.generator))
    return ctx.loss.batch_loss((z1, z2), (codes(z1, ctx.cfg), codes(z2, ctx.cfg)), ctx.cfg.weights)


def batch_loss(state: dict[str, Any], idx: torch.Tensor, ctx: _Context) -> torch.Tensor:
    """The scalar training loss of the rows ``idx`` (B,): the clustering loss plus augmentation."""
    module, xb = state["model"], ctx.x[idx]
    if ctx.loss.pseudo_labels in BATCH_CODES:
        return _two_view_loss(module, xb, ctx)
    z = module(xb)
    if ctx.keep_epoch:  # this epoch's clean-view predictions, for the next pseudo-label step
        with torch.no_grad():
            zd = z.detach()
            state["probs"][idx] = zd.log_softmax(1) if ctx.solver.log_predictions else zd.softmax(1)
    if ctx.solver is not None and state["y"] is None:  # warm-up: MI until the first labels
        base = L.CLUSTERING_LOSSES["mi"].batch_loss(z, None, ctx.cfg.weights)
    else:
        targets = None if state["y"] is None else state["y"][idx]
        base = ctx.loss.batch_loss(z, targets, ctx.cfg.weights)
    eps = ctx.cfg.vat_eps if ctx.radius is None else ctx.radius[idx]
    views = augmentation_loss(module, z, xb, eps, ctx.cfg, ctx.generator)
    return base + views + neighbor_loss(module, z, idx, ctx)


def pseudo_label_step(state: dict[str, Any], iteration: int, ctx: _Context) -> None:
    """Solve the pseudo-labels ``state["y"]`` (N, K) on the predictions for the whole data."""
    assert ctx.solver is not None
    probs = prediction_buffer(state, ctx)
    if not state["probs_ready"]:  # fresh predictions (or no complete epoch kept yet)
        predictions_into(state["model"], ctx.x, probs, log=ctx.solver.log_predictions)
    ctx.solver.solve(state, probs, ctx.cfg)


def _neural_epoch(
    state: dict[str, Any], iteration: int, epoch: Callable[[dict[str, Any], int], float], ctx: _Context
) -> float:
    """One epoch; afterwards the prediction buffer is "ready" when the epoch filled every row."""
    if ctx.keep_epoch:
        prediction_buffer(state, ctx)
    out = epoch(state, iteration)
    state["probs_ready"] = ctx.keep_epoch
    return out


def initial_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A restart's engine state before its first step."""
    return {"model": module, "optimizer": optimizer, "y": None, "probs": None, "probs_ready": False,
            "log_v": None}


def build_schedule(
    engine: Engine,
    x: torch.Tensor,
    n_components: int,
    cfg: TrainConfig,
    radius: torch.Tensor | None = None,
    neighbors: torch.Tensor | None = None,
) -> list[Step]:
    """The steps of one restart on ``x`` (N, ...): ``"pseudo_labels"`` (whole-data solvers, from
    epoch ``cfg.warmup`` on) then ``"neural"`` (one epoch, the objective: mean batch loss)."""
    loss = L.CLUSTERING_LOSSES[cfg.loss]
    name = loss.pseudo_labels
    if name is not None and name not in LABEL_SOLVERS and name not in BATCH_CODES:
        raise ValueError(
            f"loss {cfg.loss!r} asks for pseudo_labels={name!r}; known solvers are "
            f"{sorted([*LABEL_SOLVERS, *BATCH_CODES])}."
        )
    solver = LABEL_SOLVERS.get(name) if name is not None else None
    keep = solver is not None and prediction_source(cfg.label_predictions, x.shape[0]) == "epoch"
    ctx = _Context(x, n_components, cfg, loss, solver, radius, neighbors, engine.generator, keep,
                   engine.dtype, engine.device)
    steps = []
    if solver is not None:
        steps.append(Step("pseudo_labels", partial(pseudo_label_step, ctx=ctx), start=int(cfg.warmup)))
    epoch = epoch_step(engine, x.shape[0], cfg.batch_size, partial(batch_loss, ctx=ctx))
    steps.append(Step("neural", partial(_neural_epoch, epoch=epoch, ctx=ctx)))
    return steps
