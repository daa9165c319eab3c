"""Truncated stick-breaking mean-field VI for the DP Gaussian mixture (Blei & Jordan 2006).

The model of scikit-learn's ``BayesianGaussianMixture(weight_concentration_prior_type=
"dirichlet_process")`` with ``T`` components: q(v_k) = Beta(g1_k, g2_k) for the sticks,
q(mu_k, Sigma_k) = NIW(m_k, kappa_k, nu_k, psi_k), q(z_i) = Categorical(r_i). One iteration
(:func:`vi_step`) is a chunked E-step (responsibilities via one matmul ``phi(x) @ A``, see
splitmerge.gaussian_coefficients) accumulating G = r^T phi, then the closed-form updates

    g1_k = 1 + N_k,  g2_k = alpha + sum_{j > k} N_j,  NIW_k = prior.posterior(N_k, sum x, sum xx^T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.gaussian import GaussianFamily, gaussian_coefficients
from ..models.priors import NIW
from .distributed import broadcast
from .kmeans import kmeans_plusplus, lloyd, nearest_center
from .streaming import Features, map_chunks, reduce_statistics, scatter_statistics


@dataclass
class VIState:
    feats: Features
    family: GaussianFamily  # full covariances; its NIW prior in float64
    alpha: float
    g1: torch.Tensor  # (T,)
    g2: torch.Tensor  # (T,)
    post: NIW  # (T,) batched variational NIW
    n: torch.Tensor  # (T,) expected counts


def expected_log_weights(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """E[log pi_k] = E[log v_k] + sum_{j<k} E[log(1 - v_j)] for Beta(g1, g2) sticks."""
    dg = torch.digamma(g1 + g2)
    e_log_v = torch.digamma(g1) - dg
    e_log_1mv = torch.digamma(g2) - dg
    return e_log_v + torch.cat([e_log_v.new_zeros(1), torch.cumsum(e_log_1mv, 0)[:-1]])


def expected_weights(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """E[pi_k] = E[v_k] prod_{j<k} E[1 - v_j]."""
    ev = g1 / (g1 + g2)
    return ev * torch.cat([ev.new_ones(1), torch.cumprod(1 - ev, 0)[:-1]])


def log_rho_coefficients(st: VIState) -> torch.Tensor:
    """A (Q, T): phi(x) @ A = E[log pi_k] + E[log N(x | mu_k, Sigma_k)] under q."""
    post, d = st.post, st.family.dim
    sigma = post.psi0 / post.nu0[:, None, None]  # (x-m)^T nu psi^-1 (x-m) as a Gaussian with psi/nu
    j = torch.arange(d, dtype=sigma.dtype)
    logdet_psi = torch.linalg.slogdet(post.psi0)[1]
    e_logdet_lam = torch.digamma((post.nu0[:, None] - j) / 2.0).sum(1) + d * math.log(2.0) - logdet_psi
    logdet_sigma = logdet_psi - d * torch.log(post.nu0)
    # gaussian_coefficients adds -0.5 logdet(sigma); replace it by +0.5 E[log|Lambda|] - D / (2 kappa)
    extra = 0.5 * e_logdet_lam + 0.5 * logdet_sigma - 0.5 * d / post.kappa0
    return gaussian_coefficients(post.m0, sigma, expected_log_weights(st.g1, st.g2) + extra)


def m_step(st: VIState, G: torch.Tensor) -> None:
    n = G[:, -1]
    st.n = n
    st.post = st.family.posterior(G)
    st.g1 = 1.0 + n
    st.g2 = st.alpha + (n.sum() - torch.cumsum(n, 0))


def vi_step(st: VIState) -> float:
    """One E + M iteration; returns the mean log normaliser of the E-step (per point)."""
    feats = st.feats
    A = log_rho_coefficients(st).to(device=feats.X.device, dtype=feats.X.dtype)
    G = torch.zeros(A.shape[1], feats.q, dtype=torch.float64, device=feats.X.device)
    total = torch.zeros(2, dtype=torch.float64, device=feats.X.device)  # sum of lse, number of points
    total[1] = feats.n
    for sl in feats.slices():
        phi = feats(sl)
        logits = phi @ A
        lse = torch.logsumexp(logits, 1, keepdim=True)
        total[0] += lse.sum(dtype=torch.float64)
        G += (torch.exp(logits - lse).T @ phi).double()
    m_step(st, reduce_statistics(G).cpu())
    total = reduce_statistics(total)  # over every process: the mean is per point of the whole data
    return float(total[0]) / float(total[1])


def init_vi(
    feats: Features,
    family: GaussianFamily,
    alpha: float,
    truncation: int,
    generator: torch.Generator,
    sample: torch.Tensor | None = None,
) -> VIState:
    """Variational state started from hard k-means labels (k-means++ seeding, 10 Lloyd iterations)
    on ``sample`` (m, D) rows in the frame of ``feats`` (default: all of ``feats.X``); with a sample
    (data out of core) every point is then labelled chunk by chunk."""
    X = feats.X if sample is None else sample
    k = min(truncation, X.shape[0])
    centres = lloyd(X, kmeans_plusplus(X, k, generator, n_local_trials=1), 10)
    centres = broadcast(centres)  # a distributed fit starts every rank from rank 0's centres
    if sample is None:
        labels = nearest_center(X, centres)
    else:
        labels = map_chunks(lambda x: nearest_center(x, centres), feats)
    G = scatter_statistics(feats, labels, truncation)
    st = VIState(feats, family, alpha, None, None, None, None)  # type: ignore[arg-type]
    m_step(st, G)
    return st
