"""Parallel sub-cluster split/merge sampler for the DP Gaussian mixture (Chang & Fisher, NIPS 2013).

The state follows DPMMSubClusters: every cluster k carries two sub-clusters (k, 0) and (k, 1). One
sweep (:func:`sweep`) is

1. weights ``(pi_1..pi_K, pi_new) ~ Dir(N_1, ..., N_K, alpha)`` and sub-weights
   ``(pibar_k0, pibar_k1) ~ Dir(N_k0 + alpha/2, N_k1 + alpha/2)``; cluster and sub-cluster parameters
   ``(mu, Sigma)`` from their NIW posteriors, all K + 2K at once;
2. restricted Gibbs labels ``z_i ~ pi_k N(x_i | mu_k, Sigma_k)`` over the existing K clusters and
   sub-labels ``zbar_i ~ pibar_{z_i j} N(x_i | mu_{z_i j}, Sigma_{z_i j})``;
3. split proposals, Hastings ratio (Chang & Fisher eq. 16)
   ``H_s = alpha Gamma(N_k0) f(X_k0) Gamma(N_k1) f(X_k1) / (Gamma(N_k) f(X_k))``, f the NIW marginal
   likelihood; an accepted split turns the sub-clusters into clusters with fresh random sub-clusters;
4. merge proposals for nearby pairs (each cluster's ``n_merge_neighbors`` closest means), the
   inverse move with the sub-cluster assignment term of DPMMSubClusters:
   ``H_m = Gamma(N) f(X) Gamma(alpha) Gamma(N_k + alpha/2) Gamma(N_l + alpha/2)
   / (alpha Gamma(N_k) f(X_k) Gamma(N_l) f(X_l) Gamma(alpha/2)^2 Gamma(N + alpha))``.

Everything works on sufficient statistics of the 2K sub-clusters: G (2K, Q) = sum over points of the
feature map phi(x) = [x_i x_j (i <= j), x, 1] (one ``index_add_`` per chunk of points), and every
Gaussian log density is one matmul ``phi(x) @ A`` (Q, M). No Python loop over points or clusters;
statistics and log marginal likelihoods are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..models.priors import NIW


# ---------------------------------------------------------------------------- features and statistics
def _triu(d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    iu = torch.triu_indices(d, d, device=device)
    return iu[0], iu[1]


def feature_map(X: torch.Tensor) -> torch.Tensor:
    """phi(X) (n, Q) with Q = D(D+1)/2 + D + 1: [x_i x_j for i <= j, x, 1]."""
    i, j = _triu(X.shape[1], X.device)
    return torch.cat([X[:, i] * X[:, j], X, torch.ones_like(X[:, :1])], dim=1)


def unpack_stats(G: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G (M, Q) -> counts n (M,), sums sx (M, D), scatter sxx (M, D, D)."""
    p = d * (d + 1) // 2
    i, j = _triu(d, G.device)
    sxx = torch.zeros(G.shape[0], d, d, dtype=G.dtype, device=G.device)
    sxx[:, i, j] = G[:, :p]
    sxx[:, j, i] = G[:, :p]
    return G[:, -1], G[:, p : p + d], sxx


def gaussian_coefficients(mu: torch.Tensor, sigma: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """A (Q, M) with ``phi(x) @ A[:, m] = log_w[m] + log N(x | mu[m], sigma[m])``."""
    m, d = mu.shape
    chol = torch.linalg.cholesky(sigma)
    prec = torch.cholesky_inverse(chol)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    i, j = _triu(d, mu.device)
    quad = -prec[:, i, j] * torch.where(i == j, 0.5, 1.0).to(prec.dtype)
    pmu = (prec @ mu.unsqueeze(-1)).squeeze(-1)
    const = log_w - 0.5 * (pmu * mu).sum(-1) - 0.5 * logdet - 0.5 * d * math.log(2 * math.pi)
    return torch.cat([quad, pmu, const[:, None]], dim=1).T.contiguous()


class Features:
    """Chunked access to phi(X); cached when it fits in ``cache_bytes``."""

    def __init__(self, X: torch.Tensor, chunk_size: int, cache_bytes: float = 4e8) -> None:
        self.X = X
        self.n, self.d = X.shape
        self.q = self.d * (self.d + 1) // 2 + self.d + 1
        self.chunk_size = max(1, int(chunk_size))
        big = self.n * self.q * X.element_size() > cache_bytes
        self.cache = None if big else feature_map(X)

    def slices(self):
        for start in range(0, self.n, self.chunk_size):
            yield slice(start, min(self.n, start + self.chunk_size))

    def __call__(self, sl: slice) -> torch.Tensor:
        return self.cache[sl] if self.cache is not None else feature_map(self.X[sl])


def sub_statistics(feats: Features, z: torch.Tensor, zsub: torch.Tensor, k: int) -> torch.Tensor:
    """G (2K, Q) float64: per sub-cluster sums of phi over the points with label 2 z + zsub."""
    G = torch.zeros(2 * k, feats.q, dtype=torch.float64, device=z.device)
    for sl in feats.slices():
        phi = feats(sl)
        part = torch.zeros(2 * k, feats.q, dtype=phi.dtype, device=phi.device)
        part.index_add_(0, 2 * z[sl] + zsub[sl], phi)
        G += part.double()
    return G.cpu()  # K-sized bookkeeping (splits, merges, priors) lives on the CPU


# ---------------------------------------------------------------------------- random draws
def sample_gamma(conc: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Gamma(conc, 1) draws (float64, on conc's device) from a NumPy generator: torch's gamma sampler
    takes no generator, and re-seeding the global one per draw is slow."""
    draw = rng.standard_gamma(conc.detach().double().cpu().clamp(min=1e-300).numpy())
    return torch.from_numpy(np.maximum(draw, 1e-300)).to(device=conc.device, dtype=conc.dtype)


def sample_categorical(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``softmax(logits)`` (n, M) by inverting the CDF at ``u`` (n,)."""
    p = torch.softmax(logits, dim=1)
    cdf = torch.cumsum(p, dim=1)
    idx = (cdf < u[:, None] * cdf[:, -1:]).sum(1)
    return idx.clamp(max=logits.shape[1] - 1)


def log_crp(n: torch.Tensor, alpha: float) -> torch.Tensor:
    """log p(partition) under the Chinese restaurant process with cluster sizes n (K,)."""
    a = torch.tensor(alpha, dtype=torch.float64, device=n.device)
    return n.numel() * torch.log(a) + torch.lgamma(n).sum() + torch.lgamma(a) - torch.lgamma(a + n.sum())


# ---------------------------------------------------------------------------- state
@dataclass
class SamplerConfig:
    alpha: float
    prior: NIW  # float64, in the (standardised) frame of X
    split_delay: int = 5
    n_merge_neighbors: int = 3
    burn_in: int = 50
    store_labels: int = 0  # how many post-burn-in label draws to keep (0: none)
    reset_every: int = 10  # sub-clusters are re-drawn every this many sweeps of a cluster (0: never)


@dataclass
class SamplerState:
    """Everything a sweep reads and writes (labels on the device, statistics in float64)."""

    feats: Features
    z: torch.Tensor
    zsub: torch.Tensor
    G: torch.Tensor  # (2K, Q) float64
    age: torch.Tensor  # (K,) sweeps since the cluster was created by a split or merge
    dev_gen: torch.Generator
    gen: torch.Generator
    np_rng: np.random.Generator
    k_trace: list[int] = field(default_factory=list)
    joint_trace: list[float] = field(default_factory=list)
    n_splits: int = 0
    n_merges: int = 0
    best_joint: float = -math.inf
    best_z: torch.Tensor | None = None
    best_sweep: int = -1
    draws_weights: list[torch.Tensor] = field(default_factory=list)
    draws_means: list[torch.Tensor] = field(default_factory=list)
    draws_labels: list[torch.Tensor] = field(default_factory=list)
    params: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def k(self) -> int:
        return self.G.shape[0] // 2


def init_state(feats: Features, gen: torch.Generator, device: torch.device) -> SamplerState:
    """One cluster holding all points, random sub-clusters."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    dev_gen = torch.Generator(device=device)
    dev_gen.manual_seed(seed)
    n = feats.n
    z = torch.zeros(n, dtype=torch.long, device=device)
    zsub = (torch.rand(n, generator=dev_gen, device=device) < 0.5).long()
    G = sub_statistics(feats, z, zsub, 1)
    np_rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    st = SamplerState(feats, z, zsub, G, torch.zeros(1, dtype=torch.long), dev_gen, gen, np_rng)
    reset_subclusters(st, torch.ones(1, dtype=torch.bool), cluster_statistics(G))
    st.G = sub_statistics(feats, st.z, st.zsub, 1)
    return st


def _relabel(st: SamplerState, keep: torch.Tensor) -> None:
    """Drop clusters with ``keep`` False (they must be empty) and renumber the rest 0..K'-1."""
    if bool(keep.all()):
        return
    new_id = torch.cumsum(keep.long(), 0) - 1
    st.z = new_id.to(st.z.device)[st.z]
    q = st.G.shape[1]
    st.G = st.G.view(-1, 2, q)[keep].reshape(-1, q)
    st.age = st.age[keep]


def _compact(st: SamplerState) -> None:
    n = st.G[:, -1].view(-1, 2).sum(1)
    _relabel(st, n > 0.5)


def _log_ml(prior: NIW, G: torch.Tensor) -> torch.Tensor:
    n, sx, sxx = unpack_stats(G, prior.dim)
    return prior.log_marginal_likelihood(n, sx, sxx)


def joint_log_prob(st: SamplerState, cfg: SamplerConfig) -> float:
    """log p(X, z) with all parameters integrated out: log CRP(z) + sum_k log f(X_k)."""
    Gc = st.G.view(-1, 2, st.G.shape[1]).sum(1)
    return float(log_crp(Gc[:, -1], cfg.alpha) + _log_ml(cfg.prior, Gc).sum())


# ---------------------------------------------------------------------------- the sweep
def sample_labels(st: SamplerState, cfg: SamplerConfig) -> None:
    """Steps 1-2: draw weights and parameters from their posteriors, then labels and sub-labels."""
    k, d = st.k, cfg.prior.dim
    q = st.G.shape[1]
    Gs = st.G
    Gc = Gs.view(k, 2, q).sum(1)
    nc, ns = Gc[:, -1], Gs[:, -1].view(k, 2)
    g = sample_gamma(torch.cat([nc, nc.new_tensor([cfg.alpha])]), st.np_rng)
    log_pi = torch.log(g[:k] / g.sum())
    gs = sample_gamma(ns + cfg.alpha / 2.0, st.np_rng)
    log_pis = torch.log(gs / gs.sum(1, keepdim=True)).reshape(-1)
    n, sx, sxx = unpack_stats(torch.cat([Gc, Gs]), d)
    # global RNG (seeded by the Engine): NIW.sample with a generator re-seeds per call, which is slow
    mu, sigma = cfg.prior.posterior(n, sx, sxx).sample(None)
    A = gaussian_coefficients(mu, sigma, torch.cat([log_pi, log_pis]))
    feats = st.feats
    A = A.to(device=feats.X.device, dtype=feats.X.dtype)
    u = torch.rand(2, feats.n, generator=st.dev_gen, device=feats.X.device, dtype=feats.X.dtype)
    G = torch.zeros(2 * k, q, dtype=torch.float64, device=feats.X.device)
    for sl in feats.slices():
        phi = feats(sl)
        logits = phi @ A  # (n, 3K)
        z = sample_categorical(logits[:, :k], u[0, sl])
        sub = logits[:, k:].view(-1, k, 2).gather(1, z.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
        zs = sample_categorical(sub, u[1, sl])
        st.z[sl], st.zsub[sl] = z, zs
        part = torch.zeros(2 * k, q, dtype=phi.dtype, device=phi.device)
        part.index_add_(0, 2 * z + zs, phi)
        G += part.double()
    st.G = G.cpu()
    st.params = (log_pi, mu[:k])  # this sweep's draw, for the trace
    _compact(st)


def cluster_statistics(G: torch.Tensor) -> torch.Tensor:
    """Cluster-level statistics (K, Q) from sub-cluster statistics (2K, Q)."""
    return G.view(-1, 2, G.shape[1]).sum(1)


def reset_subclusters(st: SamplerState, clusters: torch.Tensor, Gc: torch.Tensor) -> None:
    """New sub-labels for the points of the clusters flagged in ``clusters`` (K,): the side of a
    random hyperplane through the cluster mean, its normal drawn from N(0, S_k) (S_k the cluster
    scatter), so that splits along the main axes are proposed most often. ``Gc`` (K, Q) are the
    cluster statistics of the current labels."""
    if not bool(clusters.any()):
        return
    d = st.feats.d
    n, sx, sxx = unpack_stats(Gc, d)
    n = n.clamp(min=1.0)
    mean = sx / n[:, None]
    cov = sxx / n[:, None, None] - mean[:, :, None] * mean[:, None, :]
    cov = cov + 1e-6 * torch.eye(d, dtype=cov.dtype)
    chol, info = torch.linalg.cholesky_ex(cov)
    chol = torch.where((info == 0)[:, None, None], chol, torch.eye(d, dtype=cov.dtype))
    eps = torch.randn(Gc.shape[0], d, 1, generator=st.gen, dtype=cov.dtype)
    normal = (chol @ eps).squeeze(-1)
    X = st.feats.X
    flag = clusters.to(X.device)[st.z]
    proj = ((X - mean.to(X)[st.z]) * normal.to(X)[st.z]).sum(1)
    st.zsub = torch.where(flag, (proj > 0).long(), st.zsub)


def propose_splits(
    st: SamplerState, cfg: SamplerConfig, exclude: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3, batched over clusters. Returns the (K',) mask of the clusters an accepted split created
    or shrank, and their cluster statistics (K', Q) after the move (already applied to the labels)."""
    k, q = st.k, st.G.shape[1]
    Gs = st.G.view(k, 2, q)
    ns = Gs[:, :, -1]
    ok = (ns > 0.5).all(1) & (st.age >= cfg.split_delay) & ~exclude
    Gc = Gs.sum(1)
    if not bool(ok.any()):
        return torch.zeros(k, dtype=torch.bool), Gc
    lml = _log_ml(cfg.prior, torch.cat([st.G, Gs.sum(1)])).double()
    lml_s, lml_c = lml[: 2 * k].view(k, 2), lml[2 * k :]
    nc = ns.sum(1)
    log_h = (
        math.log(cfg.alpha)
        + (torch.lgamma(ns.clamp(min=1)) + lml_s).sum(1)
        - torch.lgamma(nc.clamp(min=1))
        - lml_c
    )
    u = torch.rand(k, generator=st.gen, dtype=torch.float64)
    accept = ok & (torch.log(u) < log_h)
    n_acc = int(accept.sum())
    if n_acc == 0:
        return accept, Gc
    # sub-cluster 1 of cluster k becomes cluster K + j; sub-cluster 0 stays cluster k
    new_id = torch.full((k,), -1, dtype=torch.long)
    new_id[accept] = torch.arange(k, k + n_acc)
    dev = st.z.device
    moved = accept.to(dev)[st.z] & (st.zsub == 1)
    st.z = torch.where(moved, new_id.to(dev)[st.z], st.z)
    Gc = torch.cat([torch.where(accept[:, None], Gs[:, 0], Gc), Gs[accept, 1]])
    G_new = torch.zeros(2 * (k + n_acc), q, dtype=torch.float64)
    G_new[: 2 * k] = st.G
    st.G = G_new  # sub-cluster statistics are refreshed by the caller's statistics pass
    st.age = torch.cat([torch.where(accept, 0, st.age), torch.zeros(n_acc, dtype=torch.long)])
    st.n_splits += n_acc
    return torch.cat([accept, torch.ones(n_acc, dtype=torch.bool)]), Gc



def log_merge_ratio(
    na: torch.Tensor,
    nb: torch.Tensor,
    lml_merged: torch.Tensor,
    lml_a: torch.Tensor,
    lml_b: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """log Hastings ratio of merging clusters a and b (Chang & Fisher 2013, eq. 22), per pair.

    ``na``, ``nb`` are the cluster counts, ``lml_*`` the NIW log marginal likelihoods of the merged
    and of each cluster's data.
    """
    lg, al = torch.lgamma, alpha
    return (
        lg(na + nb)
        + lml_merged
        - math.log(al)
        - lg(na)
        - lml_a
        - lg(nb)
        - lml_b
        + math.lgamma(al)
        - 2 * math.lgamma(al / 2)
        + lg(na + al / 2)
        + lg(nb + al / 2)
        - lg(na + nb + al)
    )

def merge_candidates(means: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Pairs (P, 2), k < l, of each cluster with its ``n_neighbors`` nearest cluster means."""
    k = means.shape[0]
    if k < 2:
        return torch.zeros(0, 2, dtype=torch.long)
    dist = torch.cdist(means, means)
    dist.fill_diagonal_(math.inf)
    m = min(n_neighbors, k - 1)
    nn = dist.topk(m, largest=False).indices
    pairs = torch.stack([torch.arange(k).repeat_interleave(m), nn.reshape(-1)], 1)
    pairs = torch.sort(pairs, dim=1).values
    return torch.unique(pairs, dim=0)


def propose_merges(st: SamplerState, cfg: SamplerConfig, frozen: torch.Tensor, Gc: torch.Tensor) -> bool:
    """Step 4 on nearby pairs; clusters in ``frozen`` (K,) take no part; ``Gc`` (K, Q) cluster
    statistics, updated in place. Returns whether any pair merged."""
    k = st.k
    nc = Gc[:, -1]
    d = cfg.prior.dim
    means = Gc[:, -d - 1 : -1] / nc[:, None]
    pairs = merge_candidates(means, cfg.n_merge_neighbors)
    if pairs.shape[0] == 0:
        return False
    ok_c = (~frozen) & (st.age >= cfg.split_delay)
    pairs = pairs[ok_c[pairs[:, 0]] & ok_c[pairs[:, 1]]]
    if pairs.shape[0] == 0:
        return False
    a, b = pairs[:, 0], pairs[:, 1]
    lml = _log_ml(cfg.prior, torch.cat([Gc[a] + Gc[b], Gc])).double()
    lml_m, lml_c = lml[: pairs.shape[0]], lml[pairs.shape[0] :]
    log_h = log_merge_ratio(nc[a], nc[b], lml_m, lml_c[a], lml_c[b], cfg.alpha)
    u = torch.rand(pairs.shape[0], generator=st.gen, dtype=torch.float64)
    acc = pairs[torch.log(u) < log_h]
    if acc.shape[0] == 0:
        return False
    # each cluster takes part in one merge at most: a random order, first come first served
    order = torch.randperm(acc.shape[0], generator=st.gen)
    used = torch.zeros(k, dtype=torch.bool)
    target = torch.arange(k)
    for p in acc[order].tolist():  # loop over accepted pairs (a handful), never over points
        if used[p[0]] or used[p[1]]:
            continue
        used[p[0]] = used[p[1]] = True
        target[p[1]] = p[0]
        st.age[p[0]] = 0
        Gc[p[0]] += Gc[p[1]]
        Gc[p[1]] = 0.0
    dev = st.z.device
    absorbed = (target != torch.arange(k)).to(dev)
    involved = used.to(dev)[st.z]
    # the merged cluster's sub-clusters are the two clusters it came from
    st.zsub = torch.where(involved, absorbed[st.z].long(), st.zsub)
    st.z = target.to(dev)[st.z]
    st.n_merges += int(absorbed.sum())
    return True


def sweep(st: SamplerState, cfg: SamplerConfig, iteration: int) -> float:
    """One full sweep (steps 1-4); returns the collapsed joint log p(X, z) after it."""
    sample_labels(st, cfg)
    k = st.k
    q = st.G.shape[1]
    ns = st.G[:, -1].view(k, 2)
    # sub-clusters start afresh when one of them emptied, and every ``reset_every`` sweeps of a
    # cluster's life (a rejected sub-cluster split may be a poor proposal, not a poor split)
    lonely = ((ns < 0.5).any(1)) & (ns.sum(1) > 1.5)
    stale = (
        (st.age >= cfg.split_delay) & (st.age % cfg.reset_every == 0) if cfg.reset_every else lonely & False
    )
    reset = lonely | stale
    split, Gc = propose_splits(st, cfg, reset)
    frozen = split.clone()
    frozen[:k] |= reset
    merged = propose_merges(st, cfg, frozen, Gc)
    if merged or bool(frozen.any()):
        reset_subclusters(st, frozen, Gc)
        st.G = sub_statistics(st.feats, st.z, st.zsub, st.k)
        _compact(st)
    assert st.G.shape[1] == q
    st.age += 1
    joint = joint_log_prob(st, cfg)
    st.k_trace.append(st.k)
    st.joint_trace.append(joint)
    if iteration >= cfg.burn_in:
        log_pi, mu = st.params
        st.draws_weights.append(torch.exp(log_pi).cpu())
        st.draws_means.append(mu.cpu())
        if len(st.draws_labels) < cfg.store_labels:
            st.draws_labels.append(st.z.to(torch.int32).clone())
    # point estimate: the post-burn-in sample of highest joint probability (the last one before)
    if iteration <= cfg.burn_in or joint >= st.best_joint:
        st.best_joint, st.best_z, st.best_sweep = joint, st.z.clone(), iteration
    return joint


def run_state_summary(st: SamplerState) -> dict[str, Any]:
    return {"k": st.k, "splits": st.n_splits, "merges": st.n_merges}
