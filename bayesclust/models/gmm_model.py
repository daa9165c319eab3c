"""The Bayesian Gaussian mixture as a Pyro program, shared by the EM, SVI and NUTS routes.

Generative model (precision parametrisation; ``K`` components, ``D`` features)::

    weights ~ Dirichlet(alpha 1_K)
    full:      Lambda_k ~ Wishart(nu0, psi0^-1)          mu_k | Lambda_k ~ N(m0, (kappa0 Lambda_k)^-1)
    tied:      Lambda   ~ Wishart(nu0, psi0^-1) shared   mu_k | Lambda   ~ N(m0, (kappa0 Lambda)^-1)
    diag:      lambda_kd ~ Gamma(a_diag, psi0_dd/2)      mu_kd | lambda_kd ~ N(m0_d, 1/(kappa0 lambda_kd))
    spherical: lambda_k ~ Gamma(a_sph, tr(psi0)/2)       mu_k | lambda_k ~ N(m0, I/(kappa0 lambda_k))
    z_n ~ Categorical(weights)   (enumerated out)        x_n ~ N(mu_{z_n}, Lambda_{z_n}^-1)

with a_diag = (nu0 - D + 1)/2, the inverse-Wishart(nu0, psi0) marginal of one variance, and
a_sph = D (nu0 - D - 1)/2 + 1, the product of the D diag densities at one shared precision
(:func:`~bayesclust.models.priors.gamma_shape`): every covariance type then has the prior mean
E[Sigma] = psi0 / (nu0 - D - 1).

Sample sites: ``"weights"`` (K,), ``"means"`` (K, D), ``"precisions"`` (full (K, D, D), tied (D, D),
diag (K, D), spherical (K,)), ``"assignment"`` and ``"obs"``; plates ``"components"`` and ``"data"``.

The joint MAP in this parametrisation (what SVI with ``AutoDelta`` maximises: a point mass at the
constrained value, no Jacobian) is, with responsibilities r_nk, N_k = sum_n r_nk and the Normal-Wishart
posterior (m_n, kappa_n, nu_n = nu0 + N_k, Psi_n) of each component:

    weights_k = (N_k + alpha - 1) / (N + K (alpha - 1)),   mu_k = m_n
    full:      Sigma_k   = Psi_n / (nu0 + N_k - D)
    tied:      Sigma     = (psi0 + sum_k (Psi_n,k - psi0)) / (nu0 + N + K - D - 1)
    diag:      sigma2_kd = Psi_n,k,dd / (nu0 + N_k - D)
    spherical: sigma2_k  = tr(Psi_n,k) / (D (nu0 + N_k - D))

(each from setting the gradient of log p(x, z, theta) to zero; the mean prior contributes
|kappa0 Lambda|^(1/2) per component, which is why the denominators differ from the covariance-mode).

Wishart sites: neither torch nor Pyro registers a bijection onto positive-definite matrices, which
NUTS and mean-field guides need. The Wishart here has its own support constraint, mapped from
R^{D(D+1)/2} by ``v -> L (exp on the diagonal) -> L L^T`` with the exact log-Jacobian, so NUTS samples
the Wishart posterior while the model (and the MAP) stay in the precision parametrisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import Transform

from .._validation import check_option, check_scalar
from .gaussian import COVARIANCE_TYPES, covariance_shape
from .priors import NIW, gamma_shape


# ---------------------------------------------------------------------------------------------------
# positive-definite support with a bijection (for NUTS / mean-field guides)
# ---------------------------------------------------------------------------------------------------
class _PositiveDefinite(type(constraints.positive_definite)):
    """Positive-definite matrices; a distinct instance so its bijection does not leak into other code."""


positive_definite_precision = _PositiveDefinite()


class PrecisionCholeskyTransform(Transform):
    """Bijection R^{D(D+1)/2} -> SPD(D): ``v -> L -> L L^T``, L lower triangular with diag ``exp(v_ii)``.

    log|J| = D log 2 + sum_i (D - i + 2) v_ii  (i = 1..D): exp on the diagonal gives sum_i v_ii, and
    the Cholesky map L -> L L^T on lower-triangular L has Jacobian 2^D prod_i L_ii^(D - i + 1)
    (Muirhead 1982, Thm 2.1.9).
    """

    domain = constraints.real_vector
    codomain = positive_definite_precision
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrecisionCholeskyTransform)

    @staticmethod
    def _dim(n: int) -> int:
        d = round((math.sqrt(8 * n + 1) - 1) / 2)
        if d * (d + 1) // 2 != n:
            raise ValueError(f"{n} is not a triangular number D(D+1)/2.")
        return d

    def _tril(self, v: torch.Tensor) -> torch.Tensor:
        d = self._dim(v.shape[-1])
        rows, cols = torch.tril_indices(d, d, device=v.device)
        diag = rows == cols
        vals = torch.where(diag, v.exp(), v)
        L = v.new_zeros(*v.shape[:-1], d, d)
        L[..., rows, cols] = vals
        return L

    def _call(self, v: torch.Tensor) -> torch.Tensor:
        L = self._tril(v)
        return L @ L.transpose(-1, -2)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = 0.5 * (y + y.transpose(-1, -2))
        L = torch.linalg.cholesky(y)
        d = y.shape[-1]
        rows, cols = torch.tril_indices(d, d, device=y.device)
        vals = L[..., rows, cols]
        return torch.where(rows == cols, torch.log(vals), vals)

    def log_abs_det_jacobian(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self._dim(v.shape[-1])
        rows, cols = torch.tril_indices(d, d, device=v.device)
        diag_v = v[..., rows == cols]  # (..., D), in order i = 0..D-1
        coef = torch.arange(d + 1, 1, -1, dtype=v.dtype, device=v.device)  # D - i + 2 for i = 1..D
        return d * math.log(2.0) + (coef * diag_v).sum(-1)

    def forward_shape(self, shape):
        return tuple(shape[:-1]) + (self._dim(shape[-1]),) * 2

    def inverse_shape(self, shape):
        d = shape[-1]
        return tuple(shape[:-2]) + (d * (d + 1) // 2,)


biject_to.register(_PositiveDefinite)(lambda constraint: PrecisionCholeskyTransform())
transform_to.register(_PositiveDefinite)(lambda constraint: PrecisionCholeskyTransform())


class WishartPrecision(dist.Wishart):
    """``Wishart(df, precision_matrix=psi0)`` on the precision, with a bijectable support."""

    support = positive_definite_precision

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(WishartPrecision, _instance)
        return super().expand(batch_shape, _instance=new)


# ---------------------------------------------------------------------------------------------------
# prior
# ---------------------------------------------------------------------------------------------------
@dataclass
class GMMPrior:
    """Hyperparameters of the Bayesian GMM.

    alpha : symmetric Dirichlet concentration of the weights.
    m0 (D,), kappa0, nu0, psi0 (D, D) : Normal-Wishart prior on (mu_k, Lambda_k) (see module docstring;
        diag and spherical use the matching Gamma priors built from diag(psi0) and tr(psi0)).
    """

    alpha: float
    m0: torch.Tensor
    kappa0: float
    nu0: float
    psi0: torch.Tensor

    def __post_init__(self) -> None:
        self.alpha = check_scalar(self.alpha, "alpha", low=0, low_inclusive=False)
        self.kappa0 = check_scalar(float(self.kappa0), "kappa0", low=0, low_inclusive=False)
        self.m0 = torch.as_tensor(self.m0)
        d = self.m0.shape[-1] if self.m0.ndim else 0
        if self.m0.ndim != 1 or d == 0:
            raise ValueError(f"GMMPrior m0 must be a vector (D,), got shape {tuple(self.m0.shape)}.")
        self.nu0 = check_scalar(float(self.nu0), "nu0", low=d - 1, low_inclusive=False)
        self.psi0 = torch.as_tensor(self.psi0, dtype=self.m0.dtype)
        if self.psi0.shape != (d, d):
            raise ValueError(f"GMMPrior psi0 must be (D, D) = ({d}, {d}), got {tuple(self.psi0.shape)}.")

    @property
    def dim(self) -> int:
        return int(self.m0.shape[0])

    @classmethod
    def from_data(cls, X: torch.Tensor, alpha: float = 1.0, **niw_kwargs) -> GMMPrior:
        """Weakly informative prior from ``X`` (N, D) via :meth:`NIW.from_data` (keywords passed on)."""
        niw = NIW.from_data(X, **niw_kwargs)
        return cls(alpha, niw.m0, float(niw.kappa0), float(niw.nu0), niw.psi0)

    @classmethod
    def from_niw(cls, alpha: float, niw: NIW, dtype: torch.dtype | None = None) -> GMMPrior:
        """The same prior as the EM routes' (Dirichlet ``alpha``, ``niw``), optionally cast to ``dtype``."""
        m0, psi0 = (niw.m0, niw.psi0) if dtype is None else (niw.m0.to(dtype), niw.psi0.to(dtype))
        return cls(float(alpha), m0, float(niw.kappa0), float(niw.nu0), psi0)

    def to(self, ref: torch.Tensor) -> GMMPrior:
        """A copy on ``ref``'s device and dtype."""
        kw = dict(dtype=ref.dtype, device=ref.device)
        return GMMPrior(self.alpha, self.m0.to(**kw), self.kappa0, self.nu0, self.psi0.to(**kw))


# ---------------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------------
def _spd_inverse(a: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_inverse(torch.linalg.cholesky(a))


def precisions_to_covariances(prec: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Precisions -> covariances with scikit-learn's ``covariances_`` shapes (any leading dims)."""
    check_option(covariance_type, "covariance_type", COVARIANCE_TYPES)
    if covariance_type in ("full", "tied"):
        return _spd_inverse(prec)
    return 1.0 / prec


def covariances_to_precisions(cov: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Covariances (scikit-learn shapes) -> precisions of the same shape (the inverse map)."""
    check_option(covariance_type, "covariance_type", COVARIANCE_TYPES)
    cov = torch.as_tensor(cov)
    if covariance_type in ("full", "tied"):
        return _spd_inverse(cov)
    return 1.0 / cov


def init_values(
    init: dict, covariance_type: str, ref: torch.Tensor, K: int | None = None
) -> dict[str, torch.Tensor]:
    """Model-site values {weights, means, precisions} from ``init`` = {weights, means, covariances}.

    Shapes are checked against ``K`` (default: the number of rows of ``init['means']``) and ``ref``'s D.
    """
    if not isinstance(init, dict):
        raise TypeError(
            f"init must be a dict with 'weights', 'means', 'covariances', got {type(init).__name__}."
        )
    missing = {"weights", "means", "covariances"} - set(init)
    if missing:
        raise ValueError(
            f"init is missing {sorted(missing)}; pass a dict with 'weights' (K,), 'means' (K, D) and "
            "'covariances' (scikit-learn shape), e.g. an EM-MAP solution."
        )
    kw = dict(dtype=ref.dtype, device=ref.device)
    means = torch.as_tensor(init["means"]).to(**kw).clone()  # never alias (and let Adam mutate) the input
    K = means.shape[0] if K is None else K
    D = ref.shape[-1]
    cov = torch.as_tensor(init["covariances"]).to(**kw)
    w = torch.as_tensor(init["weights"]).to(**kw)
    expected = {"weights": (K,), "means": (K, D), "covariances": covariance_shape(covariance_type, K, D)}
    for name, value in (("weights", w), ("means", means), ("covariances", cov)):
        if tuple(value.shape) != expected[name]:
            raise ValueError(
                f"init['{name}'] must have shape {expected[name]} for K={K}, D={D}, "
                f"covariance_type={covariance_type!r}; got {tuple(value.shape)}."
            )
    w = w.clamp(min=1e-6)
    prec = covariances_to_precisions(cov, covariance_type)
    return {"weights": w / w.sum(), "means": means, "precisions": prec}


# ---------------------------------------------------------------------------------------------------
# the Pyro program
# ---------------------------------------------------------------------------------------------------
def _component_dist(means, precisions, covariance_type: str, z=None):
    """Observation distribution of the components (all, or those indexed by ``z``)."""
    mu = means if z is None else means[z]
    if covariance_type == "tied":
        return dist.MultivariateNormal(mu, precision_matrix=precisions)
    prec = precisions if z is None else precisions[z]
    if covariance_type == "full":
        return dist.MultivariateNormal(mu, precision_matrix=prec)
    if covariance_type == "diag":
        return dist.Normal(mu, prec.rsqrt()).to_event(1)
    return dist.Normal(mu, prec.rsqrt().unsqueeze(-1).expand(mu.shape)).to_event(1)


def make_gmm_model(K: int, covariance_type: str, prior: GMMPrior) -> Callable:
    """The Bayesian GMM as an enumerated Pyro model ``model(X, batch_size=None, subsample=None)``.

    ``X`` (N, D); ``batch_size`` sub-samples the ``"data"`` plate at random (scaled ELBO), or pass
    explicit ``subsample`` indices. The prior follows ``X``'s dtype and device.
    """
    K = int(K)
    if K < 1:
        raise ValueError(f"K must be a positive int, got {K}.")
    check_option(covariance_type, "covariance_type", COVARIANCE_TYPES)
    if not isinstance(prior, GMMPrior):
        raise TypeError(f"prior must be a GMMPrior, got {type(prior).__name__}; use GMMPrior.from_data(X).")

    return GMMProgram(K, covariance_type, prior)


class GMMProgram:
    """The enumerated Pyro model of :func:`make_gmm_model`, a picklable callable."""

    def __init__(self, K: int, covariance_type: str, prior: GMMPrior) -> None:
        self.K, self.covariance_type, self.prior = K, covariance_type, prior

    def __call__(
        self, X: torch.Tensor, batch_size: int | None = None, subsample: torch.Tensor | None = None
    ) -> None:
        pyro.infer.config_enumerate(self._model)(X, batch_size, subsample)

    def _model(self, X: torch.Tensor, batch_size: int | None, subsample: torch.Tensor | None) -> None:
        N, D = X.shape
        if D != self.prior.dim:
            raise ValueError(f"X has {D} features but the prior was built for {self.prior.dim}.")
        p, K, covariance_type = self.prior.to(X), self.K, self.covariance_type
        kw = dict(dtype=X.dtype, device=X.device)
        weights = pyro.sample("weights", dist.Dirichlet(torch.full((K,), p.alpha, **kw)))
        nu0 = torch.tensor(p.nu0, **kw)
        if covariance_type == "tied":
            precisions = pyro.sample("precisions", WishartPrecision(nu0, precision_matrix=p.psi0))
        with pyro.plate("components", K):
            if covariance_type == "full":
                precisions = pyro.sample("precisions", WishartPrecision(nu0, precision_matrix=p.psi0))
            if covariance_type in ("full", "tied"):
                means = pyro.sample(
                    "means", dist.MultivariateNormal(p.m0, precision_matrix=p.kappa0 * precisions)
                )
            elif covariance_type == "diag":
                conc = torch.full((D,), gamma_shape(p.nu0, D, "diag"), **kw)
                rate = torch.diagonal(p.psi0) / 2.0
                precisions = pyro.sample("precisions", dist.Gamma(conc, rate).to_event(1))
                means = pyro.sample("means", dist.Normal(p.m0, (p.kappa0 * precisions).rsqrt()).to_event(1))
            else:
                precisions = pyro.sample(
                    "precisions",
                    dist.Gamma(
                        torch.tensor(gamma_shape(p.nu0, D, "spherical"), **kw), torch.trace(p.psi0) / 2.0
                    ),
                )
                scale = (p.kappa0 * precisions).rsqrt().unsqueeze(-1).expand(K, D)
                means = pyro.sample("means", dist.Normal(p.m0, scale).to_event(1))
        with pyro.plate("data", N, subsample_size=batch_size, subsample=subsample) as idx:
            z = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample("obs", _component_dist(means, precisions, covariance_type, z), obs=X[idx])

# ---------------------------------------------------------------------------------------------------
# likelihood of parameter draws
# ---------------------------------------------------------------------------------------------------
def component_log_prob(
    X: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """``log N(x_n | mu_k, Lambda_k^-1)`` for draws with leading dims ``S``: returns (S..., N, K).

    Shapes: X (N, D), means (S..., K, D), precisions (S..., <precision shape>). Cholesky-based.
    """
    D = X.shape[-1]
    diff = X.unsqueeze(-2) - means.unsqueeze(-3)  # (S..., N, K, D)
    if covariance_type in ("full", "tied"):
        L = torch.linalg.cholesky(precisions)  # Lambda = L L^T; Mahalanobis = |L^T diff|^2
        if covariance_type == "tied":
            L = L.unsqueeze(-3)  # (S..., 1, D, D) -> broadcast over K
        y = (diff.unsqueeze(-1) * L.unsqueeze(-4)).sum(-2)  # (L^T diff)_j = sum_i L_ij diff_i
        maha = (y * y).sum(-1)
        logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1).unsqueeze(-2)  # (S...,1,K|1)
    elif covariance_type == "diag":
        maha = (diff * diff * precisions.unsqueeze(-3)).sum(-1)
        logdet = 0.5 * torch.log(precisions).sum(-1).unsqueeze(-2)
    else:
        maha = (diff * diff).sum(-1) * precisions.unsqueeze(-2)
        logdet = 0.5 * D * torch.log(precisions).unsqueeze(-2)
    return -0.5 * D * math.log(2 * math.pi) + logdet - 0.5 * maha


def mixture_log_prob(
    X: torch.Tensor,
    weights: torch.Tensor,
    means: torch.Tensor,
    precisions: torch.Tensor,
    covariance_type: str,
) -> torch.Tensor:
    """Pointwise ``log p(x_n | theta)`` (S..., N) for parameter draws with leading dims S."""
    comp = component_log_prob(X, means, precisions, covariance_type)
    return torch.logsumexp(comp + torch.log(weights).unsqueeze(-2), dim=-1)
