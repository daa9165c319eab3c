"""Closed-form E and M steps for Gaussian mixtures, on sufficient statistics.

The E-step writes every component's log density as one matmul on a feature map of the data:

    log N(x | mu_k, Sigma_k) = phi(x) . a_k + c_k,

with phi(x) = [x_i x_j (i <= j), x] for full / tied covariances (Q = D(D+1)/2 + D) and
phi(x) = [x^2, x] for diag / spherical (Q = 2D). With responsibilities r (n, K) the M-step needs
only G = [phi(X), 1]^T r (Q + 1, K): counts, first and second moments of every component. So one
iteration is two (n x Q) @ (Q x K) products per chunk: memory O(chunk x (Q + K)), never
O(N x K x D), and no Python loop over components.

Covariances are stored as scikit-learn does: full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.gmm_model import gamma_shape
from ..models.priors import NIW

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@dataclass
class GMMParams:
    """Mixture parameters (in the frame of the data the EM runs on)."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    covariances: torch.Tensor  # full (K,D,D) | tied (D,D) | diag (K,D) | spherical (K,)

    def clone(self) -> GMMParams:
        return GMMParams(self.weights.clone(), self.means.clone(), self.covariances.clone())


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
    given; the products are D contiguous slice products (a column gather ``X[:, i] * X[:, j]``
    costs several times more).
    """
    n, d = X.shape
    q = feature_dim(d, covariance_type) + int(ones)
    out = X.new_empty(n, q) if out is None else out[:n]
    if covariance_type in ("full", "tied"):
        col = 0
        for i in range(d):  # row i of the upper triangle, in triu_indices order (a loop over D, not N)
            torch.mul(X[:, i : i + 1], X[:, i:], out=out[:, col : col + d - i])
            col += d - i
    else:
        torch.mul(X, X, out=out[:, :d])
        col = d
    out[:, col : col + d] = X
    if ones:
        out[:, -1] = 1.0
    return out


# ---------------------------------------------------------------------------- parameters
def precisions_cholesky(covariances: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Cholesky factor L of the precision (Sigma^-1 = L L^T), as scikit-learn's precisions_cholesky_."""
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(covariances)
        if bool((info != 0).any()):
            raise ValueError(
                "A component covariance is not positive definite (singular or collapsed "
                "component); increase reg_covar, use fewer components, or check for duplicated "
                "points / constant features."
            )
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
        eye = eye.expand_as(covariances)
        return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)
    if bool((covariances <= 0).any()):
        raise ValueError(
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
        prec_chol = precisions_cholesky(cov, covariance_type)
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


# ---------------------------------------------------------------------------- E-step
FeatureSource = Callable[[slice], torch.Tensor]


# exp(x) below -87 (float32) or -708 (float64) is a denormal, which costs the exp and the next matmul
# many times a normal number; relative responsibilities below these floors are set to the floor.
_EXP_FLOOR = {4: -80.0, 8: -700.0}


def block_rows(q: int, itemsize: int, chunk_size: int) -> int:
    """Rows per block so one block of phi (rows x q) stays in cache (~4 MiB) across both matmuls."""
    return max(256, min(chunk_size, (1 << 22) // (q * itemsize)))


def e_step(
    n: int,
    features: FeatureSource,
    A: torch.Tensor,
    c: torch.Tensor,
    chunk_size: int,
    *,
    accumulate: bool = True,
) -> tuple[float, torch.Tensor | None]:
    """Chunked E-step: total log-likelihood and, if ``accumulate``, G = [phi, 1]^T r (Q + 1, K).

    ``features(slice)`` returns phi of those rows (a view of a cache or computed on the fly). In
    float32, rows are taken in cache-sized blocks so that the E-step matmul and the M-step
    statistics matmul read the same block of phi while it is still in cache: both products are
    memory-bound there, so this halves the traffic to main memory.
    """
    total = torch.zeros((), dtype=torch.float64, device=A.device)
    G = torch.zeros(A.shape[0] + 1, A.shape[1], dtype=A.dtype, device=A.device) if accumulate else None
    if A.element_size() >= 8:
        # float64 products are compute-bound on a CPU (half the SIMD lanes), so cache blocking does
        # not pay; large chunks in the (K, n) layout measured faster (0.35 vs 0.42 s, 200k x 560 x 16).
        step, transposed = chunk_size, True
    else:
        step, transposed = block_rows(A.shape[0], A.element_size(), chunk_size), False
    floor = _EXP_FLOOR.get(A.element_size(), -80.0)
    dim = 0 if transposed else 1  # the axis over components
    for start in range(0, n, step):
        phi = features(slice(start, min(n, start + step)))
        if transposed:
            logits = torch.addmm(c[:, None], A.T, phi.T)  # (K, m)
        else:
            logits = torch.addmm(c, phi, A)  # (m, K)
        # one exp serves the log-sum-exp and the responsibilities
        peak = logits.amax(dim=dim, keepdim=True)
        resp = torch.exp_(logits.sub_(peak).clamp_(min=floor))
        norm = resp.sum(dim=dim, keepdim=True)
        total += (peak + torch.log(norm)).sum(dtype=torch.float64)
        if G is not None:
            resp.div_(norm)
            G[:-1].addmm_(phi.T, resp.T if transposed else resp)
            G[-1] += resp.sum(1 - dim)
    return float(total), G


def log_resp_chunks(
    n: int, features: FeatureSource, A: torch.Tensor, c: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted log densities (N, K) and per-point log-likelihood (N,), chunked."""
    logits = torch.empty(n, A.shape[1], dtype=A.dtype, device=A.device)
    ll = torch.empty(n, dtype=A.dtype, device=A.device)
    step = block_rows(A.shape[0], A.element_size(), chunk_size)
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        block = torch.addmm(c, features(sl), A, out=logits[sl])
        ll[sl] = torch.logsumexp(block, dim=1)
    return logits, ll


def argmax_chunks(
    n: int, features: FeatureSource, A: torch.Tensor, c: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """argmax_k of phi(x) . A[:, k] + c[k] for every row (N,), block by block (no (N, K) array)."""
    labels = torch.empty(n, dtype=torch.long, device=A.device)
    step = block_rows(A.shape[0], A.element_size(), chunk_size)
    buf = torch.empty(min(n, step), A.shape[1], dtype=A.dtype, device=A.device)
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        block = torch.addmm(c, features(sl), A, out=buf[: sl.stop - start])
        torch.argmax(block, dim=1, out=labels[sl])
    return labels


# ---------------------------------------------------------------------------- M-step
def unpack_stats(G: torch.Tensor, d: int, covariance_type: str):
    """G (Q + 1, K) -> counts (K,), sum x (K, D), second moments (full/tied (K,D,D); diag (K,D))."""
    nk = G[-1]
    if covariance_type in ("full", "tied"):
        p = d * (d + 1) // 2
        i, j = _triu(d, G.device)
        sxx = torch.zeros(G.shape[1], d, d, dtype=G.dtype, device=G.device)
        sxx[:, i, j] = G[:p].T
        sxx[:, j, i] = G[:p].T
        sx = G[p : p + d].T
    else:
        sxx = G[:d].T
        sx = G[d : 2 * d].T
    return nk, sx, sxx


def m_step(
    G: torch.Tensor,
    d: int,
    covariance_type: str,
    reg_covar: float,
    prior: MAPPrior | None,
    previous: GMMParams,
) -> GMMParams:
    """Maximum-likelihood (``prior=None``, as scikit-learn) or MAP M-step from statistics G.

    MAP is the joint mode of the Normal-Wishart posterior in the precision parametrisation of
    the Pyro model (models/gmm_model.py): Sigma_k = Psi_n / (nu_n - D) for full covariances
    (tied, diag and spherical analogously; derivations in the docstring of each branch).
    """
    nk, sx, sxx = unpack_stats(G, d, covariance_type)
    tiny = 10 * torch.finfo(G.dtype).eps
    nk_safe = nk + tiny
    n_total = nk.sum()
    k = nk.shape[0]
    empty = nk < 1e-6 * n_total.clamp(min=1.0) / k
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
            # lambda ~ Gamma(a, psi/2) with a from gmm_model.gamma_shape; the joint mode of (mu, lambda)
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
    niw, d = prior.niw, params.means.shape[1]
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


# ---------------------------------------------------------------------------- initialisation
def kmeans_plusplus(
    X: torch.Tensor, k: int, generator: torch.Generator, chunk_size: int = 65536
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with 2 + log k local trials, as scikit-learn."""
    n = X.shape[0]
    n_trials = 2 + int(math.log(k))
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
