"""The gradient step for torch modules: one epoch of mini-batch updates, as an engine Step function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .engine import Engine

__all__ = ["neural_step"]


def neural_step(
    engine: Engine,
    n: int,
    batch_size: int | None,
    batch_loss: Callable[[dict[str, Any], torch.Tensor], torch.Tensor],
    *,
    module_key: str = "model",
    optimizer_key: str = "optimizer",
) -> Callable[[dict[str, Any], int], float]:
    """A ``Step`` function: one pass over ``range(n)`` in shuffled batches.

    ``batch_loss(state, idx)`` returns the scalar loss of the batch of indices ``idx``; the step
    zeroes gradients, back-propagates, steps ``state[optimizer_key]`` and returns the mean loss.
    """

    def fn(state: dict[str, Any], iteration: int) -> float:
        state[module_key].train()
        opt = state[optimizer_key]
        total, count = 0.0, 0
        for idx in engine.batches(n, batch_size):
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(state, idx)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        state[module_key].eval()
        return total / max(count, 1)

    return fn
