"""Closed-form E and M steps for Gaussian mixtures, on sufficient statistics.

The E-step writes every component's log density as one matmul on a feature map of the data:

    log N(x | mu_k, Sigma_k) = phi(x) . a_k + c_k,

with phi(x) = [x_i x_j (i <= j), x] for full / tied covariances (Q = D(D+1)/2 + D) and
phi(x) = [x^2, x] for diag / spherical (Q = 2D). With responsibilities r (n, K) the M-step needs
only G = [phi(X), 1]^T r (Q + 1, K): counts, first and second moments of every component. So one
iteration is two (n x Q) @ (Q x K) products per chunk: memory O(chunk x (Q + K)), never
O(N x K x D), and no Python loop over components.

At large D the map is the wrong tool (Q grows as D^2 / 2 and the product is memory-bound), so full
and tied covariances switch to the Cholesky formulation there (:class:`CholeskyCoefficients`):
``log N(x | mu_k, Sigma_k) = c_k - |x P_k - mu_k P_k|^2 / 2`` with ``Sigma_k^-1 = P_k P_k^T``, one
(n x D) @ (D x K D) product per chunk, and statistics accumulated about each component's mean
(centred, so float32 keeps its digits), returned in the same G layout. :func:`choose_formulation`
says where.

Covariances are stored as scikit-learn does: full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._rowmaps import quadratic_features, quadratic_supported
from .priors import NIW, gamma_shape

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
FORMULATIONS = ("auto", "features", "cholesky")
# formulation="auto" for full / tied covariances, the one place the choice is made (measured by
# benchmarks/bench_formulation.py, with and without the feature cache; RESULTS.md, "formulation"):
# - with phi(X) cached, the map's two products do Q K ~ D^2 K / 2 multiply-adds a point, half the
#   Cholesky form's D^2 K, at a better rate, so the map wins unless K is small against D;
# - recomputed every pass (phi(X) larger than the cache), the map also writes N Q values a pass,
#   and Cholesky wins from smaller D / K, in float64 (twice the bytes) sooner;
# - from CHOLESKY_MIN_D on, Q ~ D^2 / 2 columns a row make the map's blocks too large to hold.
# - full covariances whose Cholesky passes run fused in lanes (``fused``, em_cholesky) drop most of
#   that form's elementwise cost: with phi(X) cached, Cholesky then wins in float64 up to K = D / 2
#   while D <= 32 (no cache to build either: 449 MB at N = 10^5, D = 32), from D = 4 (whole fits:
#   N = 10^6, D = 8, K = 2 to 4 1.5-2.2x; D = 4, K = 2 1.3-1.4x; K above D / 2 even or slower), and
#   in float32 up to K = min(D / 2, 8) (whole fits on an AMD VM: N = 10^6, D = 4 to 16, 1.1-2.3x; the
#   rule was K <= D / 4 from D = 16, the same at D = 32).
# Cholesky when D >= 32 and K <= D / CHOLESKY_D_PER_K[case], or D >= CHOLESKY_MIN_D; fused: also from
# D = FUSED_FLOOR_D; fused with phi(X) cached, from FUSED_HALF_FLOOR_D to FUSED_HALF_MAX_D: K <= D / 2
# (float32: also K <= FUSED_FLOAT32_MAX_K).
CHOLESKY_MIN_D = 256
CHOLESKY_D_PER_K = {"cached": 4.0, "float32": 4.0, "float64": 2.0}
CHOLESKY_FLOOR_D = 32
FUSED_FLOOR_D = 16
FUSED_HALF_FLOOR_D = 4
FUSED_HALF_MAX_D = 32
FUSED_FLOAT32_MAX_K = 8
# the share of a covariance that the feature map's float32 sums may lose to cancellation (worst case)
# before the component's statistics are taken centred on its mean (:func:`cancelling_components`)
CANCELLATION_LIMIT = 1e-3


def choose_formulation(
    covariance_type: str, d: int, k: int, itemsize: int, cached: bool, fused: bool = False
) -> str:
    """The E/M-step form ("features" or "cholesky") that formulation="auto" takes for D features,
    K components, ``itemsize``-byte floats, phi(X) ``cached`` whole or recomputed every pass, and
    ``fused``: whether full-covariance Cholesky passes would run fused in lanes
    (:func:`bayesclust.inference.em_cholesky.fused_passes`)."""
    if covariance_type not in ("full", "tied"):
        return "features"
    if d >= CHOLESKY_MIN_D:
        return "cholesky"
    fused = fused and covariance_type == "full"
    if fused and cached and FUSED_HALF_FLOOR_D <= d <= FUSED_HALF_MAX_D:
        top = d / 2 if itemsize >= 8 else min(d / 2, FUSED_FLOAT32_MAX_K)
        return "cholesky" if k <= top else "features"
    case = "cached" if cached else ("float64" if itemsize >= 8 else "float32")
    floor = FUSED_FLOOR_D if fused else CHOLESKY_FLOOR_D
    return "cholesky" if d >= floor and k * CHOLESKY_D_PER_K[case] <= d else "features"


def covariance_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    """The shape of the covariances of K components in D dimensions (scikit-learn's layout)."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def n_covariance_parameters(covariance_type: str, k: int, d: int) -> int:
    """Free parameters of the covariances (symmetric matrices count their upper triangle)."""
    return {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d, "spherical": k}[
        covariance_type
    ]


def identity_covariances(covariance_type: str, k: int, d: int, ref: torch.Tensor) -> torch.Tensor:
    """Unit covariances of K components, on ``ref``'s device and dtype."""
    kw = {"device": ref.device, "dtype": ref.dtype}
    if covariance_type == "full":
        return torch.eye(d, **kw).expand(k, d, d).clone()
    if covariance_type == "tied":
        return torch.eye(d, **kw)
    return torch.ones(covariance_shape(covariance_type, k, d), **kw)


def component_covariance(covariances: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
    """The full (D, D) covariance of component ``k`` from stored covariances of any type."""
    if covariance_type == "full":
        return covariances[k]
    if covariance_type == "tied":
        return covariances
    if covariance_type == "diag":
        return np.diag(covariances[k])
    return np.eye(d) * covariances[k]


@dataclass
class GMMParams:
    """Mixture parameters (in the frame of the data the EM runs on)."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    covariances: torch.Tensor  # full (K,D,D) | tied (D,D) | diag (K,D) | spherical (K,)

    def clone(self) -> GMMParams:
        return GMMParams(self.weights.clone(), self.means.clone(), self.covariances.clone())


def affine_params(params: GMMParams, shift: torch.Tensor, scale: float) -> GMMParams:
    """The parameters of ``scale * x + shift`` (shift (D,)) for parameters of x: means
    ``scale * mu + shift``, covariances ``scale**2 * Sigma`` (every covariance type)."""
    shift = shift.to(device=params.means.device, dtype=params.means.dtype)
    return GMMParams(params.weights, params.means * scale + shift, params.covariances * scale**2)


def affine_draws(draws: dict[str, Any], shift: torch.Tensor, scale: float) -> dict[str, Any]:
    """:func:`affine_params` on posterior draws: "means" (..., K, D), "covariances" and "precisions"
    (any leading dimensions); other entries (weights) are unchanged."""
    out = dict(draws)
    if "means" in out:
        out["means"] = out["means"] * scale + shift.to(device=out["means"].device, dtype=out["means"].dtype)
    if "covariances" in out:
        out["covariances"] = out["covariances"] * scale**2
    if "precisions" in out:
        out["precisions"] = out["precisions"] / scale**2
    return out


@dataclass
class MAPPrior:
    """Conjugate prior for MAP-EM: symmetric Dirichlet(alpha) on weights and a NIW (see gmm_model)."""

    alpha: float
    niw: NIW


# ---------------------------------------------------------------------------- features
def _triu(d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    iu = torch.triu_indices(d, d, device=device)
    return iu[0], iu[1]


def feature_dim(d: int, covariance_type: str) -> int:
    return d * (d + 1) // 2 + d if covariance_type in ("full", "tied") else 2 * d


def feature_map(
    X: torch.Tensor, covariance_type: str, *, out: torch.Tensor | None = None, ones: bool = False
) -> torch.Tensor:
    """phi(X) (n, Q): [x_i x_j for i <= j, x] (full, tied) or [x^2, x] (diag, spherical).

    ``ones=True`` appends a column of ones (Q + 1 columns). Written into ``out`` (>= n rows) when
    given. On the CPU the full / tied map is one compiled pass over the rows
    (:func:`bayesclust._rowmaps.quadratic_features`); elsewhere D contiguous slice products (a column
    gather ``X[:, i] * X[:, j]`` costs several times more).
    """
    n, d = X.shape
    q = feature_dim(d, covariance_type) + int(ones)
    out = X.new_empty(n, q) if out is None else out[:n]
    if covariance_type in ("full", "tied") and quadratic_supported(X, out):
        quadratic_features(X, out)
    elif covariance_type in ("full", "tied"):
        col = 0
        for i in range(d):  # row i of the upper triangle, in triu_indices order (a loop over D, not N)
            torch.mul(X[:, i : i + 1], X[:, i:], out=out[:, col : col + d - i])
            col += d - i
        out[:, col : col + d] = X
    else:
        torch.mul(X, X, out=out[:, :d])
        out[:, d : 2 * d] = X
    if ones:
        out[:, -1] = 1.0
    return out


# ---------------------------------------------------------------------------- parameters
class NotPositiveDefiniteError(ValueError):
    """A component covariance (or variance) is not positive definite."""


def precisions_cholesky(covariances: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Cholesky factor L of the precision (Sigma^-1 = L L^T), as scikit-learn's precisions_cholesky_.

    Full / tied factors are computed in float64 and returned in ``covariances``' dtype (K D^3 work,
    small beside a pass over the data): a float32 factorisation fails on a tight component whose
    covariance is well within float64's range."""
    if covariance_type in ("full", "tied"):
        dtype, covariances = covariances.dtype, covariances.double()
        chol, info = torch.linalg.cholesky_ex(covariances)
        if bool((info != 0).any()):
            raise NotPositiveDefiniteError(
                "A component covariance is not positive definite (singular or collapsed "
                "component); increase reg_covar, use fewer components, or check for duplicated "
                "points / constant features."
            )
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
        eye = eye.expand_as(covariances)
        return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2).to(dtype)
    if bool((covariances <= 0).any()):
        raise NotPositiveDefiniteError(
            "A component variance is <= 0 (collapsed component); increase reg_covar or use fewer "
            "components."
        )
    return covariances.rsqrt()


def log_prob_coefficients(params: GMMParams, covariance_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (Q, K), c (K,)) with log w_k + log N(x | mu_k, Sigma_k) = phi(x) . A[:, k] + c[k]."""
    w, mu, cov = params.weights, params.means, params.covariances
    k, d = mu.shape
    log_w = torch.log(w)
    if covariance_type in ("full", "tied"):
        prec_chol = precisions_cholesky(cov, covariance_type).to(mu.dtype)
        if covariance_type == "tied":
            prec_chol = prec_chol.expand(k, d, d)
        prec = prec_chol @ prec_chol.transpose(-1, -2)  # (K, D, D)
        log_det = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)
        i, j = _triu(d, mu.device)
        quad = prec[:, i, j] * torch.where(i == j, 1.0, 2.0).to(prec.dtype)  # (K, P)
        pmu = (prec @ mu.unsqueeze(-1)).squeeze(-1)  # (K, D)
        const = (pmu * mu).sum(-1)
        A = torch.cat([-0.5 * quad, pmu], dim=1).T
    else:
        prec = 1.0 / cov
        if covariance_type == "spherical":
            prec = prec.unsqueeze(-1).expand(k, d)
        log_det = 0.5 * torch.log(prec).sum(-1)
        pmu = prec * mu
        const = (pmu * mu).sum(-1)
        A = torch.cat([-0.5 * prec, pmu], dim=1).T
    c = log_w + log_det - 0.5 * const - 0.5 * d * math.log(2 * math.pi)
    return A.contiguous(), c


def cancelling_components(params: GMMParams, covariance_type: str) -> torch.Tensor | None:
    """Indices (T,) of the full-covariance components whose feature-map statistics, summed in the
    means' dtype, may lose more than ``CANCELLATION_LIMIT`` of their covariance; None if there are
    none, and always in float64.

    ``sum r x x^T - n mu mu^T`` cancels by ``|b_k|^2 = mu_k^T Sigma_k^-1 mu_k`` (the mean's Mahalanobis
    length from the working frame's origin), so rounding at unit roundoff u loses up to u |b_k|^2 of
    Sigma_k: float32 reaches 0.1% at |b_k|^2 = 1.7e4 (a small, tight component away from the data's
    centre), float64 only at 9e12."""
    if covariance_type != "full" or params.means.dtype != torch.float32:
        return None
    P = precisions_cholesky(params.covariances.double(), "full")
    b2 = (params.means.double().unsqueeze(1) @ P).squeeze(1).square().sum(-1)
    u = torch.finfo(params.means.dtype).eps / 2
    idx = torch.nonzero(b2 * u > CANCELLATION_LIMIT).flatten()
    return idx if idx.numel() else None


@dataclass
class CholeskyCoefficients:
    """The Cholesky form of the weighted log densities: ``log w_k + log N(x | mu_k, Sigma_k) =
    c_k - |x P_k - b_k|^2 / 2``. W (D, K D): the precision factors P_k side by side (tied: the one
    P, (D, D)); b (K, D) = mu_k P_k; means (K, D), the centres of the accumulated statistics."""

    W: torch.Tensor
    b: torch.Tensor
    means: torch.Tensor
    tied: bool
    exact: bool = False  # the M-step statistics summed in float64 whatever the data's dtype

    @property
    def dtype(self) -> torch.dtype:
        return self.W.dtype

    @property
    def device(self) -> torch.device:
        return self.W.device

    def element_size(self) -> int:
        return self.W.element_size()


def cholesky_coefficients(
    params: GMMParams, covariance_type: str, exact: bool = False
) -> tuple[CholeskyCoefficients, torch.Tensor]:
    """(coefficients, c (K,)) of the Cholesky formulation for full or tied covariances, in the means'
    dtype (the covariances may be float64); ``exact``: see :class:`CholeskyCoefficients`."""
    mu = params.means
    k, d = mu.shape
    P = precisions_cholesky(params.covariances, covariance_type).to(mu.dtype)  # (K, D, D) / (D, D), upper
    tied = covariance_type == "tied"
    log_det = torch.log(torch.diagonal(P, dim1=-2, dim2=-1)).sum(-1)
    if tied:
        b, W = mu @ P, P.contiguous()
    else:
        b = (mu.unsqueeze(1) @ P).squeeze(1)
        W = P.permute(1, 0, 2).reshape(d, k * d).contiguous()
    c = torch.log(params.weights) + log_det - 0.5 * d * math.log(2 * math.pi)
    return CholeskyCoefficients(W, b.contiguous(), mu, tied, exact), c


# ---------------------------------------------------------------------------- M-step
def unpack_stats(G: torch.Tensor, d: int, covariance_type: str = "full"):
    """Statistics G (M, Q + 1) (rows: sums of [phi(x), 1] over a group) -> counts (M,), sums of x
    (M, D), second moments (full / tied (M, D, D); diag / spherical (M, D))."""
    nk = G[:, -1]
    if covariance_type in ("full", "tied"):
        p = d * (d + 1) // 2
        i, j = _triu(d, G.device)
        sxx = torch.zeros(G.shape[0], d, d, dtype=G.dtype, device=G.device)
        sxx[:, i, j] = G[:, :p]
        sxx[:, j, i] = G[:, :p]
        sx = G[:, p : p + d]
    else:
        sxx = G[:, :d]
        sx = G[:, d : 2 * d]
    return nk, sx, sxx


def m_step(
    G: torch.Tensor,
    d: int,
    covariance_type: str,
    reg_covar: float,
    prior: MAPPrior | None,
    previous: GMMParams,
) -> GMMParams:
    """Maximum-likelihood (``prior=None``, as scikit-learn) or MAP M-step from statistics G (K, Q + 1).

    MAP is the joint mode of the Normal-Wishart posterior in the precision parametrisation of
    the Pyro model (models/gmm_model.py): Sigma_k = Psi_n / (nu_n - D) for full covariances
    (tied, diag and spherical analogously; derivations in the docstring of each branch).
    """
    nk, sx, sxx = unpack_stats(G, d, covariance_type)
    tiny = 10 * torch.finfo(G.dtype).eps
    nk_safe = nk + tiny
    n_total = nk.sum()
    k = nk.shape[0]
    # Below the rounding error of the total count, in the dtype the statistics G were accumulated in,
    # a component's statistics are noise; above it they are used as they are (as scikit-learn
    # does), however few points the component holds.
    empty = nk <= torch.finfo(G.dtype).eps * n_total.clamp(min=1.0)
    if prior is None:
        weights = nk_safe / n_total
        means = sx / nk_safe[:, None]
        if covariance_type == "full":
            cov = sxx / nk_safe[:, None, None] - means[:, :, None] * means[:, None, :]
            cov = cov + reg_covar * torch.eye(d, dtype=G.dtype, device=G.device)
        elif covariance_type == "tied":
            cov = (sxx.sum(0) - (nk[:, None, None] * means[:, :, None] * means[:, None, :]).sum(0))
            cov = cov / n_total + reg_covar * torch.eye(d, dtype=G.dtype, device=G.device)
        else:
            var = sxx / nk_safe[:, None] - means * means + reg_covar
            cov = var if covariance_type == "diag" else var.mean(1)
    else:
        alpha = prior.alpha
        w = torch.clamp(nk + alpha - 1.0, min=0.0)
        weights = w / w.sum()
        niw = prior.niw
        kn = niw.kappa0 + nk
        means = (niw.kappa0 * niw.m0 + sx) / kn[:, None]
        if covariance_type in ("full", "tied"):
            post = niw.posterior(nk, sx, sxx)
            scatter = post.psi0 - niw.psi0  # S_c + kappa0 n / kappa_n (xbar - m0)(xbar - m0)^T
            eye = torch.eye(d, dtype=G.dtype, device=G.device)
            if covariance_type == "full":
                cov = post.psi0 / (post.nu0 - d)[:, None, None] + reg_covar * eye
            else:  # shared Lambda: exponent (nu0 - D - 1 + K + N) / 2 of |Lambda|
                cov = (niw.psi0 + scatter.sum(0)) / (niw.nu0 + n_total + k - d - 1) + reg_covar * eye
        else:
            psi_diag = torch.diagonal(niw.psi0)
            scatter = sxx + niw.kappa0 * niw.m0**2 - kn[:, None] * means**2  # (K, D)
            # lambda ~ Gamma(a, psi/2) with a from priors.gamma_shape; the joint mode of (mu, lambda)
            # is (psi + scatter) / (2a - 1 + N_k) (diag), (tr psi + scatter) / (2a - 2 + D + D N_k)
            if covariance_type == "diag":
                cov = (psi_diag + scatter) / (niw.nu0 - d + nk)[:, None] + reg_covar
            else:
                cov = (psi_diag.sum() + scatter.sum(1)) / (d * (niw.nu0 - d + nk)) + reg_covar
    if bool(empty.any()) and covariance_type != "tied":
        # A component with no mass keeps its previous parameters instead of dividing by ~0.
        means = torch.where(empty[:, None], previous.means, means)
        shape = (-1,) + (1,) * (cov.ndim - 1)
        cov = torch.where(empty.view(shape), previous.covariances, cov)
    return GMMParams(weights, means, cov)


def log_prior(params: GMMParams, prior: MAPPrior | None, covariance_type: str) -> float:
    """log p(weights, means, precisions) under the MAP prior (0 for maximum likelihood)."""
    if prior is None:
        return 0.0
    D = torch.distributions
    params = GMMParams(*(t.double() for t in (params.weights, params.means, params.covariances)))
    niw, d = prior.niw, params.means.shape[1]
    niw = NIW(niw.m0.double(), niw.kappa0.double(), niw.nu0.double(), niw.psi0.double())
    w = params.weights.clamp(min=torch.finfo(params.weights.dtype).tiny)
    alpha = torch.full_like(w, prior.alpha)
    lp = D.Dirichlet(alpha).log_prob(w / w.sum())
    mu, cov = params.means, params.covariances
    if covariance_type in ("full", "tied"):
        prec = torch.cholesky_inverse(torch.linalg.cholesky(cov))
        psi_inv = torch.cholesky_inverse(torch.linalg.cholesky(niw.psi0))
        wishart = D.Wishart(df=niw.nu0, covariance_matrix=psi_inv)
        lp = lp + wishart.log_prob(prec).sum()
        lp = lp + D.MultivariateNormal(niw.m0, precision_matrix=niw.kappa0 * prec).log_prob(mu).sum()
    else:
        psi = torch.diagonal(niw.psi0)
        if covariance_type == "diag":
            lam = 1.0 / cov
            lp = lp + D.Gamma(gamma_shape(float(niw.nu0), d, "diag"), psi / 2).log_prob(lam).sum()
        else:
            lam = (1.0 / cov).unsqueeze(-1).expand_as(mu)
            shape = gamma_shape(float(niw.nu0), d, "spherical")
            lp = lp + D.Gamma(shape, psi.sum() / 2).log_prob(1.0 / cov).sum()
        lp = lp + D.Normal(niw.m0, (niw.kappa0 * lam).rsqrt()).log_prob(mu).sum()
    return float(lp)


# ---------------------------------------------------------------------------- full, with a ones column
# (the layout of split/merge, mean-field VI and the deep route)
def full_feature_map(X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """phi(X) (n, Q) with Q = D(D+1)/2 + D + 1: [x_i x_j for i <= j (row-major), x, 1] (see feature_map)."""
    return feature_map(X, "full", out=out, ones=True)


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


# ---------------------------------------------------------------------------- the family object
@dataclass
class GaussianFamily:
    """The Gaussian mixture family, the one object every Gaussian route takes.

    ``covariance_type``: "full", "tied", "diag" or "spherical"; ``niw``: the conjugate
    Normal-inverse-Wishart prior on each component's (mean, covariance), or None for maximum
    likelihood; ``weight_concentration``: the symmetric Dirichlet prior on the weights (EM MAP);
    ``reg_covar``: added to covariance diagonals in the M-step; ``formulation``: the E-step's form
    for full / tied covariances, "features" (the quadratic map), "cholesky" (phi is x itself and
    the coefficients a :class:`CholeskyCoefficients`) or "auto" (Cholesky from ``CHOLESKY_MIN_D``
    features; estimators resolve "auto" with :func:`choose_formulation`, which also knows K, N).

    Implements :class:`~bayesclust.models.family.EMFamily` for every covariance type, and
    :class:`~bayesclust.models.family.ConjugateFamily` (split/merge, mean-field VI, the deep
    route) for ``covariance_type="full"`` with an ``niw``; parameters are :class:`GMMParams`.
    """

    covariance_type: str = "full"
    niw: NIW | None = None
    weight_concentration: float = 1.0
    reg_covar: float = 1e-6
    formulation: str = "auto"
    exact_statistics: bool = False

    @property
    def map_prior(self) -> MAPPrior | None:
        return None if self.niw is None else MAPPrior(float(self.weight_concentration), self.niw)

    # ------------------------------------------------------------ EMFamily
    def uses_cholesky(self, d: int) -> bool:
        """Whether D features take the Cholesky formulation (then phi(x) = x)."""
        if self.covariance_type not in ("full", "tied") or self.formulation == "features":
            return False
        return self.formulation == "cholesky" or d >= CHOLESKY_MIN_D

    def centred(self, d: int) -> GaussianFamily | None:
        """This family in the Cholesky formulation (statistics centred on each component's mean),
        or None where D features already take it or the covariance type has no such form."""
        if self.covariance_type not in ("full", "tied") or self.uses_cholesky(d):
            return None
        return dataclasses.replace(self, formulation="cholesky")

    def fallback(self, d: int, dtype: torch.dtype = torch.float64) -> GaussianFamily | None:
        """The family to redo an M-step with when a covariance came out not positive definite, for
        data of ``dtype``: the feature map with its statistics summed in float64 (float32 data), then
        the Cholesky form (statistics centred on each component's mean), then the same with its
        statistics summed in float64 (float32 data); None when nothing is left to try."""
        if self.covariance_type not in ("full", "tied"):
            return None
        wide = dtype == torch.float64
        if not self.uses_cholesky(d):
            if not (self.exact_statistics or wide):
                return dataclasses.replace(self, exact_statistics=True)
            return dataclasses.replace(self.centred(d), exact_statistics=False)
        return None if self.exact_statistics or wide else dataclasses.replace(self, exact_statistics=True)

    def feature_dim(self, d: int) -> int:
        return d if self.uses_cholesky(d) else feature_dim(d, self.covariance_type)

    def centred_components(self, params: GMMParams) -> torch.Tensor | None:
        """The components whose log densities and statistics the E-step takes centred on their
        means, not from the feature map (:func:`cancelling_components`); None in the Cholesky form,
        which centres all."""
        if self.uses_cholesky(params.means.shape[1]):
            return None
        return cancelling_components(params, self.covariance_type)

    def feature_map(self, X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_cholesky(X.shape[1]):
            return X if out is None else out[: X.shape[0]].copy_(X)
        return feature_map(X, self.covariance_type, out=out)

    def log_prob_coefficients(self, params: GMMParams) -> tuple[Any, torch.Tensor]:
        if self.uses_cholesky(params.means.shape[1]):
            return cholesky_coefficients(params, self.covariance_type, self.exact_statistics)
        return log_prob_coefficients(params, self.covariance_type)

    def m_step(self, G: torch.Tensor, previous: GMMParams) -> GMMParams:
        """New weights and means in ``previous``'s dtype; full / tied covariances in float64 whatever
        the data's dtype: the float32 copy of a thin component's covariance (eigenvalues near
        ``reg_covar`` beside large ones) can round to an indefinite matrix, and covariances are
        factorised in float64 anyway."""
        d, dtype = previous.means.shape[1], previous.means.dtype
        new = m_step(G, d, self.covariance_type, float(self.reg_covar), self.map_prior, previous)
        cov_dtype = torch.float64 if self.covariance_type in ("full", "tied") else dtype
        # contiguous: the means are a column slice of G, and (K, m, D) products take their layout
        return GMMParams(new.weights.to(dtype).contiguous(), new.means.to(dtype).contiguous(),
                         new.covariances.to(cov_dtype).contiguous())

    def log_prior(self, params: GMMParams) -> float:
        return log_prior(params, self.map_prior, self.covariance_type)

    # ------------------------------------------------------------ ConjugateFamily
    def _conjugate_prior(self) -> NIW:
        if self.niw is None or self.covariance_type != "full":
            raise ValueError(
                "the conjugate interface needs covariance_type='full' and an NIW prior; this family "
                f"has covariance_type={self.covariance_type!r}"
                + (" and no prior." if self.niw is None else ".")
            )
        return self.niw

    @property
    def dim(self) -> int:
        return self._conjugate_prior().dim

    def statistics_map(self, X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return full_feature_map(X, out=out)

    def posterior(self, G: torch.Tensor) -> NIW:
        """The NIW posterior of every row of G (M, Q + 1), batched."""
        prior = self._conjugate_prior()
        return prior.posterior(*unpack_stats(G, prior.dim))

    def log_marginal_likelihood(self, G: torch.Tensor) -> torch.Tensor:
        prior = self._conjugate_prior()
        return prior.log_marginal_likelihood(*unpack_stats(G, prior.dim))

    def sample_coefficients(
        self, G: torch.Tensor, log_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # global RNG (seeded by the Engine): NIW.sample with a generator re-seeds per call, which is slow
        mu, sigma = self.posterior(G).sample(None)
        return gaussian_coefficients(mu, sigma, log_weights), mu

    def moments(self, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.dim
        n, sx, sxx = unpack_stats(G, d)
        n1 = n.clamp(min=1.0)
        mean = sx / n1[:, None]
        cov = sxx / n1[:, None, None] - mean[:, :, None] * mean[:, None, :]
        return n, mean, cov
