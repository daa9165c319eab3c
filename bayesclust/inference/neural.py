"""The one optimiser / mini-batch loop for torch modules, as engine Step functions.

- :func:`optimizer_step`: zero the gradients, back-propagate a loss, step the optimiser.
- :func:`epoch_step`: one engine iteration = one shuffled pass over ``range(n)`` in mini-batches
  (discriminative heads, the deep DP route, mini-batch SVI).
- :func:`minibatch_step`: one engine iteration = one mini-batch, drawn from a shuffled order that
  is renewed when it runs out (DTI, whose curriculum counts gradient steps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .distributed import average_gradients
from .engine import Engine
from .streaming import reduce_statistics

__all__ = ["epoch_step", "evaluate_rows", "minibatch_step", "next_batch", "optimizer_step"]

ROWS = 256  # rows per block when a net is evaluated on a whole data set (its hidden layer stays in cache)

BatchLoss = Callable[[dict[str, Any], torch.Tensor], torch.Tensor]


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One gradient update on the scalar ``loss``; returns its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # a distributed fit: every rank steps with the gradient averaged over ranks (as DDP does)
    average_gradients(p for group in optimizer.param_groups for p in group["params"])
    optimizer.step()
    return float(loss.detach())


def evaluate_rows(
    net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int = ROWS
) -> torch.Tensor:
    """``net(x)`` without gradients, ``rows`` rows at a time: a (n, K H) hidden layer of a whole data
    set goes to main memory and back, a block's stays in cache (several times faster on a CPU)."""
    with torch.no_grad():
        return torch.cat([net(x[start : start + rows]) for start in range(0, x.shape[0], rows)])


def _set_train(state: dict[str, Any], keys: Iterable[str], mode: bool) -> None:
    for key in keys:
        state[key].train(mode)


def epoch_step(
    engine: Engine,
    n: int,
    batch_size: int | None,
    batch_loss: BatchLoss,
    *,
    module_key: str | Iterable[str] = "model",
    optimizer_key: str = "optimizer",
    shuffle: bool = True,
) -> Callable[[dict[str, Any], int], float]:
    """A ``Step`` function: one pass over ``range(n)`` in (shuffled) batches of ``batch_size``.

    ``batch_loss(state, idx)`` returns the scalar loss of the batch of indices ``idx`` (B,); the step
    updates ``state[optimizer_key]`` on each batch and returns the mean loss per sample. Modules in
    ``module_key`` are in train mode during the pass and in eval mode after it.
    """
    keys = (module_key,) if isinstance(module_key, str) else tuple(module_key)

    def fn(state: dict[str, Any], iteration: int) -> float:
        _set_train(state, keys, True)
        opt = state[optimizer_key]
        total, count = 0.0, 0
        for idx in engine.batches(n, batch_size, shuffle=shuffle):
            total += optimizer_step(opt, batch_loss(state, idx)) * idx.numel()
            count += idx.numel()
        _set_train(state, keys, False)
        # the mean over every process's points, so every rank sees the same objective (convergence)
        total, count = reduce_statistics(torch.tensor([total, float(count)], dtype=torch.float64)).tolist()
        return total / max(count, 1)

    return fn


def next_batch(state: dict[str, Any], engine: Engine, n: int, batch_size: int) -> torch.Tensor:
    """The next ``batch_size`` indices of a shuffled order kept in ``state`` ("order", "cursor")."""
    if state.get("order") is None or state.get("cursor", 0) >= n:
        state["order"], state["cursor"] = engine.randperm(n), 0
    start = state["cursor"]
    state["cursor"] = start + batch_size
    return state["order"][start : start + batch_size]


def minibatch_step(
    engine: Engine,
    n: int,
    batch_size: int,
    batch_loss: BatchLoss,
    *,
    module_key: str = "model",
    optimizer_key: str = "optimizer",
) -> Callable[[dict[str, Any], int], float]:
    """A ``Step`` function: one gradient update on the next mini-batch; returns its loss."""

    def fn(state: dict[str, Any], iteration: int) -> float:
        state[module_key].train()
        idx = next_batch(state, engine, n, batch_size)
        return optimizer_step(state[optimizer_key], batch_loss(state, idx))

    return fn
