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

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .._device import resolve_device, resolve_dtype
from .._validation import (
    check_array,
    check_is_fitted,
    check_option,
    check_positive_int,
    check_scalar,
)
from ..inference import em, kmeans
from ..inference.engine import Engine, Step
from ..inference.streaming import Features
from ..models import gaussian
from ..models.gmm_model import GMMPrior
from ..models.priors import NIW, gamma_shape
from ._base import ClusterEstimator, MixtureMixin, Run

_FEATURE_CACHE_BYTES = 1 << 30  # cache phi(X) when it fits in 1 GiB; else recompute per chunk


class GaussianMixture(MixtureMixin, ClusterEstimator):
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
        self._set_init_params(locals())

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

    # ------------------------------------------------------------------ fit template hooks
    def _prepare(self, X: Any) -> SimpleNamespace:
        """Validated data, centred (float32 second moments then lose no digits to a large mean), the
        family with its prior in the centred frame, and the feature cache shared by the restarts."""
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        Xt = check_array(X, device=device, dtype=dtype, min_samples=max(2, self.n_components))
        shift = Xt.double().mean(0).to(dtype)
        Xc = Xt - shift
        prior = self._map_prior(Xt)
        niw = None if prior is None else prior.niw
        if niw is not None:
            niw = NIW(niw.m0 - shift, niw.kappa0, niw.nu0, niw.psi0)
        family = gaussian.GaussianFamily(
            self.covariance_type, niw, float(self.weight_concentration_prior), float(self.reg_covar)
        )
        feats = Features(Xc, family.feature_map, int(self.chunk_size))
        warm = bool(self.warm_start and hasattr(self, "means_"))
        return SimpleNamespace(X=Xt, Xc=Xc, shift=shift, prior=prior, family=family, feats=feats, warm=warm)

    def _n_restarts(self, data: SimpleNamespace) -> int:
        return 1 if data.warm or not isinstance(self.init, str) else int(self.n_init)

    def _start(self, data: SimpleNamespace, seed: int | None) -> Run:
        engine = Engine(
            device=data.X.device, dtype=data.X.dtype, random_state=seed, max_iter=self.max_iter,
            tol=self.tol, maximize=True, verbose=self.verbose, callbacks=self.callbacks,
            desc="GaussianMixture EM",
        )
        if data.warm:
            params0 = self._params(data.shift)
        else:
            params0 = self._initial_params(data, engine.generator)
        return Run(engine, [Step("em", em.em_step(data.family, data.feats))], {"params": params0})

    def _restart_score(self, data: SimpleNamespace, run: Run) -> float:
        return float(run.result.history[-1])

    def _finish(self, data: SimpleNamespace, run: Run) -> None:
        self.shift_ = data.shift.cpu().numpy()
        self._store(run.state["params"], data.shift)
        self.lower_bound_ = self.history_[-1]
        self.n_features_in_ = data.X.shape[1]
        self.n_components_ = int(self.n_components)
        if self.inference != "em":
            self._X_fit = data.X.detach().cpu()
            # the EM warm start's run; n_iter_ / converged_ / history_ then describe the route's run
            self.em_n_iter_, self.em_converged_ = self.n_iter_, self.converged_
            self.em_history_ = self.history_
        if self.inference == "svi":
            self._fit_svi(data.X, data.prior)
        elif self.inference == "nuts":
            self._fit_nuts(data.X, data.prior)
        A, c = data.family.log_prob_coefficients(self._params(data.shift))
        self.labels_ = em.argmax_chunks(data.feats, A, c).cpu().numpy()

    def _params(self, shift: torch.Tensor) -> gaussian.GMMParams:
        """The fitted parameters as tensors in the centred frame of ``shift``."""
        kw = {"device": shift.device, "dtype": shift.dtype}
        return gaussian.GMMParams(
            torch.as_tensor(self.weights_, **kw),
            torch.as_tensor(self.means_, **kw) - shift,
            torch.as_tensor(self.covariances_, **kw),
        )

    def _initial_params(self, data: SimpleNamespace, gen: torch.Generator) -> gaussian.GMMParams:
        """Parameters from the ``init`` responsibilities (or given means / weights / covariances)."""
        Xc, k = data.Xc, self.n_components
        n, d = Xc.shape
        chunk = int(self.chunk_size)
        if not isinstance(self.init, str):
            means = check_array(self.init, name="init", device=Xc.device, dtype=Xc.dtype)
            if tuple(means.shape) != (k, d):
                raise ValueError(f"init means must have shape ({k}, {d}), got {tuple(means.shape)}.")
            means = means - data.shift
            if self.weights_init is not None or self.covariances_init is not None:
                return self._given_params(means, Xc)
            resp = torch.nn.functional.one_hot(kmeans.nearest_center(Xc, means, chunk), k).to(Xc.dtype)
        elif self.init == "random":
            resp = torch.rand(n, k, generator=gen, dtype=torch.float64).to(Xc)
            resp = resp / resp.sum(1, keepdim=True)
        else:
            if self.init == "random_from_data":
                centers = Xc[torch.randperm(n, generator=gen)[:k].to(Xc.device)]
            else:
                centers = kmeans.kmeans_plusplus(Xc, k, gen, chunk)
                if self.init == "kmeans":
                    centers = kmeans.lloyd(Xc, centers, 20, chunk)
            resp = torch.nn.functional.one_hot(kmeans.nearest_center(Xc, centers, chunk), k).to(Xc.dtype)
        unit = gaussian.GMMParams(
            torch.full((k,), 1.0 / k, dtype=Xc.dtype, device=Xc.device),
            torch.zeros(k, d, dtype=Xc.dtype, device=Xc.device),
            gaussian.identity_covariances(self.covariance_type, k, d, Xc),
        )
        return data.family.m_step(em.statistics_from_resp(data.feats, resp), unit)

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
            cov = gaussian.identity_covariances(self.covariance_type, k, d, Xc)
        else:
            expected = gaussian.covariance_shape(self.covariance_type, k, d)
            cov = check_array(self.covariances_init, name="covariances_init", ndim=len(expected), **kw)
            if tuple(cov.shape) != expected:
                raise ValueError(
                    f"covariances_init must have shape {expected} for covariance_type="
                    f"{self.covariance_type!r}, got {tuple(cov.shape)}."
                )
        return gaussian.GMMParams(w, means_c, cov)

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
        gmm_prior = GMMPrior.from_niw(prior.alpha, prior.niw)
        result = fit_svi(
            X, self.n_components, self.covariance_type, gmm_prior, self._init_dict(X), engine,
            guide=self.svi_guide, lr=float(self.learning_rate), batch_size=self.batch_size,
        )
        self._svi_result = result
        self._store_route(result.weights, result.means, result.covariances)
        self._set_run_attributes(result.fit)  # n_iter_ / converged_ / history_: the SVI epochs

    def _fit_nuts(self, X: torch.Tensor, prior: gaussian.MAPPrior) -> None:
        from ..inference.nuts import fit_nuts

        gmm_prior = GMMPrior.from_niw(prior.alpha, prior.niw, torch.float64)
        result = fit_nuts(
            X.double(), self.n_components, self.covariance_type, gmm_prior,
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
        self._set_nuts_attributes(X, s)

    def _set_nuts_attributes(self, X: torch.Tensor, samples: dict[str, torch.Tensor]) -> None:
        """NUTS run attributes: ``n_iter_`` draws per chain, ``history_`` the mean log-likelihood per
        point of each draw (averaged over chains), ``converged_`` max split R-hat of weights and
        means below 1.1 (``rhat_`` holds that maximum; NaN, and ``converged_`` False, with < 4 draws)."""
        from ..inference.nuts import draw_log_likelihoods, max_split_rhat

        family = gaussian.GaussianFamily(self.covariance_type)
        feats = Features(X.double(), family.feature_map, int(self.chunk_size))
        cov = _draw_covariances(samples, self.covariance_type)
        loglik = draw_log_likelihoods(family, feats, samples["weights"], samples["means"], cov)
        self.history_ = (loglik.mean(0) / X.shape[0]).tolist()
        self.n_iter_ = int(loglik.shape[1])
        # split R-hat needs at least 4 draws a chain; with fewer, convergence is not assessed
        self.rhat_ = max_split_rhat(samples, ("weights", "means")) if self.n_iter_ >= 4 else float("nan")
        self.converged_ = bool(self.rhat_ < 1.1)

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
        """log w_k + log N(x | mu_k, Sigma_k) (N, K) and log p(x) (N,) of new data."""
        self._check_fitted()
        # float64 whatever the fit dtype: a row's result then does not depend on the other rows of
        # the block (float32 matmuls round differently by block size), and log-densities keep digits
        device, dtype = resolve_device(self.device), torch.float64
        Xt = check_array(X, device=device, dtype=dtype, n_features=self.n_features_in_)
        shift = torch.as_tensor(self.shift_, device=device, dtype=dtype)
        family = gaussian.GaussianFamily(self.covariance_type)
        A, c = family.log_prob_coefficients(self._params(shift))
        feats = Features(Xt - shift, family.feature_map, int(self.chunk_size), cache_bytes=0)
        return em.log_resp_chunks(feats, A, c)

    def _log_scores(self, X: Any) -> torch.Tensor:
        return self._weighted_log_prob(X)[0]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior component probabilities (N, K)."""
        logits, ll = self._weighted_log_prob(X)
        return torch.exp(logits - ll[:, None]).cpu().numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-likelihood log p(x) of each sample (N,)."""
        return self._weighted_log_prob(X)[1].double().cpu().numpy()

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        return int(gaussian.n_covariance_parameters(self.covariance_type, k, d) + k * d + k - 1)

    def _sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        counts = rng.multinomial(n, self.weights_ / self.weights_.sum())
        d = self.means_.shape[1]
        xs, ys = [], []
        for k, m in enumerate(counts):  # K draws of one Gaussian each; not a loop over data
            cov = gaussian.component_covariance(self.covariances_, self.covariance_type, k, d)
            xs.append(rng.multivariate_normal(self.means_[k], cov, size=m) if m else np.empty((0, d)))
            ys.append(np.full(m, k))
        return np.vstack(xs), np.concatenate(ys)


def _draw_covariances(samples: dict[str, torch.Tensor], cov_type: str) -> torch.Tensor:
    """Covariances of every draw (chains, draws, ...) from the NUTS samples."""
    if "covariances" in samples:
        return samples["covariances"]
    from ..models.gmm_model import precisions_to_covariances

    return precisions_to_covariances(samples["precisions"], cov_type)


def _posterior_mean_cov(samples: dict[str, torch.Tensor], cov_type: str) -> torch.Tensor:
    return _draw_covariances(samples, cov_type).mean((0, 1))
