"""Exact k-nearest neighbours, chunked over rows: IMSAT's per-sample VAT radius and the neighbour
lists of SCAN-style consistency."""

from __future__ import annotations

import torch

from .._validation import check_positive_int

__all__ = ["kth_neighbor_distance", "nearest_neighbors"]


def nearest_neighbors(
    x: torch.Tensor, k: int = 10, chunk_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, k) ascending and indices (N, k) int64 of the k nearest other rows of ``x`` (N, ...).

    Exact brute force on ``|a|^2 - 2 a.b + |b|^2`` in ``chunk_size`` rows at a time (memory
    O(chunk x N)); a point is not its own neighbour, duplicates count at distance 0.
    """
    n = x.shape[0]
    k = check_positive_int(k, "k")
    if k >= n:
        raise ValueError(f"k={k} neighbours need at least {k + 1} samples; got {n}.")
    flat = x.reshape(n, -1)
    sq = (flat * flat).sum(1)
    dist = torch.empty(n, k, dtype=x.dtype, device=x.device)
    index = torch.empty(n, k, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        d2 = torch.addmm(sq[None, :], flat[start:stop], flat.T, alpha=-2.0).add_(sq[start:stop, None])
        rows = torch.arange(stop - start, device=x.device)
        d2[rows, rows + start] = float("inf")  # not its own neighbour
        top = d2.topk(k, dim=1, largest=False)
        dist[start:stop], index[start:stop] = top.values.clamp_(min=0.0).sqrt_(), top.indices
    return dist, index


def kth_neighbor_distance(x: torch.Tensor, k: int = 10, chunk_size: int = 2048) -> torch.Tensor:
    """Euclidean distance from every row of ``x`` (N, ...) to its k-th nearest other row, shape (N,).

    Hu et al. (2017, IMSAT) set the VAT radius of x_i to 0.25 x its 10th-neighbour distance.
    """
    return nearest_neighbors(x, k, chunk_size)[0][:, -1].contiguous()
