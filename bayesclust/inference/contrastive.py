"""Training contrastive clustering (SwAV, CLOT) as engine Steps.

* ``"swav"`` (Caron et al. 2020): each mini-batch is seen through ``ViewSpec`` views (two global,
  optionally several small ones); the global views' codes are Sinkhorn plans of their prototype
  scores (:func:`sinkhorn.swav_codes`, optionally with a queue of earlier scores) and every view
  predicts the codes of the others (:func:`losses.multi_view_swapped_loss`).
* ``"clot"`` (contrastive learning driven, OT-based clustering): a ``"pseudo_labels"`` step solves
  equal-partition labels on the whole data, ``Q* = Diag(u) P^lambda Diag(v)`` by Sinkhorn
  (:func:`sinkhorn.sela_labels`), then the epoch trains the views' cluster softmax on them with
  cross-entropy plus ``contrastive_weight`` x NT-Xent between the two global views' projections.

State keys: ``"model"`` (:class:`~bayesclust.models.contrastive.ContrastiveNet`), ``"optimizer"``,
``"y"`` (N,) CLOT labels (None before the first step), ``"queue"`` (Q, K) SwAV's score queue or None,
``"log_v"`` the Sinkhorn column potential (warm start).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .. import losses as L
from ..models.views import ViewSpec, multi_crop
from .engine import Engine, Step
from .neural import epoch_step
from .sinkhorn import sela_labels, swav_codes

__all__ = ["ContrastiveConfig", "build_schedule", "embed", "initial_state", "predict_scores"]

METHODS = ("swav", "clot")
_CHUNK = 1024


@dataclass(frozen=True)
class ContrastiveConfig:
    """What one fit trains (see ``ContrastiveClustering`` for each parameter)."""

    method: str
    views: ViewSpec
    temperature: float = 0.1
    swav_epsilon: float = 0.05
    queue_length: int = 0
    sela_lambda: float = 25.0
    contrastive_weight: float = 1.0
    contrastive_temperature: float = 0.5
    batch_size: int = 256
    pseudo_labels: str = "ot"  # CLOT: "ot" (equal-partition Sinkhorn) or "argmax" (the ablation)


@torch.no_grad()
def _chunks(module: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
    was = module.training
    module.eval()
    out = torch.cat([module(x[s : s + _CHUNK])[index] for s in range(0, x.shape[0], _CHUNK)])
    module.train(was)
    return out


def predict_scores(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Prototype cosines (N, K) of the clean inputs x (N, ...), in eval mode, chunk by chunk."""
    return _chunks(module, x, 2)


def embed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Backbone features (N, F) of x (N, ...), in eval mode, chunk by chunk."""
    return _chunks(module, x, 0)


def _swav_loss(state: dict[str, Any], idx: torch.Tensor, x: torch.Tensor, cfg: ContrastiveConfig,
               gen: torch.Generator) -> torch.Tensor:
    net = state["model"]
    views = multi_crop(x[idx], cfg.views, gen)
    scores = [net(v)[2] for v in views]
    codes = []
    for s in scores[: cfg.views.n_global]:
        codes.append(swav_codes(s.detach(), cfg.swav_epsilon, queue=state["queue"]).to(s))
    if cfg.queue_length > 0:  # newest scores first; the queue only joins the transport problem
        new = torch.cat([s.detach() for s in scores[: cfg.views.n_global]])
        old = state["queue"] if state["queue"] is not None else new[:0]
        state["queue"] = torch.cat([new, old])[: cfg.queue_length]
    return L.multi_view_swapped_loss([s / cfg.temperature for s in scores], codes)


def _clot_loss(state: dict[str, Any], idx: torch.Tensor, x: torch.Tensor, cfg: ContrastiveConfig,
               gen: torch.Generator) -> torch.Tensor:
    net = state["model"]
    views = multi_crop(x[idx], cfg.views, gen)
    outs = [net(v) for v in views]
    y = state["y"][idx]
    ce = torch.stack([L.cross_entropy(o[2] / cfg.temperature, y) for o in outs]).mean()
    contrast = L.nt_xent(outs[0][1], outs[1][1], cfg.contrastive_temperature)
    return ce + cfg.contrastive_weight * contrast


def clot_label_step(state: dict[str, Any], iteration: int, x: torch.Tensor, cfg: ContrastiveConfig) -> None:
    """CLOT's OT step: equal-partition labels of the clean predictions (N,) into ``state["y"]``,
    the Sinkhorn warm-started from the last column potential."""
    log_p = (predict_scores(state["model"], x) / cfg.temperature).log_softmax(1)
    if cfg.pseudo_labels == "argmax":  # without OT: the network's own hard predictions
        state["y"] = log_p.argmax(1)
        return
    labels, res = sela_labels(log_p, cfg.sela_lambda, tol=1e-3, init_log_v=state["log_v"])
    state["y"], state["log_v"] = labels.to(x.device), res.log_v


def initial_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A restart's engine state before its first step."""
    return {"model": module, "optimizer": optimizer, "y": None, "queue": None, "log_v": None}


def build_schedule(engine: Engine, x: torch.Tensor, cfg: ContrastiveConfig) -> list[Step]:
    """The steps of one fit on x (N, C, H, W): CLOT's ``"pseudo_labels"`` then the ``"neural"`` epoch."""
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method!r} is not supported; choose one of {list(METHODS)}.")
    if cfg.views.n_global < 2:
        raise ValueError(
            f"{cfg.method} compares two global views; got views with n_global={cfg.views.n_global}."
        )
    loss = _swav_loss if cfg.method == "swav" else _clot_loss
    batch = partial(loss, x=x, cfg=cfg, gen=engine.generator)
    steps = []
    if cfg.method == "clot":
        steps.append(Step("pseudo_labels", partial(clot_label_step, x=x, cfg=cfg)))
    steps.append(Step("neural", epoch_step(engine, x.shape[0], cfg.batch_size, batch)))
    return steps
