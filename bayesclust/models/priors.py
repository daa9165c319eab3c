"""Conjugate priors, batched over clusters: Dirichlet and Normal-inverse-Wishart (NIW).

Sufficient statistics of cluster k are ``n[k]`` (count, or total responsibility), ``sx[k] = sum x``
(D,) and ``sxx[k] = sum x x^T`` (D, D). All functions broadcast over leading cluster dimensions.
References: Murphy (2007), "Conjugate Bayesian analysis of the Gaussian distribution", Sec. 9;
Chang & Fisher (2013) for the use in split/merge Hastings ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_scalar


def mvlgamma(a: torch.Tensor, d: int) -> torch.Tensor:
    """Log multivariate gamma ``log Gamma_d(a)`` for tensor ``a`` (any shape)."""
    j = torch.arange(d, dtype=a.dtype, device=a.device)
    return d * (d - 1) / 4.0 * math.log(math.pi) + torch.lgamma(a.unsqueeze(-1) - j / 2.0).sum(-1)


@dataclass
class NIW:
    """Normal-inverse-Wishart prior ``mu | Sigma ~ N(m0, Sigma / kappa0)``, ``Sigma ~ IW(nu0, psi0)``.

    Shapes: ``m0`` (..., D), ``kappa0`` and ``nu0`` (...,), ``psi0`` (..., D, D); leading
    dimensions index clusters so posteriors for all clusters are one object.
    """

    m0: torch.Tensor
    kappa0: torch.Tensor
    nu0: torch.Tensor
    psi0: torch.Tensor

    def __post_init__(self) -> None:
        ref = self.m0
        self.kappa0 = torch.as_tensor(self.kappa0, dtype=ref.dtype, device=ref.device)
        self.nu0 = torch.as_tensor(self.nu0, dtype=ref.dtype, device=ref.device)
        self.psi0 = torch.as_tensor(self.psi0, dtype=ref.dtype, device=ref.device)
        d = ref.shape[-1]
        if bool((self.kappa0 <= 0).any()):
            raise ValueError(f"NIW kappa0 must be > 0, got {self.kappa0}.")
        if bool((self.nu0 <= d - 1).any()):
            raise ValueError(f"NIW nu0 must be > D - 1 = {d - 1}, got {self.nu0}.")
        if self.psi0.shape[-2:] != (d, d):
            raise ValueError(f"NIW psi0 must be (D, D) = ({d}, {d}), got {tuple(self.psi0.shape)}.")

    @property
    def dim(self) -> int:
        return self.m0.shape[-1]

    @classmethod
    def from_data(
        cls,
        X: torch.Tensor,
        *,
        kappa0: float = 1e-2,
        nu0: float | None = None,
        psi_scale: float = 1.0,
        m0: torch.Tensor | None = None,
        psi0: torch.Tensor | None = None,
    ) -> NIW:
        """Weakly informative prior from data ``X`` (N, D).

        Defaults: ``m0`` = data mean; ``kappa0 = 0.01`` (the mean prior is worth 1% of a point);
        ``nu0 = D + 2`` (the smallest integer df with a finite prior mean of Sigma);
        ``psi0 = psi_scale * diag(var(X)) * (nu0 - D - 1)`` so that ``E[Sigma] = psi_scale * diag(var)``.
        """
        d = X.shape[-1]
        check_scalar(kappa0, "kappa0", low=0, low_inclusive=False)
        nu = float(d + 2) if nu0 is None else check_scalar(nu0, "nu0", low=d - 1, low_inclusive=False)
        mean = X.mean(0) if m0 is None else torch.as_tensor(m0, dtype=X.dtype, device=X.device)
        if psi0 is None:
            var = X.var(0, unbiased=False) if X.shape[0] > 1 else torch.ones(d, dtype=X.dtype)
            var = torch.clamp(var, min=1e-6 * float(var.max().clamp(min=1e-12)))
            psi = torch.diag(var) * psi_scale * max(nu - d - 1.0, 1.0)
        else:
            psi = torch.as_tensor(psi0, dtype=X.dtype, device=X.device)
        return cls(mean, torch.tensor(kappa0, dtype=X.dtype), torch.tensor(nu), psi)

    # ------------------------------------------------------------------ conjugacy
    def posterior(self, n: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor) -> NIW:
        """Posterior given batched statistics ``n`` (K,), ``sx`` (K, D), ``sxx`` (K, D, D)."""
        kn = self.kappa0 + n
        nun = self.nu0 + n
        mn = (self.kappa0.unsqueeze(-1) * self.m0 + sx) / kn.unsqueeze(-1)
        outer0 = self.kappa0[..., None, None] * self.m0.unsqueeze(-1) * self.m0.unsqueeze(-2)
        outern = kn[..., None, None] * mn.unsqueeze(-1) * mn.unsqueeze(-2)
        psin = self.psi0 + sxx + outer0 - outern
        psin = 0.5 * (psin + psin.transpose(-1, -2))
        return NIW.__new__(NIW)._set(mn, kn, nun, psin)

    def _set(self, m0, kappa0, nu0, psi0) -> NIW:  # no re-validation for internal posteriors
        self.m0, self.kappa0, self.nu0, self.psi0 = m0, kappa0, nu0, psi0
        return self

    def log_marginal_likelihood(
        self, n: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor
    ) -> torch.Tensor:
        """``log p(X_k)`` with mu, Sigma integrated out, for each cluster (K,).

        log p = -n D/2 log(pi) + log G_D(nu_n/2) - log G_D(nu_0/2)
                + nu_0/2 log|psi_0| - nu_n/2 log|psi_n| + D/2 (log kappa_0 - log kappa_n)
        (Murphy 2007, eq. 266).
        """
        d = self.dim
        post = self.posterior(n, sx, sxx)
        logdet0 = torch.linalg.slogdet(self.psi0)[1]
        logdetn = _logdet_psd(post.psi0)
        return (
            -0.5 * n * d * math.log(math.pi)
            + mvlgamma(post.nu0 / 2.0, d)
            - mvlgamma(self.nu0 / 2.0, d)
            + 0.5 * self.nu0 * logdet0
            - 0.5 * post.nu0 * logdetn
            + 0.5 * d * (torch.log(self.kappa0) - torch.log(post.kappa0))
        )

    def log_prob(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Density of (mu, Sigma) under NIW: N(mu; m0, Sigma/kappa0) * IW(Sigma; nu0, psi0)."""
        d = self.dim
        chol = torch.linalg.cholesky(sigma)
        diff = (mu - self.m0).unsqueeze(-1)
        z = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        logdet_s = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_n = (
            -0.5 * d * math.log(2 * math.pi)
            + 0.5 * d * torch.log(self.kappa0)
            - 0.5 * logdet_s
            - 0.5 * self.kappa0 * (z * z).sum(-1)
        )
        sinv_psi = torch.cholesky_solve(self.psi0, chol)
        log_iw = (
            0.5 * self.nu0 * torch.linalg.slogdet(self.psi0)[1]
            - 0.5 * self.nu0 * d * math.log(2.0)
            - mvlgamma(self.nu0 / 2.0, d)
            - 0.5 * (self.nu0 + d + 1) * logdet_s
            - 0.5 * torch.diagonal(sinv_psi, dim1=-2, dim2=-1).sum(-1)
        )
        return log_n + log_iw

    def mode(self, parametrization: str = "precision") -> tuple[torch.Tensor, torch.Tensor]:
        """Joint mode (mu, Sigma).

        ``"precision"``: the mode of the Normal-Wishart density over (mu, Lambda), mapped to
        Sigma = psi / (nu - D) (the parametrisation of the Pyro model, so EM-MAP = SVI-MAP);
        ``"covariance"``: the mode of the NIW density over (mu, Sigma), psi / (nu + D + 2).
        """
        d = self.dim
        if parametrization == "precision":
            denom = self.nu0 - d
        elif parametrization == "covariance":
            denom = self.nu0 + d + 2
        else:
            raise ValueError(
                f"parametrization={parametrization!r} is not supported; use 'precision' or 'covariance'."
            )
        return self.m0, self.psi0 / denom[..., None, None]

    def mean_covariance(self) -> torch.Tensor:
        """Posterior mean of Sigma, psi / (nu - D - 1) (finite for nu > D + 1)."""
        return self.psi0 / (self.nu0 - self.dim - 1)[..., None, None]

    def sample(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw (mu, Sigma) per leading index, via the Bartlett decomposition of the Wishart."""
        d = self.dim
        batch = self.psi0.shape[:-2]
        dtype, dev = self.psi0.dtype, self.psi0.device
        # Lambda ~ W(nu, psi^-1): Lambda = L A A^T L^T with L L^T = psi^-1 (Bartlett).
        psi_inv = torch.cholesky_inverse(_cholesky_psd(self.psi0))
        psi_inv_chol = _cholesky_psd(psi_inv)
        nu = self.nu0.expand(batch) if self.nu0.ndim < len(batch) else self.nu0
        j = torch.arange(d, dtype=dtype, device=dev)
        conc = (nu.unsqueeze(-1) - j) / 2.0
        chi2 = 2.0 * torch._standard_gamma(conc.cpu()).to(dev) if generator is None else (
            2.0 * _gamma(conc, generator)
        )
        a = torch.diag_embed(chi2.sqrt())
        tril = torch.tril(torch.randn(*batch, d, d, dtype=dtype, generator=generator).to(dev), -1)
        a = a + tril
        lam_chol = psi_inv_chol @ a
        sigma_chol = torch.linalg.inv(lam_chol).transpose(-1, -2)  # Sigma = (LA)^-T (LA)^-1
        sigma = sigma_chol @ sigma_chol.transpose(-1, -2)
        kappa = self.kappa0
        eps = torch.randn(*batch, d, dtype=dtype, generator=generator).to(dev)
        mu = self.m0 + (sigma_chol @ eps.unsqueeze(-1)).squeeze(-1) / torch.sqrt(kappa).unsqueeze(-1)
        return mu, sigma


def _gamma(conc: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(conc, 1) draws with an explicit generator (Marsaglia-Tsang via torch.distributions)."""
    # torch's _standard_gamma takes no generator; draw through a seeded CPU state instead.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch._standard_gamma(conc.detach().cpu()).to(conc.device)


def _cholesky_psd(a: torch.Tensor) -> torch.Tensor:
    """Cholesky factors of symmetric matrices (..., D, D); a matrix that rounding left slightly
    indefinite (a posterior scale of a very thin cluster from float32 statistics) is first projected
    onto the positive definite cone (eigenvalues floored at 1e-12 of its largest)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if not bool((info != 0).any()):
        return chol
    ev, vec = torch.linalg.eigh(0.5 * (a + a.transpose(-1, -2)))
    floor = (ev.abs().amax(-1, keepdim=True) * 1e-12).clamp(min=1e-300)
    fixed = (vec * ev.clamp(min=floor).unsqueeze(-2)) @ vec.transpose(-1, -2)
    return torch.linalg.cholesky(0.5 * (fixed + fixed.transpose(-1, -2)))


def _logdet_psd(a: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):
        return torch.linalg.slogdet(a)[1]
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


@dataclass
class Dirichlet:
    """Symmetric or general Dirichlet prior on mixing weights, ``alpha`` (K,)."""

    alpha: torch.Tensor

    def posterior(self, counts: torch.Tensor) -> Dirichlet:
        return Dirichlet(self.alpha + counts)

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        return (
            torch.lgamma(a.sum(-1)) - torch.lgamma(a).sum(-1) + ((a - 1) * torch.log(w)).sum(-1)
        )

    def mode(self) -> torch.Tensor:
        """MAP weights ``(alpha_k - 1) / (sum alpha - K)``; entries with alpha_k < 1 clip at 0."""
        a = torch.clamp(self.alpha - 1.0, min=0.0)
        total = a.sum(-1, keepdim=True)
        uniform = torch.full_like(a, 1 / a.shape[-1])
        return torch.where(total > 0, a / total.clamp(min=1e-300), uniform)

    def mean(self) -> torch.Tensor:
        return self.alpha / self.alpha.sum(-1, keepdim=True)

    def log_marginal_likelihood(self, counts: torch.Tensor) -> torch.Tensor:
        """log p(z) of a labelling with ``counts`` per cluster (Dirichlet-multinomial)."""
        a = self.alpha
        return (
            torch.lgamma(a.sum(-1))
            - torch.lgamma(a.sum(-1) + counts.sum(-1))
            + (torch.lgamma(a + counts) - torch.lgamma(a)).sum(-1)
        )


def gamma_shape(nu0: float, d: int, covariance_type: str) -> float:
    """Shape of the Gamma prior on a diag / spherical precision (rate psi0_dd / 2, resp. tr(psi0) / 2).

    diag: (nu0 - D + 1) / 2, so sigma2_kd ~ InvGamma((nu0 - D + 1) / 2, psi0_dd / 2), the marginal of a
    diagonal entry of Sigma ~ InvWishart(nu0, psi0). spherical: D (nu0 - D - 1) / 2 + 1, the product of
    the D diag densities evaluated at one shared precision. Both give E[sigma2] = psi0_dd / (nu0 - D - 1).
    """
    if covariance_type == "diag":
        return (nu0 - d + 1.0) / 2.0
    shape = d * (nu0 - d - 1.0) / 2.0 + 1.0
    if shape <= 0:
        raise ValueError(
            f"covariance_type='spherical' needs degrees_of_freedom_prior (nu0) > D + 1 - 2/D = "
            f"{d + 1 - 2 / d:.3g} for a proper prior on the shared precision; got {nu0:g}."
        )
    return shape


def sample_wishart(df: float, scale: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One draw W ~ Wishart(df, scale) (E[W] = df * scale), scale (D, D) float64, by the Bartlett
    decomposition with a NumPy generator."""
    d = scale.shape[-1]
    chol = torch.linalg.cholesky(scale.double())
    a = np.tril(rng.standard_normal((d, d)), -1)
    a[np.diag_indices(d)] = np.sqrt(rng.chisquare(df - np.arange(d)))
    la = chol @ torch.from_numpy(a)
    return la @ la.T


@dataclass
class WishartScalePrior:
    """Hyperprior on the NIW scale: ``psi0 ~ Wishart(df, mean / df)`` (so E[psi0] = ``mean`` (D, D)).

    Given cluster covariances Sigma_k ~ IW(nu0, psi0), k = 1..K, the conditional is conjugate:
    ``psi0 | Sigma ~ Wishart(df + K nu0, (df mean^-1 + sum_k Sigma_k^-1)^-1)``; the NIW mean term
    N(mu_k | m0, Sigma_k / kappa0) does not involve psi0.
    """

    df: float
    mean: torch.Tensor

    def __post_init__(self) -> None:
        d = self.mean.shape[-1]
        if not self.df > d - 1:
            raise ValueError(f"the Wishart hyperprior on psi0 needs df > D - 1 = {d - 1}, got {self.df}.")

    def conditional(self, precisions: torch.Tensor, nu0: float) -> tuple[float, torch.Tensor]:
        """(df, scale) of p(psi0 | Sigma_1..K) from the precisions Sigma_k^-1 (K, D, D)."""
        inv = torch.linalg.inv(self.mean.double()) * self.df + precisions.double().sum(0)
        scale = torch.linalg.inv(inv)
        return self.df + precisions.shape[0] * float(nu0), 0.5 * (scale + scale.T)

    def sample(self, precisions: torch.Tensor, nu0: float, rng: np.random.Generator) -> torch.Tensor:
        """One draw of psi0 (D, D) from its conditional."""
        df, scale = self.conditional(precisions, nu0)
        return sample_wishart(df, scale, rng)
