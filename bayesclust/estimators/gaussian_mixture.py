"""Finite Bayesian Gaussian mixture, ``bc.GaussianMixture``.

The model is the Pyro program in :mod:`bayesclust.models.gmm_model` (symmetric Dirichlet weights,
Normal-Wishart / Normal-Gamma priors on means and precisions, enumerated assignments). Three
routes fit that one model:

- ``inference="em"``: MAP-EM in closed form on sufficient statistics (``inference/em.py``);
  with ``prior=None`` it is maximum-likelihood EM and matches scikit-learn's ``GaussianMixture``.
- ``inference="svi"``: Pyro SVI with ``TraceEnum_ELBO`` (MAP or mean-field guide), started at EM-MAP.
- ``inference="nuts"``: Pyro NUTS with the assignments enumerated out, for small data; draws are
  relabelled to the EM-MAP solution by Hungarian matching (label switching).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._device import empty_buffer, resolve_device, resolve_dtype
from .._validation import (
    check_array,
    check_is_fitted,
    check_option,
    check_positive_int,
    check_scalar,
)
from ..inference import em, kmeans
from ..inference.engine import Engine, Step
from ..models import gaussian
from ..models.gmm_model import gamma_shape
from ..models.priors import NIW
from ._base import BaseEstimator, ClusterMixin

_FEATURE_CACHE_BYTES = 1 << 30  # cache phi(X) when it fits in 1 GiB; else recompute per chunk


class GaussianMixture(ClusterMixin, BaseEstimator):
    """Bayesian Gaussian mixture with K components.

    Parameters
    ----------
    n_components : number of components K.
    covariance_type : "full" (K, D, D), "tied" (D, D), "diag" (K, D) or "spherical" (K,).
    inference : "em" (MAP-EM, default), "svi" or "nuts".
    prior : "niw" (conjugate prior, MAP estimates) or None (maximum likelihood; "em" only).
    weight_concentration_prior : symmetric Dirichlet alpha on the weights (1.0 = flat).
    mean_precision_prior : kappa0, the prior mean's weight in pseudo-observations (default 0.01).
    mean_prior : m0 (D,), default the data mean.
    degrees_of_freedom_prior : nu0 > D - 1 of the Wishart on precisions, default D + 2.
    covariance_prior : the Wishart scale psi0 (D, D), a (D,) diagonal or a float times identity;
        default ``diag(var(X))`` so that the prior mean of each covariance is the data variance.
    tol : convergence threshold on the change of the per-sample objective (0 runs all iterations).
    reg_covar : added to covariance diagonals for numerical stability.
    max_iter : EM iterations (or SVI steps for "svi").
    n_init : initialisations; the best objective is kept.
    init : "kmeans" (k-means++ then Lloyd), "kmeans++", "random", "random_from_data", or
        initial means (K, D).
    weights_init, covariances_init : optional initial weights (K,) and covariances (sklearn shape),
        used with given means.
    warm_start : start from the previous fit's parameters.
    svi_guide : "map" (AutoDelta) or "meanfield"; learning_rate and batch_size apply to SVI.
    num_samples, warmup_steps, num_chains : NUTS settings.
    device, dtype, chunk_size, random_state, verbose, callbacks : see :class:`bayesclust.Engine`.

    Attributes
    ----------
    weights_ (K,), means_ (K, D), covariances_, precisions_, precisions_cholesky_,
    converged_, n_iter_, lower_bound_ (final per-sample objective), history_, labels_,
    n_features_in_; for NUTS also ``posterior_samples_`` and ``relabel_fraction_``.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        inference: str = "em",
        prior: str | None = "niw",
        weight_concentration_prior: float = 1.0,
        mean_precision_prior: float = 0.01,
        mean_prior: Any = None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior: Any = None,
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init: Any = "kmeans",
        weights_init: Any = None,
        covariances_init: Any = None,
        warm_start: bool = False,
        svi_guide: str = "map",
        learning_rate: float = 0.05,
        batch_size: int | None = None,
        num_samples: int = 500,
        warmup_steps: int = 500,
        num_chains: int = 2,
        device: str = "cpu",
        dtype: str = "float32",
        chunk_size: int = 65536,
        random_state: int | None = None,
        verbose: bool = False,
        callbacks: list | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.inference = inference
        self.prior = prior
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init = init
        self.weights_init = weights_init
        self.covariances_init = covariances_init
        self.warm_start = warm_start
        self.svi_guide = svi_guide
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.warmup_steps = warmup_steps
        self.num_chains = num_chains
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        check_positive_int(self.n_components, "n_components")
        check_option(self.covariance_type, "covariance_type", gaussian.COVARIANCE_TYPES)
        check_option(self.inference, "inference", ("em", "svi", "nuts"))
        check_option(self.prior, "prior", ("niw", None))
        if self.prior is None and self.inference != "em":
            raise ValueError(
                f"inference={self.inference!r} needs a proper prior; use prior='niw' "
                "(prior=None, maximum likelihood, is only available with inference='em')."
            )
        check_scalar(
            self.weight_concentration_prior, "weight_concentration_prior", low=0, low_inclusive=False
        )
        check_scalar(self.mean_precision_prior, "mean_precision_prior", low=0, low_inclusive=False)
        check_scalar(self.tol, "tol", low=0)
        check_scalar(self.reg_covar, "reg_covar", low=0)
        check_positive_int(self.max_iter, "max_iter")
        check_positive_int(self.n_init, "n_init")
        check_positive_int(self.chunk_size, "chunk_size")
        if isinstance(self.init, str):
            check_option(self.init, "init", ("kmeans", "kmeans++", "random", "random_from_data"))
        check_option(self.svi_guide, "svi_guide", ("map", "meanfield"))
        check_scalar(self.learning_rate, "learning_rate", low=0, low_inclusive=False)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.num_samples, "num_samples")
        check_positive_int(self.warmup_steps, "warmup_steps", minimum=0)
        check_positive_int(self.num_chains, "num_chains")

    def _map_prior(self, X: torch.Tensor) -> gaussian.MAPPrior | None:
        """The prior on the data X (N, D) in the frame the EM runs in."""
        if self.prior is None:
            return None
        d = X.shape[1]
        nu0 = self.degrees_of_freedom_prior
        if nu0 is not None:
            check_scalar(nu0, "degrees_of_freedom_prior", low=d - 1, low_inclusive=False)
            if self.covariance_type == "spherical":
                gamma_shape(float(nu0), d, "spherical")  # raises when the shared-precision prior is improper
        m0 = None
        if self.mean_prior is not None:
            m0 = check_array(self.mean_prior, name="mean_prior", ndim=1, device=X.device, dtype=X.dtype)
            if m0.shape[0] != d:
                raise ValueError(f"mean_prior has {m0.shape[0]} entries but X has {d} features.")
        psi0 = None
        if self.covariance_prior is not None:
            psi0 = self._covariance_prior_matrix(d, X)
        niw = NIW.from_data(X, kappa0=float(self.mean_precision_prior), nu0=nu0, m0=m0, psi0=psi0)
        return gaussian.MAPPrior(float(self.weight_concentration_prior), niw)

    def _covariance_prior_matrix(self, d: int, X: torch.Tensor) -> torch.Tensor:
        cp = self.covariance_prior
        if isinstance(cp, int | float) and not isinstance(cp, bool):
            check_scalar(cp, "covariance_prior", low=0, low_inclusive=False)
            return float(cp) * torch.eye(d, dtype=X.dtype, device=X.device)
        arr = check_array(cp, name="covariance_prior", ndim=(1, 2), device=X.device, dtype=X.dtype)
        if arr.ndim == 1:
            if arr.shape[0] != d or bool((arr <= 0).any()):
                raise ValueError(f"covariance_prior as a vector must have {d} positive entries.")
            return torch.diag(arr)
        if tuple(arr.shape) != (d, d):
            raise ValueError(f"covariance_prior must be ({d}, {d}), got {tuple(arr.shape)}.")
        if torch.linalg.cholesky_ex(arr)[1] != 0:
            raise ValueError("covariance_prior must be symmetric positive definite.")
        return arr

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        """Fit the mixture to X (N, D); returns self."""
        self._check_params()
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype)
        Xt = check_array(X, device=device, dtype=dtype, min_samples=max(2, self.n_components))
        n, d = Xt.shape
        # EM runs on centred data: float32 second moments then lose no digits to a large mean.
        shift = Xt.double().mean(0).to(dtype)
        Xc = Xt - shift
        prior = self._map_prior(Xt)
        prior_c = None
        if prior is not None:
            niw = prior.niw
            prior_c = gaussian.MAPPrior(prior.alpha, NIW(niw.m0 - shift, niw.kappa0, niw.nu0, niw.psi0))
        features = self._feature_source(Xc)
        best = None
        warm = self.warm_start and hasattr(self, "means_")
        n_init = 1 if warm or not isinstance(self.init, str) else self.n_init
        base_seed = self.random_state
        for i_init in range(n_init):
            seed = None if base_seed is None else int(base_seed) + i_init
            engine = Engine(
                device=device, dtype=dtype, random_state=seed, max_iter=self.max_iter, tol=self.tol,
                maximize=True, verbose=self.verbose, callbacks=self.callbacks, desc="GaussianMixture EM",
            )
            params0 = self._warm_params(shift, dtype, device) if warm else self._initial_params(
                Xc, shift, engine.generator, prior_c, features
            )
            state = {"params": params0}
            schedule = [Step("em", self._em_step_fn(n, d, features, prior_c))]
            result = engine.run(schedule, state)
            if best is None or result.history[-1] > best[1].history[-1]:
                best = (state["params"], result)
        params, result = best
        self.shift_ = shift.cpu().numpy()
        self._store(params, shift)
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.history_ = list(result.history)
        self.lower_bound_ = result.history[-1]
        self.n_features_in_ = d
        if self.inference != "em":
            self._X_fit = Xt.detach().cpu()
        if self.inference == "svi":
            self._fit_svi(Xt, prior)
        elif self.inference == "nuts":
            self._fit_nuts(Xt, prior)
        self.labels_ = self._labels_from_features(Xc.shape[0], features)
        return self

    def _labels_from_features(self, n: int, features) -> np.ndarray:
        """Labels of the training data from the cached feature map (no second feature pass)."""
        dtype, device = resolve_dtype(self.dtype), resolve_device(self.device)
        kw = {"device": device, "dtype": dtype}
        shift = torch.as_tensor(self.shift_, **kw)
        params = gaussian.GMMParams(
            torch.as_tensor(self.weights_, **kw),
            torch.as_tensor(self.means_, **kw) - shift,
            torch.as_tensor(self.covariances_, **kw),
        )
        A, c = gaussian.log_prob_coefficients(params, self.covariance_type)
        return em.argmax_chunks(n, features, A, c, int(self.chunk_size)).cpu().numpy()

    def _feature_source(self, Xc: torch.Tensor):
        n, d = Xc.shape
        q = gaussian.feature_dim(d, self.covariance_type)
        if n * q * Xc.element_size() <= _FEATURE_CACHE_BYTES:
            buf = empty_buffer(n, q, Xc.dtype, Xc.device)
            phi = gaussian.feature_map(Xc, self.covariance_type, out=buf)
            return lambda sl: phi[sl]
        return lambda sl: gaussian.feature_map(Xc[sl], self.covariance_type)

    def _em_step_fn(self, n: int, d: int, features, prior: gaussian.MAPPrior | None):
        cov_type, chunk, reg = self.covariance_type, int(self.chunk_size), float(self.reg_covar)

        def step(state: dict, iteration: int) -> float:
            params = state["params"]
            A, c = gaussian.log_prob_coefficients(params, cov_type)
            loglik, G = em.e_step(n, features, A, c, chunk)
            objective = (loglik + gaussian.log_prior(params, prior, cov_type)) / n
            state["params"] = gaussian.m_step(G, d, cov_type, reg, prior, params)
            return objective

        return step

    def _initial_params(
        self,
        Xc: torch.Tensor,
        shift: torch.Tensor,
        gen: torch.Generator,
        prior: gaussian.MAPPrior | None,
        features,
    ) -> gaussian.GMMParams:
        n, d = Xc.shape
        k = self.n_components
        chunk = int(self.chunk_size)
        if not isinstance(self.init, str):
            means = check_array(self.init, name="init", device=Xc.device, dtype=Xc.dtype)
            if tuple(means.shape) != (k, d):
                raise ValueError(f"init means must have shape ({k}, {d}), got {tuple(means.shape)}.")
            means = means - shift
            if self.weights_init is not None or self.covariances_init is not None:
                return self._given_params(means, Xc)
            resp = torch.nn.functional.one_hot(kmeans.nearest_center(Xc, means, chunk), k).to(Xc.dtype)
        elif self.init == "random":
            resp = torch.rand(n, k, generator=gen, dtype=torch.float64).to(Xc)
            resp = resp / resp.sum(1, keepdim=True)
        else:
            if self.init == "random_from_data":
                idx = torch.randperm(n, generator=gen)[:k].to(Xc.device)
                centers = Xc[idx]
            else:
                centers = kmeans.kmeans_plusplus(Xc, k, gen, chunk)
                if self.init == "kmeans":
                    centers = kmeans.lloyd(Xc, centers, 20, chunk)
            resp = torch.nn.functional.one_hot(kmeans.nearest_center(Xc, centers, chunk), k).to(Xc.dtype)
        G = self._stats_from_resp(Xc, resp, features, chunk)
        dummy = gaussian.GMMParams(
            torch.full((k,), 1.0 / k, dtype=Xc.dtype, device=Xc.device),
            torch.zeros(k, d, dtype=Xc.dtype, device=Xc.device),
            _identity_cov(self.covariance_type, k, d, Xc),
        )
        return gaussian.m_step(G, d, self.covariance_type, float(self.reg_covar), prior, dummy)

    def _stats_from_resp(self, Xc, resp, features, chunk) -> torch.Tensor:
        q = gaussian.feature_dim(Xc.shape[1], self.covariance_type)
        G = torch.zeros(q + 1, resp.shape[1], dtype=Xc.dtype, device=Xc.device)
        for sl in Engine.chunks(Xc.shape[0], chunk):
            G[:-1] += features(sl).T @ resp[sl]
            G[-1] += resp[sl].sum(0)
        return G

    def _given_params(self, means_c: torch.Tensor, Xc: torch.Tensor) -> gaussian.GMMParams:
        k, d = means_c.shape
        kw = {"device": Xc.device, "dtype": Xc.dtype}
        if self.weights_init is None:
            w = torch.full((k,), 1.0 / k, **kw)
        else:
            w = check_array(self.weights_init, name="weights_init", ndim=1, **kw)
            if w.shape[0] != k or bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-5:
                raise ValueError(f"weights_init must be {k} non-negative numbers summing to 1.")
        if self.covariances_init is None:
            cov = _identity_cov(self.covariance_type, k, d, Xc)
        else:
            ndim = {"full": 3, "tied": 2, "diag": 2, "spherical": 1}[self.covariance_type]
            cov = check_array(self.covariances_init, name="covariances_init", ndim=ndim, **kw)
            expected = _cov_shape(self.covariance_type, k, d)
            if tuple(cov.shape) != expected:
                raise ValueError(
                    f"covariances_init must have shape {expected} for covariance_type="
                    f"{self.covariance_type!r}, got {tuple(cov.shape)}."
                )
        return gaussian.GMMParams(w, means_c, cov)

    def _warm_params(self, shift, dtype, device) -> gaussian.GMMParams:
        kw = {"device": device, "dtype": dtype}
        return gaussian.GMMParams(
            torch.as_tensor(self.weights_, **kw),
            torch.as_tensor(self.means_, **kw) - shift,
            torch.as_tensor(self.covariances_, **kw),
        )

    def _store(self, params: gaussian.GMMParams, shift: torch.Tensor) -> None:
        self.weights_ = params.weights.detach().cpu().numpy()
        self.means_ = (params.means + shift).detach().cpu().numpy()
        self.covariances_ = params.covariances.detach().cpu().numpy()
        prec_chol = gaussian.precisions_cholesky(params.covariances, self.covariance_type)
        self.precisions_cholesky_ = prec_chol.detach().cpu().numpy()
        if self.covariance_type in ("full", "tied"):
            self.precisions_ = (prec_chol @ prec_chol.transpose(-1, -2)).detach().cpu().numpy()
        else:
            self.precisions_ = (prec_chol * prec_chol).detach().cpu().numpy()

    # ------------------------------------------------------------------ svi / nuts routes
    def _fit_svi(self, X: torch.Tensor, prior: gaussian.MAPPrior) -> None:
        from ..inference.svi import fit_svi

        engine = Engine(
            device=X.device, dtype=X.dtype, random_state=self.random_state, max_iter=self.max_iter,
            tol=0.0, maximize=False, verbose=self.verbose, callbacks=self.callbacks,
            desc="GaussianMixture SVI",
        )
        result = fit_svi(
            X, self.n_components, self.covariance_type, _gmm_prior(prior), self._init_dict(X),
            engine, guide=self.svi_guide, lr=float(self.learning_rate), batch_size=self.batch_size,
        )
        self._svi_result = result
        self._store_route(result.weights, result.means, result.covariances)
        self.svi_history_ = list(result.history)

    def _fit_nuts(self, X: torch.Tensor, prior: gaussian.MAPPrior) -> None:
        from ..inference.nuts import fit_nuts

        result = fit_nuts(
            X.double(), self.n_components, self.covariance_type, _gmm_prior(prior, torch.float64),
            {k: v.double() for k, v in self._init_dict(X).items()},
            num_samples=int(self.num_samples), warmup_steps=int(self.warmup_steps),
            num_chains=int(self.num_chains), random_state=self.random_state,
        )
        self._nuts_result = result
        s = result.samples
        self._store_route(
            s["weights"].mean((0, 1)), s["means"].mean((0, 1)), _posterior_mean_cov(s, self.covariance_type)
        )
        self.posterior_samples_ = {k: v.detach().cpu().numpy() for k, v in s.items()}
        self.relabel_fraction_ = float(result.relabelled_fraction)
        self.divergences_ = int(torch.as_tensor(result.divergences).sum())

    def _init_dict(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        kw = {"device": X.device, "dtype": X.dtype}
        return {
            "weights": torch.as_tensor(self.weights_, **kw),
            "means": torch.as_tensor(self.means_, **kw),
            "covariances": torch.as_tensor(self.covariances_, **kw),
        }

    def _store_route(self, weights, means, covariances) -> None:
        self.em_means_ = self.means_
        shift = torch.as_tensor(self.shift_)
        self._store(
            gaussian.GMMParams(
                torch.as_tensor(weights).detach().cpu().to(shift.dtype),
                torch.as_tensor(means).detach().cpu().to(shift.dtype) - shift,
                torch.as_tensor(covariances).detach().cpu().to(shift.dtype),
            ),
            shift,
        )

    def to_inference_data(self):
        """ArviZ InferenceData of the NUTS or SVI (mean-field) posterior."""
        check_is_fitted(self, ["means_"])
        from ..posterior import gmm_inference_data

        result = getattr(self, "_nuts_result", None) or getattr(self, "_svi_result", None)
        if result is None:
            raise ValueError(
                "to_inference_data() needs a posterior: fit with inference='nuts' or "
                "inference='svi' (EM gives a point estimate only)."
            )
        return gmm_inference_data(result, torch.as_tensor(self._X_fit), self.covariance_type)

    # ------------------------------------------------------------------ prediction
    def _weighted_log_prob(self, X: Any) -> tuple[torch.Tensor, torch.Tensor]:
        check_is_fitted(self, ["means_"])
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype)
        Xt = check_array(X, device=device, dtype=dtype, n_features=self.n_features_in_)
        shift = torch.as_tensor(self.shift_, device=device, dtype=dtype)
        Xc = Xt - shift
        kw = {"device": device, "dtype": dtype}
        params = gaussian.GMMParams(
            torch.as_tensor(self.weights_, **kw),
            torch.as_tensor(self.means_, **kw) - shift,
            torch.as_tensor(self.covariances_, **kw),
        )
        A, c = gaussian.log_prob_coefficients(params, self.covariance_type)
        cov_type = self.covariance_type
        return em.log_resp_chunks(
            Xc.shape[0], lambda sl: gaussian.feature_map(Xc[sl], cov_type), A, c, int(self.chunk_size)
        )

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior component probabilities (N, K)."""
        logits, ll = self._weighted_log_prob(X)
        return torch.exp(logits - ll[:, None]).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component of each sample (N,)."""
        logits, _ = self._weighted_log_prob(X)
        return logits.argmax(1).cpu().numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-likelihood log p(x) of each sample (N,)."""
        return self._weighted_log_prob(X)[1].double().cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean())

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        cov = {"full": k * d * (d + 1) / 2, "tied": d * (d + 1) / 2, "diag": k * d, "spherical": k}
        return int(cov[self.covariance_type] + k * d + k - 1)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion (lower is better)."""
        n = np.shape(X)[0] if not isinstance(X, torch.Tensor) else X.shape[0]
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion (lower is better)."""
        n = np.shape(X)[0] if not isinstance(X, torch.Tensor) else X.shape[0]
        return -2 * self.score(X) * n + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw (X (n, D), component labels (n,)) from the fitted mixture."""
        check_is_fitted(self, ["means_"])
        check_positive_int(n_samples, "n_samples")
        rng = np.random.default_rng(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_ / self.weights_.sum())
        d = self.means_.shape[1]
        xs, ys = [], []
        for k, m in enumerate(counts):  # K draws of one Gaussian each; not a loop over data
            cov = self._component_cov(k)
            xs.append(rng.multivariate_normal(self.means_[k], cov, size=m) if m else np.empty((0, d)))
            ys.append(np.full(m, k))
        return np.vstack(xs), np.concatenate(ys)

    def _component_cov(self, k: int) -> np.ndarray:
        c, d = self.covariances_, self.means_.shape[1]
        return {
            "full": lambda: c[k],
            "tied": lambda: c,
            "diag": lambda: np.diag(c[k]),
            "spherical": lambda: np.eye(d) * c[k],
        }[self.covariance_type]()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.inference != "em"
        return tags


def _identity_cov(cov_type: str, k: int, d: int, ref: torch.Tensor) -> torch.Tensor:
    kw = {"device": ref.device, "dtype": ref.dtype}
    return {
        "full": lambda: torch.eye(d, **kw).expand(k, d, d).clone(),
        "tied": lambda: torch.eye(d, **kw),
        "diag": lambda: torch.ones(k, d, **kw),
        "spherical": lambda: torch.ones(k, **kw),
    }[cov_type]()


def _cov_shape(cov_type: str, k: int, d: int) -> tuple[int, ...]:
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[cov_type]


def _gmm_prior(prior: gaussian.MAPPrior, dtype: torch.dtype | None = None):
    from ..models.gmm_model import GMMPrior

    niw = prior.niw
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    return GMMPrior(
        alpha=prior.alpha, m0=cast(niw.m0), kappa0=float(niw.kappa0), nu0=float(niw.nu0), psi0=cast(niw.psi0)
    )


def _posterior_mean_cov(samples: dict[str, torch.Tensor], cov_type: str) -> torch.Tensor:
    if "covariances" in samples:
        return samples["covariances"].mean((0, 1))
    from ..models.gmm_model import precisions_to_covariances

    return precisions_to_covariances(samples["precisions"], cov_type).mean((0, 1))
