"""Dirichlet-process Gaussian mixture that infers the number of clusters: ``DPGMM``.

The model (:func:`dp_mixture_model`, a Pyro program) is

    v_k ~ Beta(1, alpha),  pi_k = v_k prod_{j<k} (1 - v_j)          (stick breaking)
    Lambda_k ~ Wishart(nu0, psi0^-1),  mu_k ~ N(m0, (kappa0 Lambda_k)^-1)   (NIW base measure)
    z_i ~ Categorical(pi),  x_i ~ N(mu_{z_i}, Lambda_{z_i}^-1).

``inference="splitmerge"`` (default) runs the parallel sub-cluster sampler of Chang & Fisher (2013)
(inference/splitmerge.py) without truncation, with the corrections that make it exact on small
clusters (anchored restricted Gibbs, merge ratio the inverse of the split ratio, exact sub-cluster
terms for clusters of <= 10 points; checked against exact enumeration in tests/test_dpgmm.py);
``inference="vi"`` the truncated stick-breaking mean-field VI of scikit-learn's BayesianGaussianMixture
(inference/vi.py, closed-form coordinate ascent; the old name ``"svi"`` is a deprecated alias), pruning
components of negligible weight; ``inference="deep"`` the DeepDPM-style neural route (inference/deepdpm.py).

Prior defaults (all computed in a standardised frame: each feature centred and divided by its
standard deviation; constant features are left unscaled):
``m0`` = data mean, ``kappa0 = mean_precision_prior = 0.01``, ``nu0 = degrees_of_freedom_prior = D + 2``,
``psi0 = psi_scale (nu0 - D - 1) diag(var)`` so that the prior mean of a cluster covariance is
``psi_scale * diag(var)``; the DP concentration ``alpha = weight_concentration_prior = 1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
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
from ..inference import deepdpm, streaming, vi
from ..inference import splitmerge as sm
from ..inference.engine import Engine, Step
from ..models import gaussian
from ..models.dp import student_t_logpdf
from ..models.priors import NIW
from ..posterior import aligned_assignment_probs, coclustering_matrix, pad_draws
from ._base import DEPRECATED, ClusterEstimator, MixtureMixin, Run

INFERENCE = ("splitmerge", "vi", "deep")


class DPGMM(MixtureMixin, ClusterEstimator):
    """Dirichlet-process Gaussian mixture with full covariances; the number of clusters is inferred.

    Parameters
    ----------
    weight_concentration_prior : the DP concentration alpha (> 0); larger favours more clusters
        (scikit-learn's name in ``BayesianGaussianMixture``; ``alpha`` is a deprecated alias).
    inference : "splitmerge" (sub-cluster split/merge MCMC, default), "vi" (truncated
        stick-breaking mean-field VI, closed form) or "deep" (DeepDPM-style nets).
    max_iter : sweeps (splitmerge), VI iterations (vi) or epochs (deep).
    burn_in : sweeps discarded before posterior summaries (default ``max_iter // 2``).
    mean_precision_prior (kappa0), degrees_of_freedom_prior (nu0), psi_scale, mean_prior,
        covariance_prior : NIW prior; see the module docstring. ``mean_prior`` (D,) and
        ``covariance_prior`` (D, D, = psi0) are in the units of X.
    truncation : number of stick-breaking components for ``vi``.
    prune_threshold : ``vi`` drops components holding less than this fraction of the points (and
        less than half a point) under the responsibilities.
    split_delay : sweeps a new cluster waits before it may split or merge (its sub-clusters settle);
        with ``split_delay=0`` and ``reset_every=0`` the sampler uses no heuristics and is exact on
        data whose clusters hold at most 10 points (see inference/splitmerge.py).
    n_merge_neighbors : merges are proposed between each cluster and this many nearest clusters.
    reset_every : a cluster's sub-clusters are re-drawn (random hyperplane through its mean) every
        this many sweeps, so a rejected sub-cluster split does not block other splits (0: never).
    store_labels : post-burn-in label draws kept for ``assignment_probs_`` / co-clustering.
    coclustering : also compute ``coclustering_`` (N, N), the fraction of kept draws in which two
        points share a cluster (N <= 5000).
    alpha, kappa0, nu0, lr : deprecated names of weight_concentration_prior, mean_precision_prior,
        degrees_of_freedom_prior and learning_rate (a FutureWarning; they set the new parameter).
    hidden, learning_rate, batch_size : ``deep`` only: width of the clustering MLP (the sub-clustering nets
        use half), Adam learning rate, mini-batch size; one engine iteration is one epoch.
    chunk_size : points per chunk of every pass over the data.

    Fitted attributes: ``labels_``, ``n_components_``, ``weights_``, ``means_``, ``covariances_``,
    ``k_trace_`` (K after each sweep), ``posterior_k_`` ({K: posterior probability}),
    ``assignment_probs_`` (N, n_components_), ``joint_trace_``, ``history_``, ``n_iter_``,
    ``converged_`` (splitmerge and deep: the run completed its sweeps; vi: the bound changed by less
    than ``tol``); the prior in X's units as scikit-learn's ``BayesianGaussianMixture`` names it:
    ``weight_concentration_prior_``, ``mean_precision_prior_``, ``mean_prior_``,
    ``degrees_of_freedom_prior_``, ``covariance_prior_`` (psi0, the inverse-Wishart scale).
    """

    _renamed_params = {
        "alpha": "weight_concentration_prior",
        "kappa0": "mean_precision_prior",
        "nu0": "degrees_of_freedom_prior",
        "lr": "learning_rate",
    }

    def __init__(
        self,
        weight_concentration_prior: float = 1.0,
        inference: str = "splitmerge",
        *,
        max_iter: int = 150,
        burn_in: int | None = None,
        mean_precision_prior: float = 0.01,
        degrees_of_freedom_prior: float | None = None,
        psi_scale: float = 1.0,
        mean_prior: Any = None,
        covariance_prior: Any = None,
        truncation: int = 30,
        prune_threshold: float = 1e-3,
        tol: float = 1e-4,
        split_delay: int = 5,
        n_merge_neighbors: int = 3,
        reset_every: int = 10,
        store_labels: int = 50,
        coclustering: bool = False,
        hidden: int = 64,
        learning_rate: float = 1e-3,
        batch_size: int = 1024,
        chunk_size: int = 32768,
        device: str = "cpu",
        dtype: str = "float32",
        random_state: int | None = None,
        verbose: bool = False,
        callbacks: Sequence[Callable[..., Any]] | None = None,
        alpha: Any = DEPRECATED,
        kappa0: Any = DEPRECATED,
        nu0: Any = DEPRECATED,
        lr: Any = DEPRECATED,
    ) -> None:
        self._set_init_params(locals())

    # ------------------------------------------------------------------ checks and prior
    @property
    def _route(self) -> str:
        """The inference route, with the deprecated name "svi" read as "vi"."""
        return "vi" if self.inference == "svi" else self.inference

    def _check_params(self) -> None:
        if self.inference == "svi":
            warnings.warn(
                "DPGMM(inference='svi') is deprecated: the route is closed-form mean-field VI, "
                "not stochastic VI; use inference='vi'.",
                FutureWarning,
                stacklevel=3,
            )
        else:
            check_option(self.inference, "inference", INFERENCE)
        check_scalar(
            self.weight_concentration_prior, "weight_concentration_prior", low=0, low_inclusive=False
        )
        check_positive_int(self.max_iter, "max_iter")
        self._warn_unused_route_settings()
        if self.burn_in is not None:
            check_positive_int(self.burn_in, "burn_in", minimum=0)
            if self.burn_in >= self.max_iter:
                raise ValueError(
                    f"burn_in={self.burn_in} must be smaller than max_iter={self.max_iter}; "
                    "no post-burn-in draws would remain."
                )
        check_scalar(self.mean_precision_prior, "mean_precision_prior", low=0, low_inclusive=False)
        check_scalar(self.psi_scale, "psi_scale", low=0, low_inclusive=False)
        check_positive_int(self.truncation, "truncation", minimum=2)
        check_scalar(self.prune_threshold, "prune_threshold", low=0, high=1, high_inclusive=False)
        check_scalar(self.tol, "tol", low=0)
        for name in ("split_delay", "reset_every", "store_labels"):
            check_positive_int(getattr(self, name), name, minimum=0)
        check_positive_int(self.n_merge_neighbors, "n_merge_neighbors")
        check_positive_int(self.chunk_size, "chunk_size")
        if self._route == "deep":
            check_positive_int(self.hidden, "hidden", minimum=2)
            check_scalar(self.learning_rate, "learning_rate", low=0, low_inclusive=False)
            check_positive_int(self.batch_size, "batch_size")

    def _warn_unused_route_settings(self) -> None:
        route = self._route
        used = {
            "splitmerge": {"burn_in", "split_delay", "n_merge_neighbors", "reset_every", "store_labels",
                           "coclustering"},
            "vi": {"truncation", "prune_threshold"},
            "deep": {"hidden", "learning_rate", "batch_size", "split_delay", "n_merge_neighbors"},
        }
        route_specific = set().union(*used.values())
        unused = sorted(route_specific - used[route])
        self._warn_unused(unused, f"with inference={route!r}")

    def _build_prior(self, d: int) -> NIW:
        """NIW prior in the standardised frame (float64), from the defaults or user values."""
        nu0 = self.degrees_of_freedom_prior
        if nu0 is None:
            nu = float(d + 2)
        else:
            nu = check_scalar(nu0, "degrees_of_freedom_prior", low=d - 1, low_inclusive=False)
        scale = self.data_scale_.double()
        if self.mean_prior is None:
            m0 = torch.zeros(d, dtype=torch.float64)
        else:
            m0 = check_array(self.mean_prior, name="mean_prior", ndim=1, dtype="float64")
            if m0.shape[0] != d:
                raise ValueError(f"mean_prior has {m0.shape[0]} entries but X has {d} features.")
            m0 = (m0 - self.data_mean_.double()) / scale
        if self.covariance_prior is None:
            psi = torch.eye(d, dtype=torch.float64) * self.psi_scale * max(nu - d - 1.0, 1.0)
        else:
            psi = check_array(self.covariance_prior, name="covariance_prior", dtype="float64")
            if psi.shape != (d, d):
                raise ValueError(f"covariance_prior must be ({d}, {d}), got {tuple(psi.shape)}.")
            if torch.linalg.cholesky_ex(psi)[1] != 0:
                raise ValueError("covariance_prior must be symmetric positive definite.")
            psi = psi / (scale[:, None] * scale[None, :])
        kappa = torch.tensor(float(self.mean_precision_prior), dtype=torch.float64)
        return NIW(m0, kappa, torch.tensor(nu, dtype=torch.float64), psi)

    def _set_prior_attributes(self, prior: NIW) -> None:
        """The prior in X's units, under scikit-learn's BayesianGaussianMixture names."""
        s, mu = self.data_scale_.double(), self.data_mean_.double()
        self.weight_concentration_prior_ = float(self.weight_concentration_prior)
        self.mean_precision_prior_ = float(prior.kappa0)
        self.degrees_of_freedom_prior_ = float(prior.nu0)
        self.mean_prior_ = (prior.m0 * s + mu).numpy()
        self.covariance_prior_ = (prior.psi0 * s[:, None] * s[None, :]).numpy()

    def _standardise(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.data_mean_.to(X)) / self.data_scale_.to(X)

    # ------------------------------------------------------------------ fit template hooks
    def _prepare(self, X: Any) -> SimpleNamespace:
        """Standardise X (each feature centred and scaled; constant features left unscaled), build the
        Gaussian family with its NIW prior in that frame, and the statistics cache."""
        # standardised in float64 before the cast to the fit dtype: X + 1e8 loses no digits
        X = check_array(X, device=resolve_device(self.device), dtype="input")
        n, d = X.shape
        self.n_features_in_ = d
        mean = X.double().mean(0)
        std = X.double().std(0, unbiased=False) if n > 1 else torch.zeros(d, dtype=torch.float64)
        if streaming.is_reducing():  # a distributed fit: the moments of the whole data
            n, mean, var = streaming.global_moments(X)
            std = var.sqrt()
        constant = std <= 1e-12 * max(1.0, float(mean.abs().max()))
        self.data_mean_ = mean.cpu()
        self.data_scale_ = torch.where(constant, torch.ones_like(std), std).cpu()
        self.constant_features_ = constant.cpu()
        Xs = self._standardise(X.double()).to(resolve_dtype(self.dtype))
        prior = self._build_prior(d)
        self.prior_ = {"m": prior.m0, "kappa": prior.kappa0, "nu": prior.nu0, "psi": prior.psi0}
        self._set_prior_attributes(prior)
        family = gaussian.GaussianFamily("full", prior)
        feats = streaming.Features(Xs, family.statistics_map, self.chunk_size)
        burn = self.max_iter // 2 if self.burn_in is None else int(self.burn_in)
        return SimpleNamespace(feats=feats, family=family, burn=burn)


    def _n_restarts(self, data: SimpleNamespace) -> int:
        return 1

    def _start(self, data: SimpleNamespace, seed: int | None) -> Run:
        route = self._route
        engine = Engine(
            device=data.feats.X.device, dtype=self.dtype, random_state=seed, max_iter=self.max_iter,
            tol=self.tol if route == "vi" else 0.0, keep_best=False,
            verbose=self.verbose,
            callbacks=self.callbacks, warn_not_converged=route == "vi", desc=f"DPGMM[{route}]",
        )
        return {"splitmerge": self._start_splitmerge, "vi": self._start_vi, "deep": self._start_deep}[
            route
        ](data, engine)

    def _start_splitmerge(self, data: SimpleNamespace, engine: Engine) -> Run:
        cfg = sm.SamplerConfig(
            alpha=float(self.weight_concentration_prior), family=data.family,
            split_delay=self.split_delay, n_merge_neighbors=self.n_merge_neighbors, burn_in=data.burn,
            store_labels=self.store_labels, reset_every=self.reset_every,
        )
        st = sm.init_state(data.feats, data.family, engine.generator, data.feats.X.device)
        step = Step("splitmerge", lambda s, it: sm.sweep(s["sampler"], cfg, it))
        return Run(engine, [step], {"sampler": st})

    def _start_vi(self, data: SimpleNamespace, engine: Engine) -> Run:
        alpha = float(self.weight_concentration_prior)
        vs = vi.init_vi(data.feats, data.family, alpha, self.truncation, engine.generator)
        return Run(engine, [Step("vi", lambda s, it: vi.vi_step(s["vi"]))], {"vi": vs})

    def _start_deep(self, data: SimpleNamespace, engine: Engine) -> Run:
        ds = deepdpm.init_deep(
            data.feats, data.family, float(self.weight_concentration_prior), engine.generator,
            hidden=self.hidden, lr=self.learning_rate, batch_size=self.batch_size,
            split_delay=max(1, self.split_delay), n_merge_neighbors=self.n_merge_neighbors,
        )
        ks: list[int] = []

        def step(s: dict, it: int) -> float:
            out = deepdpm.deep_step(s["deep"], it)
            ks.append(s["deep"].k)
            return out

        return Run(engine, [Step("deep", step)], {"deep": ds, "k_trace": ks})

    def _finish(self, data: SimpleNamespace, run: Run) -> None:
        {"splitmerge": self._finish_splitmerge, "vi": self._finish_vi, "deep": self._finish_deep}[
            self._route
        ](data, run)

    def _finish_splitmerge(self, data: SimpleNamespace, run: Run) -> None:
        st, feats, burn = run.state["sampler"], data.feats, data.burn
        self.converged_ = not (run.result.interrupted or run.result.stopped)  # MCMC: ran its sweeps
        self.k_trace_ = np.asarray(st.k_trace)
        self.joint_trace_ = np.asarray(st.joint_trace)
        kept = self.k_trace_[min(burn, len(self.k_trace_) - 1) :]
        ks, counts = np.unique(kept, return_counts=True)
        self.posterior_k_ = {int(k): float(c / counts.sum()) for k, c in zip(ks, counts)}
        self.n_splits_, self.n_merges_ = st.n_splits, st.n_merges
        self.best_sweep_ = st.best_sweep
        # interrupted before one full sweep: the current labels (always a complete labelling)
        labels, k = sm.best_labels(st)
        G = sm.cluster_statistics(sm.sub_statistics(feats, labels, torch.zeros_like(labels), k))
        nk = G[:, -1]
        alpha = float(self.weight_concentration_prior)
        self._set_components(data.family.posterior(G), nk / (nk.sum() + alpha), nk)
        self.labels_ = labels.cpu().numpy()
        self.new_cluster_weight_ = float(alpha / (nk.sum() + alpha))
        self.draws_weights_, self.draws_means_ = pad_draws(
            st.draws_weights, st.draws_means, self.data_mean_, self.data_scale_
        )
        self.assignment_probs_ = aligned_assignment_probs(st.draws_labels, labels, k)
        if self.coclustering:
            self.coclustering_ = coclustering_matrix(st.draws_labels, labels)

    def _finish_vi(self, data: SimpleNamespace, run: Run) -> None:
        vs = run.state["vi"]
        w = vi.expected_weights(vs.g1, vs.g2)
        keep = vs.n > max(0.5, self.prune_threshold * vs.n.sum())
        if not bool(keep.any()):
            keep = w == w.max()
        post = vs.post
        sel = NIW.__new__(NIW)._set(post.m0[keep], post.kappa0[keep], post.nu0[keep], post.psi0[keep])
        self._set_components(sel, w[keep] / w[keep].sum(), vs.n[keep])
        self.new_cluster_weight_ = 0.0
        self.truncation_weights_ = w.numpy()
        Xs = data.feats.X
        self.labels_ = self._proba_std(Xs).argmax(1)
        self.k_trace_ = np.full(self.n_iter_, self.n_components_)
        self.posterior_k_ = {int(self.n_components_): 1.0}
        self.assignment_probs_ = self._proba_std(Xs)
        self.draws_weights_, self.draws_means_ = pad_draws(
            [w[keep] / w[keep].sum()], [post.m0[keep]], self.data_mean_, self.data_scale_
        )

    def _finish_deep(self, data: SimpleNamespace, run: Run) -> None:
        ds, feats = run.state["deep"], data.feats
        self.converged_ = not (run.result.interrupted or run.result.stopped)
        self.n_splits_, self.n_merges_ = ds.n_splits, ds.n_merges
        self.net_state_ = {k: v.detach().cpu().clone() for k, v in ds.net.state_dict().items()}
        with torch.no_grad():
            z = ds.net(feats.X).argmax(1)
        _, labels = torch.unique(z, return_inverse=True)
        used = torch.unique(z).cpu()
        head = self.net_state_
        head["head.weight"], head["head.bias"] = head["head.weight"][used], head["head.bias"][used]
        k = int(used.numel())
        G = sm.cluster_statistics(sm.sub_statistics(feats, labels, torch.zeros_like(labels), k))
        nk = G[:, -1]
        post = data.family.posterior(G)
        self._set_components(post, nk, nk)
        self.new_cluster_weight_ = 0.0
        self.labels_ = labels.cpu().numpy()
        self.k_trace_ = np.asarray(run.state["k_trace"])
        self.posterior_k_ = {k: 1.0}
        self.assignment_probs_ = self._proba_std(feats.X)
        self.draws_weights_, self.draws_means_ = pad_draws(
            [torch.as_tensor(self.weights_)], [post.m0], self.data_mean_, self.data_scale_
        )

    def _net(self):
        from ..models.deepdpm import ClusterNet

        net = ClusterNet(self.n_features_in_, self.n_components_, self.hidden).double()
        net.load_state_dict({k: v.double() for k, v in self.net_state_.items()})
        return net

    def _set_components(self, post: NIW, weights: torch.Tensor, counts: torch.Tensor) -> None:
        """Fitted component summaries (original units) and predictive parameters (standardised)."""
        self.posterior_ = {"m": post.m0, "kappa": post.kappa0, "nu": post.nu0, "psi": post.psi0}
        self.n_components_ = int(post.m0.shape[0])
        self.counts_ = counts.numpy()
        self.weights_ = (weights / weights.sum()).numpy()
        s, mu = self.data_scale_.double(), self.data_mean_.double()
        self.means_ = (post.m0 * s + mu).numpy()
        cov_s = post.psi0 / (post.nu0 - post.dim - 1).clamp(min=1e-3)[:, None, None]
        self.covariances_ = (cov_s * s[:, None] * s[None, :]).numpy()

    # ------------------------------------------------------------------ prediction
    _fitted_check = "posterior_"

    def _check_X(self, X: Any) -> torch.Tensor:
        self._check_fitted()
        X = check_array(X, dtype="float64", n_features=self.n_features_in_)
        return self._standardise(X)

    def _log_joint_std(self, Xs: torch.Tensor) -> torch.Tensor:
        logpdf = streaming.map_rows(lambda x: student_t_logpdf(x, self.posterior_), Xs.double(), 8192)
        return logpdf + torch.log(torch.as_tensor(self.weights_))

    def _log_scores_std(self, Xs: torch.Tensor) -> torch.Tensor:
        """(N, K) log scores of standardised data: Student-t posterior predictives x weights, or
        the clustering net's logits on the deep route."""
        if self._route == "deep":
            with torch.no_grad():
                return self._net()(Xs.double())
        return self._log_joint_std(Xs)

    def _proba_std(self, Xs: torch.Tensor) -> np.ndarray:
        return torch.softmax(self._log_scores_std(Xs), 1).numpy()

    def _log_scores(self, X: Any) -> torch.Tensor:
        return self._log_scores_std(self._check_X(X))

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) per row under the fitted mixture (plus the DP's new-cluster mass, splitmerge)."""
        Xs = self._check_X(X)
        # log(1 - w_new) and log(w_new) in float64 tensors: a huge concentration gives w_new = 1.0,
        # whose -inf weight logsumexp handles (math.log would raise)
        w_new = torch.tensor(self.new_cluster_weight_, dtype=torch.float64)
        logp = self._log_joint_std(Xs) + torch.log1p(-w_new)
        if self.new_cluster_weight_ > 0:
            prior = {k: v[None] for k, v in self.prior_.items()}
            prior_pred = streaming.map_rows(lambda x: student_t_logpdf(x, prior), Xs, 8192)
            logp = torch.cat([logp, prior_pred + torch.log(w_new)], 1)
        jac = torch.log(self.data_scale_.double()).sum()
        return (torch.logsumexp(logp, 1) - jac).numpy()

    def _n_parameters(self) -> int:
        k, d = self.n_components_, self.n_features_in_
        return int(k - 1 + k * d + gaussian.n_covariance_parameters("full", k, d))

    def _sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.choice(self.n_components_, size=n, p=self.weights_ / self.weights_.sum())
        chol = np.linalg.cholesky(self.covariances_)
        eps = rng.standard_normal((n, self.n_features_in_))
        return self.means_[labels] + np.einsum("nij,nj->ni", chol[labels], eps), labels

    # ------------------------------------------------------------------ persistence
    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Check that a loaded model has what predict, score, sample and to_inference_data read."""
        from .._persist import require_attributes

        names = ["weights_", "means_", "covariances_", "prior_", "data_mean_", "data_scale_",
                 "new_cluster_weight_", "k_trace_", "posterior_k_", "draws_weights_", "draws_means_"]
        require_attributes(self, names + (["net_state_"] if self._route == "deep" else []))

    # ------------------------------------------------------------------ posterior
    def to_inference_data(self):
        """ArviZ InferenceData: per-draw K, weights and means (sorted by weight, NaN-padded)."""
        import arviz as az

        check_is_fitted(self, ["posterior_"])
        burn = len(self.k_trace_) - self.draws_weights_.shape[0]
        k_draws = self.k_trace_[burn:]
        ks = np.array(sorted(self.posterior_k_))
        return az.from_dict(
            posterior={
                "K": k_draws[None].astype(np.int64),
                "weights": self.draws_weights_[None],
                "means": self.draws_means_[None],
            },
            coords={
                "component": np.arange(self.draws_weights_.shape[1]),
                "feature": np.arange(self.n_features_in_),
            },
            dims={"weights": ["component"], "means": ["component", "feature"]},
            constant_data={"posterior_k": np.array([self.posterior_k_[int(k)] for k in ks])},
            attrs={"inference": self.inference, "posterior_k_support": ks.tolist()},
        )
