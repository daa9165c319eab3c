"""DeepDPM-style neural DP mixture (Ronen, Finder & Freifeld, CVPR 2022), in batched torch.

One engine iteration (:func:`deep_step`) is an epoch of

1. E-step: responsibilities r (N, K) of the current Gaussians and, within each point's cluster,
   sub-responsibilities of the two sub-Gaussians;
2. neural step: the clustering net (MLP, K softmax outputs) is trained on mini-batches with
   KL(r || net(x)); the K sub-clustering nets (batched two-way MLPs) with KL to the
   sub-responsibilities of the points' clusters;
3. M-step: NIW MAP (posterior mode) of every cluster and sub-cluster from the nets' soft assignments;
4. every ``split_every`` epochs, splits and merges with the Hastings ratios of the sub-cluster
   sampler (inference/splitmerge.py) on the nets' hard assignments. An accepted split duplicates the
   cluster's output unit (the copies start from the sub-cluster Gaussians); a merge removes one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..models import gaussian
from ..models.deepdpm import NET_DTYPE, ClusterNet, SubNets
from . import distributed, streaming
from . import splitmerge as sm
from .distributed import check_equal_shards
from .neural import evaluate_rows, optimizer_step
from .responsibilities import exp_normalise_


@dataclass
class DeepState:
    feats: streaming.Features  # the family's statistics map
    family: gaussian.GaussianFamily  # full covariances with an NIW prior (float64)
    alpha: float
    net: ClusterNet
    subnets: SubNets
    gen: torch.Generator
    np_rng: np.random.Generator
    hidden: int
    lr: float
    batch_size: int
    split_every: int
    split_delay: int
    n_merge_neighbors: int
    min_steps: int = 25
    mu: torch.Tensor | None = None  # (K, D) float64
    sigma: torch.Tensor | None = None  # (K, D, D)
    log_pi: torch.Tensor | None = None  # (K,)
    sub: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (K,2,D), (K,2,D,D), (K,2)
    age: torch.Tensor | None = None
    n_splits: int = 0
    n_merges: int = 0
    # per-point draws (mini-batch orders): seeded per process, so that ``gen`` draws only what every
    # rank of a distributed fit must share (network initialisations, split / merge decisions)
    point_gen: torch.Generator | None = None
    x_net: torch.Tensor | None = None  # the rows the nets see: feats.X in NET_DTYPE (N, D)

    @property
    def k(self) -> int:
        return self.net.head.out_features


def _positive_definite(sigma: torch.Tensor, fallback: torch.Tensor, rel_floor: float = 1e-6) -> torch.Tensor:
    """Batched covariances (..., D, D) made safely positive definite.

    Statistics accumulated in float32 lose digits to cancellation in ``sxx - n mu mu^T`` for a tight
    cluster far from the origin, which can leave a posterior scatter with a negative eigenvalue
    (seen on MNIST-UMAP: a Cholesky failure). Matrices whose Cholesky fails get their eigenvalues
    floored at ``rel_floor`` times their largest one; a matrix with no positive eigenvalue becomes
    ``fallback`` (D, D). The others are returned unchanged.
    """
    sigma = 0.5 * (sigma + sigma.transpose(-1, -2))
    bad = torch.linalg.cholesky_ex(sigma)[1] != 0
    if not bool(bad.any()):
        return sigma
    evals, evecs = torch.linalg.eigh(sigma)
    top = evals.amax(-1, keepdim=True)
    fixed = (evecs * evals.clamp_min(rel_floor * top.clamp_min(0)).unsqueeze(-2)) @ evecs.transpose(-1, -2)
    fixed = torch.where((top > 0)[..., None], 0.5 * (fixed + fixed.transpose(-1, -2)), fallback.to(sigma))
    return torch.where(bad[..., None, None], fixed, sigma)


def _map_params(family: gaussian.GaussianFamily, G: torch.Tensor, alpha: float) -> tuple[torch.Tensor, ...]:
    """NIW posterior modes (mu, Sigma) and MAP weights from statistics G (M, Q)."""
    prior, n = family.niw, G[:, -1]
    mu, sigma = family.posterior(G).mode("covariance")
    prior_mode = prior.psi0 / (prior.nu0 + prior.dim + 2)  # the prior NIW mode of Sigma
    sigma = _positive_definite(sigma + 1e-6 * torch.eye(prior.dim, dtype=sigma.dtype), prior_mode)
    w = n + alpha / max(1, n.numel())
    return mu, sigma, torch.log(w / w.sum())


def _log_dens(
    feats: streaming.Features, mu: torch.Tensor, sigma: torch.Tensor, log_w: torch.Tensor
) -> torch.Tensor:
    """log w_m + log N(x | mu_m, sigma_m) for every point and Gaussian (N, M), chunk by chunk."""
    A = gaussian.gaussian_coefficients(
        mu.reshape(-1, mu.shape[-1]), sigma.reshape(-1, *sigma.shape[-2:]), log_w.reshape(-1)
    ).to(feats.X)
    return torch.cat([feats(sl) @ A for sl in feats.slices()])


def init_deep(
    feats: streaming.Features,
    family: gaussian.GaussianFamily,
    alpha: float,
    gen: torch.Generator,
    *,
    hidden: int = 64,
    lr: float = 1e-3,
    batch_size: int = 1024,
    split_every: int = 3,
    split_delay: int = 3,
    n_merge_neighbors: int = 3,
) -> DeepState:
    # a distributed fit: equal shards keep the shared generator (mini-batch orders are drawn from
    # it) in step on every rank, and the same number of gradient all-reduces per epoch
    check_equal_shards(feats.n)
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    to_net = {"device": feats.X.device, "dtype": NET_DTYPE}
    net = ClusterNet(feats.d, 1, hidden).to(**to_net)
    subnets = SubNets(feats.d, 1, hidden // 2, gen).to(**to_net)
    np_rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    st = DeepState(
        feats,
        family,
        alpha,
        net,
        subnets,
        gen,
        np_rng,
        hidden,
        lr,
        batch_size,
        split_every,
        split_delay,
        n_merge_neighbors,
    )
    st.x_net = feats.X.to(NET_DTYPE)
    st.point_gen = torch.Generator()
    st.point_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)) + distributed.rank())
    z = torch.zeros(feats.n, dtype=torch.long)
    Gc = sm.cluster_statistics(sm.sub_statistics(feats, z, z, 1))
    st.mu, st.sigma, st.log_pi = _map_params(family, Gc, alpha)
    st.age = torch.zeros(1, dtype=torch.long)
    _set_sub_from_labels(st, z, _hyperplane_sublabels(st, z, Gc))
    return st


def _hyperplane_sublabels(st: DeepState, z: torch.Tensor, Gc: torch.Tensor) -> torch.Tensor:
    """Sub-labels (n,) of points with cluster labels ``z`` (n,): the side of a random hyperplane
    through each cluster's mean (normals from the shared generator; ``Gc`` (K, Q) the cluster
    statistics of ``z`` over every process), as splitmerge.reset_subclusters draws them."""
    tmp = sm.SamplerState(
        st.feats, z, torch.zeros_like(z), torch.zeros(2 * st.k, Gc.shape[1], dtype=torch.float64),
        st.age, torch.Generator(), st.gen, st.np_rng,
    )
    sm.reset_subclusters(tmp, st.family, torch.ones(st.k, dtype=torch.bool), Gc)
    return tmp.zsub


def _set_sub_from_labels(st: DeepState, z: torch.Tensor, zs: torch.Tensor) -> None:
    G = sm.sub_statistics(st.feats, z, zs, st.k)
    mu, sigma, _ = _map_params(st.family, G, st.alpha)
    ns = G[:, -1].view(-1, 2) + st.alpha / 2
    st.sub = (
        mu.view(-1, 2, st.family.dim),
        sigma.view(-1, 2, st.family.dim, st.family.dim),
        torch.log(ns / ns.sum(1, keepdim=True)),
    )


def deep_step(st: DeepState, iteration: int) -> float:
    X = st.x_net
    n, d, k = st.feats.n, st.feats.d, st.k
    # 1. E-step (cluster and sub-cluster responsibilities of the current Gaussians)
    logits = _log_dens(st.feats, st.mu, st.sigma, st.log_pi)
    loglik = _mean_loglik(logits)
    r = _softmax(logits)
    z = r.argmax(1)
    r = r.to(NET_DTYPE)
    smu, ssig, slw = st.sub
    sub_all = _log_dens(st.feats, smu, ssig, slw).view(n, k, 2)
    sub_r = _two_way(sub_all.gather(1, z.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)).to(NET_DTYPE)
    # 2. neural step: one pass of mini-batches
    opt = torch.optim.Adam(list(st.net.parameters()) + list(st.subnets.parameters()), lr=st.lr)
    n_steps = max(math.ceil(n / st.batch_size), st.min_steps)
    order = torch.cat(
        [torch.randperm(n, generator=st.point_gen) for _ in range(math.ceil(n_steps * st.batch_size / n))]
    )
    for step in range(n_steps):  # mini-batches of one epoch (at least ``min_steps`` of them)
        b = order[step * st.batch_size : (step + 1) * st.batch_size]
        xb = X[b]
        loss = -(r[b] * torch.log_softmax(st.net(xb), 1)).sum(1).mean()
        sl = st.subnets(xb).gather(1, z[b].view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
        sl = torch.log_softmax(sl, 1)  # the two-way output of each point's own cluster
        optimizer_step(opt, loss - (sub_r[b] * sl).sum(1).mean())
    # 3. M-step from the nets' soft assignments
    with torch.no_grad():
        q = _softmax(evaluate_rows(st.net, X)).to(st.feats.X.dtype)
        s = _two_way(evaluate_rows(st.subnets, X)).to(st.feats.X.dtype)
        Gc = streaming.weighted_statistics(st.feats, q).double().cpu()
        Gs = streaming.weighted_statistics(st.feats, (q[:, :, None] * s).reshape(n, 2 * k)).double().cpu()
    st.mu, st.sigma, st.log_pi = _map_params(st.family, Gc, st.alpha)
    mu_s, sig_s, _ = _map_params(st.family, Gs, st.alpha)
    ns = Gs[:, -1].view(k, 2) + st.alpha / 2
    st.sub = (mu_s.view(k, 2, d), sig_s.view(k, 2, d, d), torch.log(ns / ns.sum(1, keepdim=True)))
    st.age += 1
    # 4. split / merge on hard assignments
    if iteration > 0 and iteration % st.split_every == 0:
        with torch.no_grad():
            zh = q.argmax(1)
            zs = s.gather(1, zh.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1).argmax(1)
        _split_merge(st, zh, zs)
    return loglik


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of (N, K) logits, overwritten (torch.softmax over a short last dim is
    several times slower on a CPU than these four passes)."""
    resp, norm, _ = exp_normalise_(logits, 1)
    return resp.div_(norm)


def _two_way(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over a last dim of size 2 (..., 2), as two sigmoids of the difference."""
    diff = logits[..., 1] - logits[..., 0]
    return torch.stack([torch.sigmoid(-diff), torch.sigmoid(diff)], -1)


def _mean_loglik(logits: torch.Tensor) -> float:
    """Mean log-likelihood per point of log joint densities (N, K), over every process's points."""
    lse = torch.logsumexp(logits.double(), 1)
    if not streaming.is_reducing():
        return float(lse.mean())
    total = streaming.reduce_statistics(torch.stack([lse.sum(), lse.new_tensor(float(lse.numel()))]))
    return float(total[0] / total[1])


def _split_merge(st: DeepState, z: torch.Tensor, zs: torch.Tensor) -> None:
    k = st.k
    G = sm.sub_statistics(st.feats, z, zs, k)
    Gs = G.view(k, 2, -1)
    ns = Gs[:, :, -1]
    Gc = Gs.sum(1)
    lml = sm._log_ml(st.family, torch.cat([G, Gc]))
    lml_s, lml_c = lml[: 2 * k].view(k, 2), lml[2 * k :]
    log_h = sm.log_split_ratio(ns, lml_s, lml_c, st.alpha)
    ok = (ns > 0.5).all(1) & (st.age >= st.split_delay)
    accept = ok & (torch.log(torch.rand(k, generator=st.gen, dtype=torch.float64)) < log_h)
    if bool(accept.any()):
        idx = torch.nonzero(accept).squeeze(1)
        st.net.resize(torch.arange(k), idx)  # duplicate the output units of the split clusters
        smu, ssig, _ = st.sub
        mu = torch.cat([torch.where(accept[:, None], smu[:, 0], st.mu), smu[idx, 1]])
        sigma = torch.cat([torch.where(accept[:, None, None], ssig[:, 0], st.sigma), ssig[idx, 1]])
        counts = torch.cat([torch.where(accept, ns[:, 0], ns.sum(1)), ns[idx, 1]]) + st.alpha / (
            k + idx.numel()
        )
        st.mu, st.sigma, st.log_pi = mu, sigma, torch.log(counts / counts.sum())
        st.age = torch.cat([torch.where(accept, 0, st.age), torch.zeros(idx.numel(), dtype=torch.long)])
        st.n_splits += int(idx.numel())
        _refresh_subnets(st)
        return
    # merges of nearby pairs (the inverse move), one per sweep at most
    nc = Gc[:, -1]
    pairs = sm.merge_candidates(st.mu.float(), st.n_merge_neighbors)
    pairs = pairs[(st.age[pairs[:, 0]] >= st.split_delay) & (st.age[pairs[:, 1]] >= st.split_delay)]
    pairs = pairs[(nc[pairs[:, 0]] > 0.5) & (nc[pairs[:, 1]] > 0.5)] if pairs.numel() else pairs
    if pairs.shape[0] == 0:
        # a cluster that lost all its points is removed
        _drop_empty(st, nc)
        return
    a, b = pairs[:, 0], pairs[:, 1]
    lml_m = sm._log_ml(st.family, Gc[a] + Gc[b])
    lh = sm.log_merge_ratio(nc[a], nc[b], lml_m, lml_c[a], lml_c[b], st.alpha)
    best = int(torch.argmax(lh))
    if math.log(float(torch.rand(1, generator=st.gen))) < float(lh[best]):
        ka, kb = int(a[best]), int(b[best])
        keep = torch.tensor([j for j in range(k) if j != kb])
        st.net.resize(keep, torch.zeros(0, dtype=torch.long))
        mu, sigma, _ = _map_params(st.family, (Gc[ka] + Gc[kb])[None], st.alpha)
        st.mu[ka], st.sigma[ka] = mu[0], sigma[0]
        counts = nc.clone()
        counts[ka] += counts[kb]
        st.mu, st.sigma, counts = st.mu[keep], st.sigma[keep], counts[keep] + st.alpha / keep.numel()
        st.log_pi = torch.log(counts / counts.sum())
        st.age = st.age[keep]
        st.age[keep.tolist().index(ka)] = 0
        st.n_merges += 1
        _refresh_subnets(st)
    else:
        _drop_empty(st, nc)


def _drop_empty(st: DeepState, nc: torch.Tensor) -> None:
    """Remove clusters that own no point (old enough for their output unit to have been trained)."""
    keep = torch.nonzero((nc > 0.5) | (st.age < st.split_delay)).squeeze(1)
    if keep.numel() == st.k or keep.numel() == 0:
        return
    st.net.resize(keep, torch.zeros(0, dtype=torch.long))
    st.mu, st.sigma = st.mu[keep], st.sigma[keep]
    lw = st.log_pi[keep]
    st.log_pi = lw - torch.logsumexp(lw, 0)
    st.age = st.age[keep]
    _refresh_subnets(st)


def _refresh_subnets(st: DeepState) -> None:
    """New sub-clustering nets (one per cluster) and sub-Gaussians from a random hyperplane split."""
    st.subnets = SubNets(st.family.dim, st.k, st.hidden // 2, st.gen).to(st.x_net)
    z = evaluate_rows(st.net, st.x_net).argmax(1)
    Gc = sm.cluster_statistics(sm.sub_statistics(st.feats, z, torch.zeros_like(z), st.k))
    _set_sub_from_labels(st, z, _hyperplane_sublabels(st, z, Gc))
