"""Parallel sub-cluster split/merge sampler for the DP Gaussian mixture (Chang & Fisher, NIPS 2013).

The state follows DPMMSubClusters: every cluster k carries two sub-clusters (k, 0) and (k, 1). One
sweep (:func:`sweep`) is

1. weights ``(pi_1..pi_K, pi_new) ~ Dir(N_1, ..., N_K, alpha)`` and sub-weights
   ``(pibar_k0, pibar_k1) ~ Dir(N_k0 + alpha/2, N_k1 + alpha/2)``; cluster and sub-cluster parameters
   ``(mu, Sigma)`` from their NIW posteriors, all K + 2K at once;
2. restricted Gibbs labels ``z_i ~ pi_k N(x_i | mu_k, Sigma_k)`` over the existing K clusters, one
   random anchor point per cluster held fixed and the move accepted with ratio ``prod_k N_k / N_k'``
   so that no cluster empties (restricted Gibbs keeps K; a cluster lost there has no reverse move);
   then sub-labels ``zbar_i ~ pibar_{z_i j} N(x_i | mu_{z_i j}, Sigma_{z_i j})``;
3. with probability 1/2 split proposals, Hastings ratio (Chang & Fisher eq. 16)
   ``H_s = alpha Gamma(N_k0) f(X_k0) Gamma(N_k1) f(X_k1) / (Gamma(N_k) f(X_k)) / (2 rho)``, f the NIW
   marginal likelihood; otherwise
4. merge proposals for nearby pairs (each cluster's ``n_merge_neighbors`` closest means), with the
   exact inverse ratio ``H_m = 2 rho / H_s`` (see :func:`log_merge_ratio`).

``rho(zbar_k | X_k)`` is the sub-cluster posterior that steps 1-2 leave invariant; ``2 rho`` is the
probability that the sub-clusters propose that split. For clusters of at most ``exact_max`` points it
is computed exactly over all 2^N labellings (and the sub-labels are drawn from it), which makes the
chain exact on small data (tests/test_dpgmm.py: exact enumeration); for larger clusters it is
Chang & Fisher's approximation ``2 rho = 1`` (the proposed split is the sub-cluster mode). The other
approximations at scale: merges only between nearby pairs, conflicting accepted merges resolved at
random, and the ``split_delay`` / ``reset_every`` heuristics (all off in the exactness test).

Everything works on sufficient statistics of the 2K sub-clusters: G (2K, Q) = sum over points of the
feature map phi(x) = [x_i x_j (i <= j), x, 1] (one ``index_add_`` per chunk of points), and every
Gaussian log density is one matmul ``phi(x) @ A`` (Q, M). No Python loop over points; statistics and
log marginal likelihoods are float64, per-point work in the data's dtype (float32 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..models.dp import sample_concentration
from ..models.family import ConjugateFamily
from ..models.priors import WishartScalePrior
from . import distributed
from .streaming import Features, is_reducing, reduce_statistics, scatter_statistics


# ---------------------------------------------------------------------------- statistics
def sub_statistics(feats: Features, z: torch.Tensor, zsub: torch.Tensor, k: int) -> torch.Tensor:
    """G (2K, Q) float64 on the CPU (where the K-sized bookkeeping lives): per sub-cluster sums of
    the family's statistics map over the points with label 2 z + zsub."""
    return scatter_statistics(feats, 2 * z + zsub, 2 * k)


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
    """Sampler settings. ``alpha`` is the current DP concentration: with ``alpha_prior = (a, b)`` it is
    resampled from p(alpha | K, N) under Gamma(a, b) (rate b) at the start of every sweep."""

    alpha: float
    family: ConjugateFamily  # its prior in float64, in the (standardised) frame of X
    split_delay: int = 5
    n_merge_neighbors: int = 3
    burn_in: int = 50
    store_labels: int = 0  # how many post-burn-in label draws to keep (0: none)
    reset_every: int = 10  # sub-clusters are re-drawn every this many sweeps of a cluster (0: never)
    exact_max: int = 10  # clusters of <= this many points: exact sub-cluster terms (2^N labellings)
    alpha_prior: tuple[float, float] | None = None  # Gamma(shape, rate) hyperprior on alpha (None: fixed)
    scale_prior: WishartScalePrior | None = None  # hyperprior on the NIW scale psi0 (None: fixed)


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
    n_rejected_gibbs: int = 0
    log_rho: torch.Tensor | None = None  # (K,) log rho(zbar_k | X_k), 0 for large clusters
    best_joint: float = -math.inf
    best_z: torch.Tensor | None = None
    best_sweep: int = -1
    best_k: int = 0  # number of clusters of best_z
    draws_weights: list[torch.Tensor] = field(default_factory=list)
    draws_means: list[torch.Tensor] = field(default_factory=list)
    draws_labels: list[torch.Tensor] = field(default_factory=list)
    params: tuple[torch.Tensor, torch.Tensor] | None = None
    alpha_trace: list[float] = field(default_factory=list)  # alpha used in each sweep
    size_trace: list[np.ndarray] = field(default_factory=list)  # cluster sizes (K_s,) after each sweep
    psi_sum: torch.Tensor | None = None  # sum of the post-burn-in psi0 draws (scale_prior)
    psi_count: int = 0

    @property
    def k(self) -> int:
        return self.G.shape[0] // 2


def init_state(
    feats: Features, family: ConjugateFamily, gen: torch.Generator, device: torch.device
) -> SamplerState:
    """One cluster holding all points, random sub-clusters (``feats`` maps the family's statistics)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    dev_gen = torch.Generator(device=device)
    dev_gen.manual_seed(seed + distributed.rank())  # per-point draws differ by shard
    n = feats.n
    z = torch.zeros(n, dtype=torch.long, device=device)
    zsub = (torch.rand(n, generator=dev_gen, device=device) < 0.5).long()
    G = sub_statistics(feats, z, zsub, 1)
    np_rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    st = SamplerState(feats, z, zsub, G, torch.zeros(1, dtype=torch.long), dev_gen, gen, np_rng)
    reset_subclusters(st, family, torch.ones(1, dtype=torch.bool), cluster_statistics(G))
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


def _log_ml(family: ConjugateFamily, G: torch.Tensor) -> torch.Tensor:
    return family.log_marginal_likelihood(G)


def joint_log_prob(st: SamplerState, cfg: SamplerConfig) -> float:
    """log p(X, z) with all parameters integrated out: log CRP(z) + sum_k log f(X_k)."""
    Gc = st.G.view(-1, 2, st.G.shape[1]).sum(1)
    return float(log_crp(Gc[:, -1], cfg.alpha) + _log_ml(cfg.family, Gc).sum())


# ---------------------------------------------------------------------------- the sweep
def _anchors(z: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n,) bool mask with one point of each of the K clusters, uniformly at random."""
    n = z.shape[0]
    perm = torch.randperm(n, generator=gen, device=z.device)
    first = torch.full((k,), n, dtype=torch.long, device=z.device)
    first.scatter_reduce_(0, z[perm], torch.arange(n, device=z.device), reduce="amin")
    mask = torch.zeros(n, dtype=torch.bool, device=z.device)
    mask[perm[first[first < n]]] = True  # a distributed shard may hold no point of a cluster
    return mask


def _label_pass(
    st: SamplerState, A: torch.Tensor, u: torch.Tensor, k: int, anchors: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the data: labels (restricted Gibbs, anchors kept; or the current labels when
    ``anchors`` is None), sub-labels given them, and the new statistics G (2K, Q) float64."""
    feats = st.feats
    q = feats.q
    z_all = torch.empty_like(st.z)
    zs_all = torch.empty_like(st.zsub)
    G = torch.zeros(2 * k, q, dtype=torch.float64, device=feats.X.device)
    for sl in feats.slices():
        phi = feats(sl)
        logits = phi @ A  # (n, 3K)
        if anchors is None:
            z = st.z[sl]
        else:
            z = torch.where(anchors[sl], st.z[sl], sample_categorical(logits[:, :k], u[0, sl]))
        sub = logits[:, k:].view(-1, k, 2).gather(1, z.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
        zs = sample_categorical(sub, u[1, sl])
        z_all[sl], zs_all[sl] = z, zs
        part = torch.zeros(2 * k, q, dtype=phi.dtype, device=phi.device)
        part.index_add_(0, 2 * z + zs, phi)
        G += part.double()
    return z_all, zs_all, reduce_statistics(G).cpu()


def sample_labels(st: SamplerState, cfg: SamplerConfig) -> None:
    """Steps 1-2: draw weights and parameters from their posteriors, then labels and sub-labels.

    Restricted Gibbs keeps K fixed, so its labels are drawn given that no cluster empties: one
    random *anchor* point per cluster keeps its label, the others are drawn in parallel from
    ``pi_k N(x_i | mu_k, Sigma_k)``, and the move is accepted with the Metropolis-Hastings ratio
    ``prod_k N_k / N_k'`` that undoes the size-dependent choice of anchors (probability
    ``prod_k 1 / N_k``). Without this, clusters that empty are lost by a move with no reverse,
    which biases the chain to small K (measured on the exact-enumeration test).
    """
    k = st.k
    q = st.G.shape[1]
    Gs = st.G
    Gc = Gs.view(k, 2, q).sum(1)
    nc, ns = Gc[:, -1], Gs[:, -1].view(k, 2)
    g = sample_gamma(torch.cat([nc, nc.new_tensor([cfg.alpha])]), st.np_rng)
    log_pi = torch.log(g[:k] / g.sum())
    gs = sample_gamma(ns + cfg.alpha / 2.0, st.np_rng)
    log_pis = torch.log(gs / gs.sum(1, keepdim=True)).reshape(-1)
    A, mu = cfg.family.sample_coefficients(torch.cat([Gc, Gs]), torch.cat([log_pi, log_pis]))
    feats = st.feats
    A = A.to(device=feats.X.device, dtype=feats.X.dtype)
    u = torch.rand(2, feats.n, generator=st.dev_gen, device=feats.X.device, dtype=feats.X.dtype)
    anchors = _anchors(st.z, k, st.dev_gen)
    z, zs, G = _label_pass(st, A, u, k, anchors)
    n_new = cluster_statistics(G)[:, -1]
    log_acc = float((torch.log(nc) - torch.log(n_new.clamp(min=1.0))).sum())
    if log_acc >= 0 or math.log(float(torch.rand((), generator=st.gen, dtype=torch.float64))) < log_acc:
        st.z, st.zsub, st.G = z, zs, G
    else:  # rejected: keep the labels, refresh the sub-labels
        st.n_rejected_gibbs += 1
        st.zsub, st.G = _label_pass(st, A, u, k, None)[1:]
    st.params = (log_pi, mu[:k])  # this sweep's draw, for the trace
    _compact(st)


def cluster_statistics(G: torch.Tensor) -> torch.Tensor:
    """Cluster-level statistics (K, Q) from sub-cluster statistics (2K, Q)."""
    return G.view(-1, 2, G.shape[1]).sum(1)


def reset_subclusters(
    st: SamplerState, family: ConjugateFamily, clusters: torch.Tensor, Gc: torch.Tensor
) -> None:
    """New sub-labels for the points of the clusters flagged in ``clusters`` (K,): the side of a
    random hyperplane through the cluster mean, its normal drawn from N(0, S_k) (S_k the cluster
    scatter), so that splits along the main axes are proposed most often. ``Gc`` (K, Q) are the
    cluster statistics of the current labels."""
    if not bool(clusters.any()):
        return
    d = st.feats.d
    _, mean, cov = family.moments(Gc)
    cov = cov + 1e-6 * torch.eye(d, dtype=cov.dtype)
    chol, info = torch.linalg.cholesky_ex(cov)
    chol = torch.where((info == 0)[:, None, None], chol, torch.eye(d, dtype=cov.dtype))
    eps = torch.randn(Gc.shape[0], d, 1, generator=st.gen, dtype=cov.dtype)
    normal = (chol @ eps).squeeze(-1)
    feats = st.feats
    X0 = feats.X  # device and dtype (the data itself may be out of core)
    flag = clusters.to(X0.device)[st.z]
    mean, normal = mean.to(X0), normal.to(X0)
    zsub = torch.empty_like(st.zsub)
    for sl in feats.slices():  # chunk by chunk: no (N, D) temporary
        z = st.z[sl]
        proj = ((feats.rows(sl) - mean[z]) * normal[z]).sum(1)
        zsub[sl] = torch.where(flag[sl], (proj > 0).long(), st.zsub[sl])
    st.zsub = zsub


def _labellings(m: int) -> torch.Tensor:
    """(2^m, m) float64 0/1 matrix of every sub-labelling of m points."""
    codes = torch.arange(2**m)
    return ((codes[:, None] >> torch.arange(m)) & 1).double()


def log_rho_table(
    phi: torch.Tensor, sizes: torch.Tensor, family: ConjugateFamily, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact sub-cluster conditional of C small clusters, batched.

    ``phi`` (C, M, Q) float64 holds each cluster's point features, zero-padded beyond ``sizes`` (C,).
    ``rho(zbar | X_k) ∝ Gamma(n_0 + alpha/2) Gamma(n_1 + alpha/2) f(X_k0) f(X_k1)`` is the posterior of
    the 2-component sub-mixture (Dirichlet(alpha/2, alpha/2) weights, NIW components) that the
    sub-cluster Gibbs steps leave invariant. Returns every labelling L (2^M, M) and log rho (C, 2^M),
    -inf for labellings that put a padding slot in sub-cluster 1.
    """
    c, m, q = phi.shape
    L = _labellings(m)
    G1 = torch.einsum("lm,cmq->clq", L, phi)
    G0 = phi.sum(1, keepdim=True) - G1
    lml = _log_ml(family, torch.cat([G0, G1], 1).reshape(-1, q)).view(c, 2, -1)
    n1 = L.sum(1)
    h = alpha / 2.0
    logw = torch.lgamma(sizes[:, None] - n1 + h) + torch.lgamma(n1 + h) + lml[:, 0] + lml[:, 1]
    pad = torch.arange(m)[None, :] >= sizes[:, None]  # (C, M)
    invalid = (L[None, :, :] * pad[:, None, :].double()).sum(-1) > 0
    logw = logw.masked_fill(invalid, -math.inf)
    return L, logw - torch.logsumexp(logw, 1, keepdim=True)


def _padded_features(st: SamplerState, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the features of point-index groups into (C, M, Q) float64, zero-padded; sizes (C,)."""
    m = max(int(g.numel()) for g in groups)
    phi = torch.zeros(len(groups), m, st.feats.q, dtype=torch.float64)
    allidx = torch.cat(groups)
    f = st.feats.feature_fn(st.feats.gather(allidx)).double().cpu()
    start = 0
    for i, g in enumerate(groups):  # loop over small clusters (few, each <= exact_max points)
        phi[i, : g.numel()] = f[start : start + g.numel()]
        start += g.numel()
    return phi, torch.tensor([float(g.numel()) for g in groups], dtype=torch.float64)


def _members(z: torch.Tensor, clusters: list[int]) -> list[torch.Tensor]:
    """Point indices of each listed cluster (one pass over the labels)."""
    flag = torch.zeros(int(z.max()) + 1 if z.numel() else 1, dtype=torch.bool, device=z.device)
    flag[torch.tensor(clusters, dtype=torch.long, device=z.device)] = True
    idx = torch.nonzero(flag[z]).flatten()
    zi = z[idx]
    return [idx[zi == c] for c in clusters]


def exact_subclusters(st: SamplerState, cfg: SamplerConfig) -> None:
    """Redraw the sub-labels of every cluster with at most ``cfg.exact_max`` points exactly from
    rho (a Gibbs move of the auxiliary variables) and store ``st.log_rho`` (K,): log of the
    probability ``2 rho(zbar_k | X_k)`` that the unordered split {X_k0, X_k1} is proposed (0 for
    larger clusters: Chang & Fisher's approximation that the proposed split is the sub-cluster mode).
    """
    k = st.k
    nc = st.G[:, -1].view(k, 2).sum(1)
    st.log_rho = torch.zeros(k, dtype=torch.float64)
    small = (nc <= cfg.exact_max) & (nc > 0.5)
    # a distributed fit cannot enumerate a cluster whose points lie on several ranks: there every
    # cluster takes Chang & Fisher's approximation
    if not bool(small.any()) or is_reducing():
        return
    clusters = torch.nonzero(small).flatten().tolist()
    groups = _members(st.z, clusters)
    phi, sizes = _padded_features(st, groups)
    L, lr = log_rho_table(phi, sizes, cfg.family, cfg.alpha)
    u = torch.rand(len(clusters), 1, generator=st.gen, dtype=torch.float64)
    j = (torch.cumsum(torch.exp(lr), 1) < u).sum(1).clamp(max=L.shape[0] - 1)
    lab = L[j]  # (C, M)
    st.log_rho[clusters] = math.log(2.0) + lr.gather(1, j[:, None]).squeeze(1)
    G1 = torch.einsum("cm,cmq->cq", lab, phi)
    st.G.view(k, 2, -1)[clusters, 1] = G1
    st.G.view(k, 2, -1)[clusters, 0] = phi.sum(1) - G1
    for i, g in enumerate(groups):  # few small clusters
        st.zsub[g] = lab[i, : g.numel()].long().to(st.zsub.device)


def _merge_log_rho(
    st: SamplerState, cfg: SamplerConfig, a: torch.Tensor, b: torch.Tensor, small: torch.Tensor
) -> torch.Tensor:
    """(P,) log ``2 rho(zbar | X_a + X_b)`` of the merged cluster's sub-labelling (a vs b) for the
    pairs flagged ``small`` (merged size <= exact_max); 0 elsewhere."""
    out = torch.zeros(a.shape[0], dtype=torch.float64)
    pairs = torch.nonzero(small).flatten().tolist()
    involved = sorted(set(a[pairs].tolist()) | set(b[pairs].tolist()))
    members = dict(zip(involved, _members(st.z, involved)))
    groups = [torch.cat([members[int(a[p])], members[int(b[p])]]) for p in pairs]
    phi, sizes = _padded_features(st, groups)
    L, lr = log_rho_table(phi, sizes, cfg.family, cfg.alpha)
    na = torch.tensor([members[int(a[p])].numel() for p in pairs])
    slot = torch.arange(L.shape[1])[None, :]
    code = ((slot >= na[:, None]) & (slot < sizes.long()[:, None])).long()  # b's points in sub-cluster 1
    code = (code << slot).sum(1)
    out[pairs] = math.log(2.0) + lr.gather(1, code[:, None]).squeeze(1)
    return out


def log_split_ratio(
    ns: torch.Tensor, lml_sub: torch.Tensor, lml_cluster: torch.Tensor, alpha: float
) -> torch.Tensor:
    """log H_s of splitting each cluster into its two sub-clusters, without the proposal term
    (Chang & Fisher eq. 16): ``log alpha + sum_j [log Gamma(N_kj) + log f(X_kj)] - log Gamma(N_k)
    - log f(X_k)``; sub-cluster sizes ns (K, 2), log marginal likelihoods lml_sub (K, 2), lml_cluster (K,)."""
    return (
        math.log(alpha)
        + (torch.lgamma(ns.clamp(min=1)) + lml_sub).sum(1)
        - torch.lgamma(ns.sum(1).clamp(min=1))
        - lml_cluster
    )


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
    lml = _log_ml(cfg.family, torch.cat([st.G, Gs.sum(1)])).double()
    log_h = log_split_ratio(ns, lml[: 2 * k].view(k, 2), lml[2 * k :], cfg.alpha) - st.log_rho
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
    """log Hastings ratio of merging clusters a and b, per pair: the exact inverse of the split ratio
    ``H_s`` (so that a merge undoes a split with the reciprocal probability):
    ``log H_m = log Gamma(N) f(X) - log alpha Gamma(N_a) f(X_a) Gamma(N_b) f(X_b)``.

    ``na``, ``nb`` are the cluster counts, ``lml_*`` the NIW log marginal likelihoods of the merged
    and of each cluster's data. Chang & Fisher's eq. 22 (and DPMMSubClusters) also multiply by the
    Dirichlet-multinomial prior probability of the merged sub-labelling, ``Gamma(alpha)
    Gamma(N_a + alpha/2) Gamma(N_b + alpha/2) / (Gamma(alpha/2)^2 Gamma(N + alpha))``, which the split
    ratio does not divide by; that factor (about exp(-N H(N_a/N)) for large clusters) made merges of
    large clusters all but impossible and biased K upward (the exact-enumeration test fails with it).
    The sub-cluster term that exact reversibility needs is ``2 rho(zbar | X)`` (see
    :func:`log_rho_table`), added by the sampler for small clusters.
    """
    lg = torch.lgamma
    return lg(na + nb) + lml_merged - math.log(alpha) - lg(na) - lml_a - lg(nb) - lml_b


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
    means = cfg.family.moments(Gc)[1]
    pairs = merge_candidates(means, cfg.n_merge_neighbors)
    if pairs.shape[0] == 0:
        return False
    ok_c = (~frozen) & (st.age >= cfg.split_delay)
    pairs = pairs[ok_c[pairs[:, 0]] & ok_c[pairs[:, 1]]]
    if pairs.shape[0] == 0:
        return False
    a, b = pairs[:, 0], pairs[:, 1]
    lml = _log_ml(cfg.family, torch.cat([Gc[a] + Gc[b], Gc])).double()
    lml_m, lml_c = lml[: pairs.shape[0]], lml[pairs.shape[0] :]
    log_h = log_merge_ratio(nc[a], nc[b], lml_m, lml_c[a], lml_c[b], cfg.alpha)
    small = (nc[a] + nc[b]) <= cfg.exact_max
    if bool(small.any()) and not is_reducing():  # exact log rho of the merged sub-labelling (a vs b)
        log_h = log_h + _merge_log_rho(st, cfg, a, b, small)
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
    """One full sweep (steps 0-4); returns the collapsed joint log p(X, z) after it. Step 0 (with
    ``cfg.alpha_prior``): alpha ~ p(alpha | K, N); the sub-labels, whose conditional depends on alpha,
    are redrawn after it (steps 2 and the exact sub-cluster draw), so (alpha, zbar) is a Gibbs block."""
    update_concentration(st, cfg)
    update_scale(st, cfg, iteration)
    sample_labels(st, cfg)
    k = st.k
    q = st.G.shape[1]
    ns = st.G[:, -1].view(k, 2)
    # sub-clusters start afresh when one of them emptied, and every ``reset_every`` sweeps of a
    # cluster's life (a rejected sub-cluster split may be a poor proposal, not a poor split)
    lonely = ((ns < 0.5).any(1)) & (ns.sum(1) > cfg.exact_max)
    stale = (
        (st.age >= cfg.split_delay) & (st.age % cfg.reset_every == 0) if cfg.reset_every else lonely & False
    )
    reset = lonely | stale
    exact_subclusters(st, cfg)
    # one move type per sweep, chosen at random: splits and merges are each other's reverse moves,
    # so only their mixture (not the composition split-then-merge) leaves the posterior invariant
    do_split = bool(torch.rand((), generator=st.gen) < 0.5)
    split, Gc = propose_splits(st, cfg, reset | (not do_split))
    # with split_delay > 0 the clusters a split created wait before they merge (heuristic); with
    # split_delay = 0 every pair may merge in the same sweep, as exact reversibility needs
    frozen = split & (cfg.split_delay > 0)
    frozen[:k] |= reset
    merged = False if do_split else propose_merges(st, cfg, frozen, Gc)
    fresh = split | frozen
    if merged or bool(fresh.any()):
        reset_subclusters(st, cfg.family, fresh, Gc)
        st.G = sub_statistics(st.feats, st.z, st.zsub, st.k)
        _compact(st)
    assert st.G.shape[1] == q
    st.age += 1
    joint = joint_log_prob(st, cfg)
    st.k_trace.append(st.k)
    st.joint_trace.append(joint)
    st.size_trace.append(cluster_statistics(st.G)[:, -1].round().numpy())
    if iteration >= cfg.burn_in:
        log_pi, mu = st.params
        st.draws_weights.append(torch.exp(log_pi).cpu())
        st.draws_means.append(mu.cpu())
        if len(st.draws_labels) < cfg.store_labels:
            st.draws_labels.append(st.z.to(torch.int32).clone())
    # point estimate: the post-burn-in sample of highest joint probability (the last one before)
    if iteration <= cfg.burn_in or joint >= st.best_joint:
        st.best_joint, st.best_z, st.best_sweep, st.best_k = joint, st.z.clone(), iteration, st.k
    return joint


def update_concentration(st: SamplerState, cfg: SamplerConfig) -> None:
    """Escobar & West's auxiliary-variable draw of alpha given the current K and N (when
    ``cfg.alpha_prior`` is set), recorded in ``st.alpha_trace``."""
    if cfg.alpha_prior is not None:
        n = float(st.G[:, -1].sum())
        cfg.alpha = sample_concentration(cfg.alpha, st.k, n, *cfg.alpha_prior, st.np_rng)
    st.alpha_trace.append(cfg.alpha)


def update_scale(st: SamplerState, cfg: SamplerConfig, iteration: int) -> None:
    """With ``cfg.scale_prior``: draw every cluster's covariance from its NIW posterior given the
    labels, then psi0 from its Wishart conditional given them (a data-augmentation Gibbs step on
    (z, psi0)); the family's prior is updated in place, and post-burn-in draws are summed."""
    if cfg.scale_prior is None:
        return
    niw = cfg.family.niw
    sigma = cfg.family.posterior(cluster_statistics(st.G)).sample(None)[1]
    prec = torch.linalg.inv(sigma)
    niw.psi0 = cfg.scale_prior.sample(prec, float(niw.nu0), st.np_rng).to(niw.psi0)
    if iteration >= cfg.burn_in:
        st.psi_sum = niw.psi0.clone() if st.psi_sum is None else st.psi_sum + niw.psi0
        st.psi_count += 1


def best_labels(st: SamplerState) -> tuple[torch.Tensor, int]:
    """The point estimate's labels (n,) renumbered 0..K-1 over the non-empty clusters, and K (the
    current labels when no sweep completed). Cluster sizes are summed over processes, so every rank
    numbers the clusters alike."""
    z, k = (st.z, st.k) if st.best_z is None else (st.best_z, st.best_k)
    counts = reduce_statistics(torch.bincount(z, minlength=k).double())
    keep = counts.to(z.device) > 0
    return (torch.cumsum(keep.long(), 0) - 1)[z], int(keep.sum())


def run_state_summary(st: SamplerState) -> dict[str, Any]:
    return {"k": st.k, "splits": st.n_splits, "merges": st.n_merges}
