"""A pass's blocks dealt over a fixed number of lanes, the lanes run by threads of single-threaded torch.

A block of an EM pass is a few large torch operations (the products) and many small ones on (m, K)
arrays. The large ones split over torch's intra-op threads, each paying a fork and a join; the small
ones fall under torch's grain size and run on one core while the others wait. Running whole blocks
side by side instead, one lane a thread with one intra-op thread each, keeps every core busy and pays
no fork per operation (torch releases the GIL inside its kernels).

The feature form's passes (:func:`bayesclust.inference.em.e_step`, ``argmax_chunks``) take lanes. So
do the float64 Cholesky form's full-covariance passes, with their elementwise work fused into Numba
kernels that release the GIL (:mod:`bayesclust.inference._cholesky_kernels`): its blocks as some 25
torch operations ran no faster in lanes (benchmarks/results/speed.md).

Between passes, torch's own OpenMP workers spin for a while after each parallel region
(``GOMP_SPINCOUNT``) and keep the second core from the lane thread that the next pass wakes (2-3 ms
a pass, measured). :func:`hold` keeps torch at one thread from a threaded pass to the end of a block
of work (an EM iteration, with its small M-step), so no worker is left spinning.

Block ``b`` goes to lane ``b % LANES``, each lane sums its blocks in order and the callers add the
lanes' sums in lane order: the blocks' sums are added in one order whether the lanes ran in threads
or one after the other (the rounding inside one block's torch operations may still depend on their
thread count). Passes that fuse their blocks only where the lanes run in threads (the Cholesky form's,
:mod:`em_cholesky`) or that size their blocks by it (the float64 feature form's, :mod:`em`) differ
from their one-thread form by rounding: a fit's last digits may depend on torch's thread count.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

from .._device import host_blas, numpy_blas_controllers
from .streaming import Features

LANES = 2  # fixed: results do not depend on the thread count
MIN_BLOCKS = 4  # fewer blocks than this run in one lane's order on the caller's thread
# lanes pay a few ms a pass (new threads, the thread count switched twice, torch's idle OpenMP
# workers) and gain some 20% of it: threads from this much work a pass, in FLOPs counting a float32
# one as half (measured whole fits at N = 10^5 in RESULTS.md, speed: gains from 3.6e9 in float64
# and 7.2e9 in float32, losses at 1.0e9 and 1.8e9)
MIN_WORK = 2e9
T = TypeVar("T")
_SWITCH = threading.Lock()  # held while a pass (or a :func:`hold`) has switched torch's thread count
_HELD = threading.local()  # .restore: the thread count to restore at the end of this thread's hold


def _threads() -> int:
    """Torch's thread count, or the one a hold on this thread restores at its end."""
    restore = getattr(_HELD, "restore", None)
    return torch.get_num_threads() if restore is None else restore


@contextmanager
def hold() -> Iterator[None]:
    """Within this block, a pass that runs its lanes in threads leaves torch at one thread (and keeps
    the switch) until the block ends, which restores the count; passes that run in turn change
    nothing. Not re-entrant across threads: one thread's hold is its own."""
    if getattr(_HELD, "active", False):
        yield
        return
    _HELD.active = True
    try:
        yield
    finally:
        _HELD.active = False
        release()


def release() -> None:
    """End this thread's hold on torch's thread count early (restore it, free the switch); the hold's
    block goes on, and its next threaded pass takes the switch again. For work inside a hold that
    runs on torch's own threads, such as a rare fallback pass."""
    restore, _HELD.restore = getattr(_HELD, "restore", None), None
    if restore is not None:
        torch.set_num_threads(restore)
        _SWITCH.release()


def on_cpu_threads(device: torch.device | str) -> bool:
    """Whether passes on ``device`` could run their lanes in threads: the CPU, with exactly ``LANES``
    torch threads (the case measured: more threads keep torch's own split). :func:`threaded` adds the
    pass's own conditions."""
    return torch.device(device).type == "cpu" and _threads() == LANES


def threaded(
    feats: Features, n_blocks: int, work: float = float("inf"), min_work: float | None = None
) -> bool:
    """Whether a pass over ``feats`` runs its lanes in threads: rows in memory (a view of X or of a
    whole cache, so blocks share no buffer) where :func:`on_cpu_threads` holds, enough blocks and
    ``work >= min_work`` (the pass's own threshold, in its own units of work; default ``MIN_WORK``)."""
    return (
        feats.cached
        and on_cpu_threads(feats.X.device)
        and n_blocks >= MIN_BLOCKS
        and work >= (MIN_WORK if min_work is None else min_work)
    )


def run(
    feats: Features, slices: Sequence[slice], lane: Callable[[int, Iterable[slice]], T],
    work: float = float("inf"), min_work: float | None = None, shared: bool = False,
) -> list[T]:
    """``lane(i, blocks)`` for i in range(LANES), where ``blocks`` are slices ``i``, ``i + LANES``, ...;
    the results in lane order. In threads (:func:`threaded`; ``work`` against ``min_work``, in the
    pass's own units: the feature form counts FLOPs, a float32 one as half) with one intra-op thread
    each, else one lane after the other. ``lane`` must keep its buffers to itself (``Features.scratch``
    slots named by the lane).

    ``shared``: the lanes take their blocks from one queue as they free up instead (a lane thread that
    starts late takes fewer), for passes whose results do not depend on which lane took a block."""
    parts: list[Iterable[slice]]
    if shared:
        queue = _Queue(slices)
        parts = [queue] * LANES
    else:
        parts = [list(slices[i::LANES]) for i in range(LANES)]
    if not threaded(feats, len(slices), work, min_work):
        return [lane(i, part) for i, part in enumerate(parts)]
    if getattr(_HELD, "restore", None) is not None:  # this thread's hold keeps one thread and the switch
        return _in_threads(parts, lane)
    # one threaded pass at a time in the process: the thread count is global, and two passes switching
    # it at once (fits in two of the user's threads) could restore it to one
    if not _SWITCH.acquire(blocking=False):
        return [lane(i, part) for i, part in enumerate(parts)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # new threads take it at their first operation; MKL's count is global
    if getattr(_HELD, "active", False):
        _HELD.restore = threads  # restored, and the switch released, at the end of the hold
        return _in_threads(parts, lane)
    try:
        return _in_threads(parts, lane)
    finally:
        torch.set_num_threads(threads)
        _SWITCH.release()


class _Queue:
    """Slices handed out in order to whichever lane asks next (thread-safe)."""

    def __init__(self, slices: Sequence[slice]) -> None:
        self._next = iter(list(slices))
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[slice]:
        return self

    def __next__(self) -> slice:
        with self._lock:
            return next(self._next)


def _in_threads(parts: list[Iterable[slice]], lane: Callable[[int, Iterable[slice]], T]) -> list[T]:
    """The lanes in threads (lane 0 on the caller's thread, the others on the process's lane threads),
    with torch already at one thread (and numpy's BLAS, where the lanes call it)."""
    results: list = [None] * LANES
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            if i and torch.get_num_threads() != 1:  # a lane thread keeps the count it first took
                torch.set_num_threads(1)
            results[i] = lane(i, parts[i])
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    with _numpy_blas_single():
        try:
            pending = [_workers().submit(work, i) for i in range(1, LANES)]
        except RuntimeError:  # no new thread work once the interpreter shuts down: the lanes in turn
            pending = []
            for i in range(1, LANES):
                work(i)
        work(0)
        for p in pending:
            p.result()
    if errors:
        raise errors[0]
    return results


@contextmanager
def _numpy_blas_single() -> Iterator[None]:
    """numpy's OpenBLAS at one thread while the lanes run, where they call it (:func:`host_blas`):
    two lanes each splitting their products over every core would oversubscribe them."""
    if host_blas() != "numpy":
        yield
        return
    controllers = numpy_blas_controllers()
    counts = [get() for get, _ in controllers]
    for _, put in controllers:
        put(1)
    try:
        yield
    finally:
        for (_, put), n in zip(controllers, counts, strict=True):
            put(n)


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _workers() -> ThreadPoolExecutor:
    """The process's ``LANES - 1`` lane threads, started at the first threaded pass and kept: a BLAS
    call in a fresh thread cost some 5 ms (its first-call set-up), a pass's gain at N = 10^5. A forked
    child, which inherits the pool but not its threads, starts its own."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(LANES - 1, thread_name_prefix="bayesclust-lane"))
    return _POOL[1]
