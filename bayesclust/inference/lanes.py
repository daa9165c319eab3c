"""A pass's blocks dealt over a fixed number of lanes, the lanes run by threads of single-threaded torch.

A block of an EM pass is a few large torch operations (the products) and many small ones on (m, K)
arrays. The large ones split over torch's intra-op threads, each paying a fork and a join; the small
ones fall under torch's grain size and run on one core while the others wait. Running whole blocks
side by side instead, one lane a thread with one intra-op thread each, keeps every core busy and pays
no fork per operation (torch releases the GIL inside its kernels).

The feature form's passes (:func:`bayesclust.inference.em.e_step`, ``argmax_chunks``) take lanes. The
Cholesky form's blocks, some 25 operations on (K, m) and (K, m, D) arrays, ran no faster in lanes
(benchmarks/results/speed.md), and stay on torch's threads.

Block ``b`` goes to lane ``b % LANES``, each lane sums its blocks in order and the callers add the
lanes' sums in lane order: the blocks' sums are added in one order whether the lanes ran in threads
or one after the other (the rounding inside one block's torch operations may still depend on their
thread count).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from .streaming import Features

LANES = 2  # fixed: results do not depend on the thread count
MIN_BLOCKS = 4  # fewer blocks than this run in one lane's order on the caller's thread
# lanes pay a few ms a pass (new threads, the thread count switched twice, torch's idle OpenMP
# workers) and gain some 20% of it: threads from this much work a pass, in FLOPs counting a float32
# one as half (measured whole fits at N = 10^5 in RESULTS.md, speed: gains from 3.6e9 in float64
# and 7.2e9 in float32, losses at 1.0e9 and 1.8e9)
MIN_WORK = 2e9
T = TypeVar("T")
_SWITCH = threading.Lock()  # held while a pass has switched torch's thread count


def threaded(feats: Features, n_blocks: int, work: float = float("inf")) -> bool:
    """Whether a pass over ``feats`` runs its lanes in threads: rows in memory on the CPU (a view of
    X or of a whole cache, so blocks share no buffer), exactly ``LANES`` torch threads (the case
    measured: more threads keep torch's own split), enough blocks and at least ``MIN_WORK``."""
    return (
        feats.cached
        and feats.X.device.type == "cpu"
        and torch.get_num_threads() == LANES
        and n_blocks >= MIN_BLOCKS
        and work >= MIN_WORK
    )


def run(
    feats: Features, slices: Sequence[slice], lane: Callable[[int, list[slice]], T],
    work: float = float("inf"),
) -> list[T]:
    """``lane(i, blocks)`` for i in range(LANES), where ``blocks`` are slices ``i``, ``i + LANES``, ...;
    the results in lane order. In threads (:func:`threaded`; ``work``: the pass's FLOPs, float32 ones
    counted as half) with one intra-op thread each, else one lane after the other. ``lane`` must keep
    its buffers to itself (``Features.scratch`` slots named by the lane)."""
    parts = [list(slices[i::LANES]) for i in range(LANES)]
    # one threaded pass at a time in the process: the thread count is global, and two passes switching
    # it at once (fits in two of the user's threads) could restore it to one
    if not threaded(feats, len(slices), work) or not _SWITCH.acquire(blocking=False):
        return [lane(i, part) for i, part in enumerate(parts)]
    try:
        return _in_threads(parts, lane)
    finally:
        _SWITCH.release()


def _in_threads(parts: list[list[slice]], lane: Callable[[int, list[slice]], T]) -> list[T]:
    """The lanes in threads of one intra-op thread each (lane 0 on the caller's thread)."""
    results: list = [None] * LANES
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = lane(i, parts[i])
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # new threads take it at their first operation; MKL's count is global
    try:
        workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(1, LANES)]
        for w in workers:
            w.start()
        work(0)
        for w in workers:
            w.join()
    finally:
        torch.set_num_threads(threads)
    if errors:
        raise errors[0]
    return results
