"""The Dirichlet-process Gaussian mixture as a Pyro program, and its NIW posterior predictive.

The model (:func:`dp_mixture_model`) is

    v_k ~ Beta(1, alpha),  pi_k = v_k prod_{j<k} (1 - v_j)          (stick breaking)
    Lambda_k ~ Wishart(nu0, psi0^-1),  mu_k ~ N(m0, (kappa0 Lambda_k)^-1)   (NIW base measure)
    z_i ~ Categorical(pi),  x_i ~ N(mu_{z_i}, Lambda_{z_i}^-1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .priors import NIW


def mix_weights(beta: torch.Tensor) -> torch.Tensor:
    """Stick-breaking weights (T,) from T - 1 stick proportions (the last stick takes the rest)."""
    rest = torch.cumprod(1 - beta, -1)
    return torch.cat([beta, beta.new_ones(beta.shape[:-1] + (1,))], -1) * torch.cat(
        [beta.new_ones(beta.shape[:-1] + (1,)), rest], -1
    )


def dp_mixture_model(
    X: torch.Tensor | None, *, alpha: float, prior: NIW, truncation: int, n: int | None = None
) -> torch.Tensor:
    """Pyro program of the (truncated) DP Gaussian mixture; returns the observations.

    ``X`` (N, D) observed, or ``None`` to draw ``n`` points from the prior predictive.
    """
    import pyro
    import pyro.distributions as dist

    d = prior.dim
    n = X.shape[0] if X is not None else int(n)  # type: ignore[arg-type]
    dt = prior.m0.dtype
    with pyro.plate("sticks", truncation - 1):
        beta = pyro.sample("beta", dist.Beta(torch.ones((), dtype=dt), torch.tensor(alpha, dtype=dt)))
    weights = mix_weights(beta)
    psi_inv = torch.cholesky_inverse(torch.linalg.cholesky(prior.psi0))
    with pyro.plate("components", truncation):
        lam = pyro.sample("precision", dist.Wishart(df=prior.nu0, covariance_matrix=psi_inv))
        mu = pyro.sample(
            "mu", dist.MultivariateNormal(prior.m0.expand(truncation, d), precision_matrix=prior.kappa0 * lam)
        )
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Categorical(weights))
        return pyro.sample("obs", dist.MultivariateNormal(mu[z], precision_matrix=lam[z]), obs=X)


def student_t_logpdf(Xs: torch.Tensor, post: dict[str, torch.Tensor]) -> torch.Tensor:
    """log of the NIW posterior predictive (multivariate Student-t) of each cluster at the rows of
    Xs (n, D), (n, K); ``post`` holds the batched NIW "m" (K, D), "kappa", "nu" (K,), "psi" (K, D, D).
    Memory O(n K D): callers pass blocks of rows (``inference.streaming.map_rows``)."""
    m, kappa, nu, psi = post["m"], post["kappa"], post["nu"], post["psi"]
    d = m.shape[1]
    df = nu - d + 1
    scale = psi * ((kappa + 1) / (kappa * df))[:, None, None]
    chol = torch.linalg.cholesky(scale)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    const = (
        torch.lgamma((df + d) / 2) - torch.lgamma(df / 2) - 0.5 * d * torch.log(df * math.pi) - 0.5 * logdet
    )
    diff = (Xs.double()[None, :, :] - m[:, None, :]).transpose(1, 2)  # (K, D, n)
    sol = torch.linalg.solve_triangular(chol, diff, upper=False)
    maha = (sol * sol).sum(1).T  # (n, K)
    return const - 0.5 * (df + d) * torch.log1p(maha / df)


def sample_concentration(
    alpha: float, k: int, n: float, shape: float, rate: float, rng: np.random.Generator
) -> float:
    """One draw of the DP concentration from p(alpha | K, N) under a Gamma(shape, rate) prior
    (Escobar & West 1995, Sec. 6): ``eta ~ Beta(alpha + 1, N)``, then alpha from the two-component
    Gamma mixture ``pi Gamma(a + K, b - log eta) + (1 - pi) Gamma(a + K - 1, b - log eta)`` with
    ``pi / (1 - pi) = (a + K - 1) / (N (b - log eta))``. The partition enters only through K and N."""
    eta = max(float(rng.beta(alpha + 1.0, max(n, 1e-12))), 1e-300)
    r = rate - math.log(eta)
    odds = (shape + k - 1.0) / (max(n, 1e-12) * r)
    a_post = shape + k if rng.random() < odds / (1.0 + odds) else shape + k - 1.0
    return float(max(rng.gamma(max(a_post, 1e-12), 1.0 / r), 1e-300))


def log_crp_alpha_marginal(sizes: torch.Tensor, shape: float, rate: float, grid: int = 4000) -> float:
    """log p(partition) with alpha ~ Gamma(shape, rate) integrated out numerically on a log-alpha
    grid (for tests and checks on tiny problems): ``int Gamma(alpha) alpha^K Gamma(alpha) /
    Gamma(alpha + N) prod_k Gamma(n_k) d alpha``; ``sizes`` (K,) float64."""
    la = torch.linspace(-12.0, 8.0, grid, dtype=torch.float64)
    a = la.exp()
    k, n = sizes.numel(), sizes.sum()
    log_prior = shape * math.log(rate) - math.lgamma(shape) + (shape - 1) * la - rate * a
    log_crp = k * la + torch.lgamma(a) - torch.lgamma(a + n) + torch.lgamma(sizes).sum()
    f = log_prior + log_crp + la  # d alpha = alpha d log alpha
    return float(torch.logsumexp(f, 0) + math.log(float(la[1] - la[0])))
