"""k-means++ seeding and Lloyd iterations: the one k-means used to initialise every model."""

from __future__ import annotations

import math

import torch


def kmeans_plusplus(
    X: torch.Tensor,
    k: int,
    generator: torch.Generator,
    chunk_size: int = 65536,
    n_local_trials: int | None = None,
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): centres (k, D) chosen among the rows of X (N, D).

    Each new centre is the best of ``n_local_trials`` D^2-weighted candidates (the one that lowers
    the potential most); the default ``2 + log k`` is scikit-learn's greedy variant, ``1`` the
    original algorithm. Distances are computed in chunks of ``chunk_size`` rows.
    """
    n = X.shape[0]
    n_trials = 2 + int(math.log(k)) if n_local_trials is None else int(n_local_trials)
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [X[first]]
    sq_norms = (X * X).sum(1)
    closest = _sq_dist(X, sq_norms, X[first : first + 1], chunk_size)[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if float(total) <= 0:
            cand = torch.randint(n, (n_trials,), generator=generator)
        else:
            u = torch.rand(n_trials, generator=generator, dtype=torch.float64) * float(total)
            cand = torch.searchsorted(torch.cumsum(closest.double().cpu(), 0), u).clamp(max=n - 1)
        cand = cand.to(X.device)
        d_cand = torch.minimum(closest[:, None], _sq_dist(X, sq_norms, X[cand], chunk_size))
        best = int(torch.argmin(d_cand.sum(0)))
        closest = d_cand[:, best]
        centers.append(X[cand[best]])
    return torch.stack(centers)


def _sq_dist(X: torch.Tensor, sq_norms: torch.Tensor, C: torch.Tensor, chunk_size: int) -> torch.Tensor:
    out = []
    c_norm = (C * C).sum(1)
    for start in range(0, X.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        out.append((sq_norms[sl, None] - 2 * X[sl] @ C.T + c_norm).clamp(min=0))
    return torch.cat(out)


def nearest_center(X: torch.Tensor, C: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    return torch.argmin(_sq_dist(X, (X * X).sum(1), C, chunk_size), dim=1)


def lloyd(X: torch.Tensor, C: torch.Tensor, n_iter: int, chunk_size: int = 65536) -> torch.Tensor:
    """A few Lloyd iterations (hard k-means) from centres C (K, D); empty clusters keep their centre."""
    k = C.shape[0]
    for _ in range(n_iter):
        labels = nearest_center(X, C, chunk_size)
        counts = torch.bincount(labels, minlength=k).to(X.dtype)
        sums = torch.zeros_like(C).index_add_(0, labels, X)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], C)
        if torch.allclose(new, C):
            return new
        C = new
    return C


def kmeans(
    X: torch.Tensor, k: int, generator: torch.Generator, n_iter: int = 100, chunk_size: int = 65536,
    n_init: int = 10,
) -> tuple[torch.Tensor, float]:
    """k-means++ then Lloyd on X (N, D), the best of ``n_init`` seedings (lowest inertia, as
    scikit-learn's ``KMeans(n_init=10)``): centres (k, D) and the mean squared distance of a row to
    its centre per dimension, ``inertia / (N D)``."""
    best: tuple[torch.Tensor, float] | None = None
    for _ in range(max(1, int(n_init))):
        C = lloyd(X, kmeans_plusplus(X, k, generator, chunk_size), n_iter, chunk_size)
        labels = nearest_center(X, C, chunk_size)
        sq = sum(float(((X[s : s + chunk_size] - C[labels[s : s + chunk_size]]) ** 2).sum())
                 for s in range(0, X.shape[0], chunk_size))
        if best is None or sq < best[1]:
            best = (C, sq)
    assert best is not None
    return best[0], best[1] / (X.shape[0] * X.shape[1])
