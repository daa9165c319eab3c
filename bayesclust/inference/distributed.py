"""Fitting across processes and machines on ``torch.distributed``.

When a process group is initialised (``torchrun`` sets the environment, then
``torch.distributed.init_process_group``), every rank calls the usual ``fit`` on its own shard of the
data. :func:`fit_context` installs an all-reduce (sum over ranks) as the streaming seam's reduction
(``streaming.set_reduce``) for the duration of the fit, so every sum of sufficient statistics is the
sum over the whole data on every rank. The rest of this module is what a route needs besides that:
the global number of points, broadcasting rank 0's tensors (initial centres), averaging gradients
for neural modules, and ``is_main()`` for checkpoints and progress bars.

Every rank's engine is seeded with the same ``random_state``, so the CPU generators that draw the
K-sized decisions (split/merge accept/reject, Dirichlet weights) give identical draws on every rank;
per-point draws (labels of the local shard) differ by shard, as they should.

The backend is the process group's: gloo on CPU, nccl on CUDA. Tensors reduced with nccl must be
on the GPU, so :func:`all_reduce_sum` moves CPU tensors to the rank's device and back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .._frame import Frame, InputMap, frame_from_moments
from . import streaming

__all__ = [
    "all_reduce_max",
    "all_reduce_sum",
    "average_gradients",
    "broadcast",
    "broadcast_module",
    "check_equal_shards",
    "fit_context",
    "init_from_env",
    "shard_rows",
    "global_count",
    "global_input_map",
    "is_distributed",
    "is_main",
    "rank",
    "shared_seed",
    "world_size",
]


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE`` > 1: nccl when
    CUDA is available (each rank on GPU ``LOCAL_RANK``), else gloo. Returns whether a group with
    more than one rank is (now) initialised; does nothing for a plain ``python`` run."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return is_distributed()


def shard_rows(n: int) -> slice:
    """This rank's contiguous block of ``range(n)`` (as ``numpy.array_split``; all of it in one process)."""
    w, r = world_size(), rank()
    size, extra = divmod(n, w)
    start = r * size + min(r, extra)
    return slice(start, start + size + (1 if r < extra else 0))


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes taking part (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes checkpoints, progress bars and reports (rank 0)."""
    return rank() == 0


def _comm_device() -> torch.device:
    """The device collective tensors must live on: the rank's GPU with nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(total: torch.Tensor) -> torch.Tensor:
    """The sum of ``total`` (any shape) over every rank, as a new tensor on ``total``'s device."""
    dev = _comm_device()
    buf = total.detach().to(dev, copy=True).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(total.device)


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of ``value`` over every rank (``value`` itself in one process)."""
    if not is_distributed():
        return value
    buf = value.detach().to(_comm_device(), copy=True).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return buf.to(value.device)


def global_input_map(kind: str, X: torch.Tensor) -> InputMap:
    """:class:`InputMap` of ``kind`` from the moments (or minimum and range) of every rank's rows of
    X (n, ...), so that every rank maps its shard alike; X's own map in one process."""
    if not is_distributed() or kind == "none":
        return InputMap.fit(kind, X)
    flat = X.reshape(X.shape[0], -1)
    if kind == "unit_range":
        ext = all_reduce_max(torch.stack([-flat.min(), flat.max()]).double())
        lo, hi = -float(ext[0]), float(ext[1])
        return InputMap(kind, Frame(torch.tensor(lo, dtype=torch.float64), hi - lo if hi > lo else 1.0))
    _, mean, var = streaming.global_moments(flat)
    return InputMap(kind, frame_from_moments(mean, var))


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s value of ``tensor`` on every rank (same shape and dtype on every rank)."""
    if not is_distributed():
        return tensor
    buf = tensor.detach().to(_comm_device(), copy=True).contiguous()
    dist.broadcast(buf, src=src)
    return buf.to(tensor.device)


def global_count(n: int) -> int:
    """The number of points over every rank's shard (``n`` is this rank's)."""
    return int(streaming.reduce_statistics(torch.tensor(float(n), dtype=torch.float64)))


def shared_seed(seed: int | None) -> int | None:
    """Rank 0's seed on every rank (a fresh one drawn on rank 0 when it has ``None``), so that every
    rank's generators draw the same K-sized decisions. Unchanged without a process group."""
    if not is_distributed():
        return seed
    value = torch.tensor([-1 if seed is None else int(seed)], dtype=torch.int64)
    if seed is None and is_main():
        value[0] = int(torch.randint(0, 2**31 - 1, (1,)))
    return int(broadcast(value)[0])


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace the gradients of ``params`` by their mean over the processes (after ``backward``),
    in one all-reduce of the flattened gradients through the streaming seam: the update of
    DistributedDataParallel, for routes that keep modules and optimisers in their state. Does
    nothing when no reduction is installed."""
    if not streaming.is_reducing():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = streaming.reduce_statistics(torch.cat([g.reshape(-1) for g in grads])) / world_size()
    start = 0
    for g in grads:  # the module's parameter tensors, not the data
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers of ``module`` into every rank's (in place), as
    DistributedDataParallel does when it wraps a module: ranks whose initialisation read their own
    shard start from the same network. Does nothing when no reduction is installed."""
    if not streaming.is_reducing() or not is_distributed():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            t.copy_(broadcast(t))


def check_equal_shards(n: int) -> None:
    """Raise ValueError unless every process holds ``n`` rows (mini-batch training needs the same
    number of batches, hence of gradient all-reduces, on every rank). Nothing in one process."""
    if not streaming.is_reducing():
        return
    tot = streaming.reduce_statistics(torch.tensor([float(n), float(n) ** 2, 1.0], dtype=torch.float64))
    if abs(float(tot[1]) * float(tot[2]) - float(tot[0]) ** 2) > 0.5:
        raise ValueError(
            f"distributed training of a neural model needs shards of equal size on every rank; this "
            f"rank has {n} rows of {int(tot[0])} over {int(tot[2])} ranks (split the data evenly, "
            "e.g. drop the last rows)."
        )


@contextmanager
def fit_context() -> Iterator[bool]:
    """Install the all-reduce as ``streaming``'s reduction while the block runs, when a process group
    with more than one rank exists; yields whether it did. Restores the previous reduction after."""
    if not is_distributed():
        yield False
        return
    previous = streaming.set_reduce(all_reduce_sum)
    try:
        yield True
    finally:
        streaming.set_reduce(previous)
