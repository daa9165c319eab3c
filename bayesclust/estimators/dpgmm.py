"""Dirichlet-process Gaussian mixture that infers the number of clusters: ``DPGMM``.

The model (:func:`dp_mixture_model`, a Pyro program) is

    v_k ~ Beta(1, alpha),  pi_k = v_k prod_{j<k} (1 - v_j)          (stick breaking)
    Lambda_k ~ Wishart(nu0, psi0^-1),  mu_k ~ N(m0, (kappa0 Lambda_k)^-1)   (NIW base measure)
    z_i ~ Categorical(pi),  x_i ~ N(mu_{z_i}, Lambda_{z_i}^-1).

``inference="splitmerge"`` (default) runs the parallel sub-cluster sampler of Chang & Fisher (2013)
(inference/splitmerge.py) without truncation, with the corrections that make it exact on small
clusters (anchored restricted Gibbs, merge ratio the inverse of the split ratio, exact sub-cluster
terms for clusters of <= 10 points; checked against exact enumeration in tests/test_dpgmm.py);
``inference="svi"`` the truncated stick-breaking mean-field VI of scikit-learn's BayesianGaussianMixture
(inference/stickbreaking.py), pruning components of negligible weight.

Prior defaults (all computed in a standardised frame: each feature centred and divided by its
standard deviation; constant features are left unscaled):
``m0`` = data mean, ``kappa0 = 0.01``, ``nu0 = D + 2``, ``psi0 = psi_scale (nu0 - D - 1) diag(var)``
so that the prior mean of a cluster covariance is ``psi_scale * diag(var)``; ``alpha = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .._device import resolve_device
from .._validation import (
    check_array,
    check_is_fitted,
    check_option,
    check_positive_int,
    check_scalar,
)
from ..inference import splitmerge as sm
from ..inference import streaming
from ..inference import vi as sb
from ..inference.engine import Engine, Step
from ..models import gaussian
from ..models.dp import student_t_logpdf
from ..models.priors import NIW
from ._base import BaseEstimator, ClusterMixin

INFERENCE = ("splitmerge", "svi", "deep")


class DPGMM(ClusterMixin, BaseEstimator):
    """Dirichlet-process Gaussian mixture with full covariances; the number of clusters is inferred.

    Parameters
    ----------
    alpha : DP concentration (> 0); larger favours more clusters.
    inference : "splitmerge" (sub-cluster split/merge MCMC, default) or "svi" (truncated
        stick-breaking mean-field VI).
    max_iter : sweeps (splitmerge) or VI iterations (svi).
    burn_in : sweeps discarded before posterior summaries (default ``max_iter // 2``).
    kappa0, nu0, psi_scale, mean_prior, covariance_prior : NIW prior; see the module docstring.
        ``mean_prior`` (D,) and ``covariance_prior`` (D, D, = psi0) are in the units of X.
    truncation : number of stick-breaking components for ``svi``.
    prune_threshold : ``svi`` drops components holding less than this fraction of the points (and
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
    hidden, lr, batch_size : ``deep`` only: width of the clustering MLP (the sub-clustering nets
        use half), Adam learning rate, mini-batch size; one engine iteration is one epoch.
    chunk_size : points per chunk of every pass over the data.

    Fitted attributes: ``labels_``, ``n_components_``, ``weights_``, ``means_``, ``covariances_``,
    ``k_trace_`` (K after each sweep), ``posterior_k_`` ({K: posterior probability}),
    ``assignment_probs_`` (N, n_components_), ``joint_trace_``, ``history_``, ``n_iter_``.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        inference: str = "splitmerge",
        *,
        max_iter: int = 150,
        burn_in: int | None = None,
        kappa0: float = 0.01,
        nu0: float | None = None,
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
        lr: float = 1e-3,
        batch_size: int = 1024,
        chunk_size: int = 32768,
        device: str = "cpu",
        dtype: str = "float32",
        random_state: int | None = None,
        verbose: bool = False,
        callbacks: Sequence[Callable[..., Any]] | None = None,
    ) -> None:
        self.alpha = alpha
        self.inference = inference
        self.max_iter = max_iter
        self.burn_in = burn_in
        self.kappa0 = kappa0
        self.nu0 = nu0
        self.psi_scale = psi_scale
        self.mean_prior = mean_prior
        self.covariance_prior = covariance_prior
        self.truncation = truncation
        self.prune_threshold = prune_threshold
        self.tol = tol
        self.split_delay = split_delay
        self.n_merge_neighbors = n_merge_neighbors
        self.reset_every = reset_every
        self.store_labels = store_labels
        self.coclustering = coclustering
        self.hidden = hidden
        self.lr = lr
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    _non_deterministic = True

    # ------------------------------------------------------------------ checks and prior
    def _check_params(self) -> None:
        check_option(self.inference, "inference", INFERENCE)
        check_scalar(self.alpha, "alpha", low=0, low_inclusive=False)
        check_positive_int(self.max_iter, "max_iter")
        if self.burn_in is not None:
            check_positive_int(self.burn_in, "burn_in", minimum=0)
            if self.burn_in >= self.max_iter:
                raise ValueError(
                    f"burn_in={self.burn_in} must be smaller than max_iter={self.max_iter}; "
                    "no post-burn-in draws would remain."
                )
        check_scalar(self.kappa0, "kappa0", low=0, low_inclusive=False)
        check_scalar(self.psi_scale, "psi_scale", low=0, low_inclusive=False)
        check_positive_int(self.truncation, "truncation", minimum=2)
        check_scalar(self.prune_threshold, "prune_threshold", low=0, high=1, high_inclusive=False)
        check_scalar(self.tol, "tol", low=0)
        check_positive_int(self.split_delay, "split_delay", minimum=0)
        check_positive_int(self.n_merge_neighbors, "n_merge_neighbors")
        check_positive_int(self.reset_every, "reset_every", minimum=0)
        check_positive_int(self.store_labels, "store_labels", minimum=0)
        check_positive_int(self.chunk_size, "chunk_size")

    def _build_prior(self, X: torch.Tensor) -> NIW:
        """NIW prior in the standardised frame (float64), from the defaults or user values."""
        d = X.shape[1]
        nu = (
            float(d + 2)
            if self.nu0 is None
            else check_scalar(self.nu0, "nu0", low=d - 1, low_inclusive=False)
        )
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
        return NIW(
            m0,
            torch.tensor(float(self.kappa0), dtype=torch.float64),
            torch.tensor(nu, dtype=torch.float64),
            psi,
        )

    def _standardise(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.data_mean_.to(X)) / self.data_scale_.to(X)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> DPGMM:
        """Fit the DP mixture to ``X`` (N, D); ``y`` is ignored."""
        self._check_params()
        dev = resolve_device(self.device)
        X = check_array(X, device=dev, dtype=self.dtype)
        n, d = X.shape
        self.n_features_in_ = d
        mean = X.double().mean(0)
        std = X.double().std(0, unbiased=False) if n > 1 else torch.zeros(d, dtype=torch.float64)
        constant = std <= 1e-12 * max(1.0, float(mean.abs().max()))
        self.data_mean_ = mean.cpu()
        self.data_scale_ = torch.where(constant, torch.ones_like(std), std).cpu()
        self.constant_features_ = constant.cpu()
        Xs = self._standardise(X.double()).to(X.dtype)
        prior = self._build_prior(X)
        self.prior_ = {"m": prior.m0, "kappa": prior.kappa0, "nu": prior.nu0, "psi": prior.psi0}
        feats = streaming.Features(Xs, self.chunk_size)
        burn = self.max_iter // 2 if self.burn_in is None else int(self.burn_in)
        engine = Engine(
            device=dev,
            dtype=self.dtype,
            random_state=self.random_state,
            max_iter=self.max_iter,
            tol=self.tol if self.inference == "svi" else 0.0,
            keep_best=False,
            verbose=self.verbose,
            callbacks=self.callbacks,
            warn_not_converged=self.inference == "svi",
            desc=f"DPGMM[{self.inference}]",
        )
        if self.inference == "splitmerge":
            self._fit_splitmerge(feats, prior, engine, burn)
        elif self.inference == "deep":
            self._fit_deep(feats, prior, engine)
        else:
            self._fit_svi(feats, prior, engine)
        return self

    def _fit_splitmerge(self, feats: streaming.Features, prior: NIW, engine: Engine, burn: int) -> None:
        cfg = sm.SamplerConfig(
            alpha=float(self.alpha),
            prior=prior,
            split_delay=self.split_delay,
            n_merge_neighbors=self.n_merge_neighbors,
            burn_in=burn,
            store_labels=self.store_labels,
            reset_every=self.reset_every,
        )
        st = sm.init_state(feats, engine.generator, feats.X.device)
        state = {"sampler": st}
        result = engine.run([Step("splitmerge", lambda s, it: sm.sweep(s["sampler"], cfg, it))], state)
        st = state["sampler"]
        self.history_ = result.history
        self.n_iter_ = result.n_iter
        self.converged_ = True  # an MCMC run has no convergence criterion; see k_trace_
        self.k_trace_ = np.asarray(st.k_trace)
        self.joint_trace_ = np.asarray(st.joint_trace)
        kept = self.k_trace_[min(burn, len(self.k_trace_) - 1) :]
        ks, counts = np.unique(kept, return_counts=True)
        self.posterior_k_ = {int(k): float(c / counts.sum()) for k, c in zip(ks, counts)}
        self.n_splits_, self.n_merges_ = st.n_splits, st.n_merges
        self.best_sweep_ = st.best_sweep
        z = st.best_z
        _, labels = torch.unique(z, return_inverse=True)
        k = int(labels.max()) + 1
        G = sm.sub_statistics(feats, labels, torch.zeros_like(labels), k).view(k, 2, -1).sum(1).cpu()
        nk, sx, sxx = gaussian.unpack_full_stats(G, feats.d)
        post = prior.posterior(nk, sx, sxx)
        self._set_components(post, nk / (nk.sum() + self.alpha), nk)
        self.labels_ = labels.cpu().numpy()
        self.new_cluster_weight_ = float(self.alpha / (nk.sum() + self.alpha))
        self.draws_weights_, self.draws_means_ = _pad_draws(
            st.draws_weights, st.draws_means, self.data_mean_, self.data_scale_
        )
        self.assignment_probs_ = _aligned_probs(st.draws_labels, labels, k)
        if self.coclustering:
            self.coclustering_ = _coclustering(st.draws_labels, labels)

    def _fit_svi(self, feats: streaming.Features, prior: NIW, engine: Engine) -> None:
        vs = sb.init_vi(feats, prior, float(self.alpha), self.truncation, engine.generator)
        state = {"vi": vs}
        result = engine.run([Step("svi", lambda s, it: sb.vi_step(s["vi"]))], state)
        self.history_ = result.history
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        w = sb.expected_weights(vs.g1, vs.g2)
        keep = vs.n > max(0.5, self.prune_threshold * vs.n.sum())
        if not bool(keep.any()):
            keep = w == w.max()
        post = vs.post
        sel = NIW.__new__(NIW)._set(post.m0[keep], post.kappa0[keep], post.nu0[keep], post.psi0[keep])
        self._set_components(sel, w[keep] / w[keep].sum(), vs.n[keep])
        self.new_cluster_weight_ = 0.0
        self.truncation_weights_ = w.numpy()
        Xs = feats.X
        self.labels_ = self._predict_std(Xs)
        self.k_trace_ = np.full(self.n_iter_, self.n_components_)
        self.posterior_k_ = {int(self.n_components_): 1.0}
        self.assignment_probs_ = self._proba_std(Xs)
        self.draws_weights_, self.draws_means_ = _pad_draws(
            [w[keep] / w[keep].sum()], [post.m0[keep]], self.data_mean_, self.data_scale_
        )

    def _fit_deep(self, feats: streaming.Features, prior: NIW, engine: Engine) -> None:
        from ..inference import deepdpm

        check_positive_int(self.hidden, "hidden", minimum=2)
        check_scalar(self.lr, "lr", low=0, low_inclusive=False)
        check_positive_int(self.batch_size, "batch_size")
        ds = deepdpm.init_deep(
            feats,
            prior,
            float(self.alpha),
            engine.generator,
            hidden=self.hidden,
            lr=self.lr,
            batch_size=self.batch_size,
            split_delay=max(1, self.split_delay),
            n_merge_neighbors=self.n_merge_neighbors,
        )
        ks: list[int] = []
        state = {"deep": ds}

        def step(s, it):
            out = deepdpm.deep_step(s["deep"], it)
            ks.append(s["deep"].k)
            return out

        result = engine.run([Step("deep", step)], state)
        self.history_, self.n_iter_, self.converged_ = result.history, result.n_iter, result.converged
        self.n_splits_, self.n_merges_ = ds.n_splits, ds.n_merges
        self.net_state_ = {k: v.detach().cpu().clone() for k, v in ds.net.state_dict().items()}
        with torch.no_grad():
            z = ds.net(feats.X).argmax(1)
        _, labels = torch.unique(z, return_inverse=True)
        used = torch.unique(z)
        head = self.net_state_
        head["head.weight"], head["head.bias"] = (
            head["head.weight"][used.cpu()],
            head["head.bias"][used.cpu()],
        )
        k = int(used.numel())
        G = sm.cluster_statistics(sm.sub_statistics(feats, labels, torch.zeros_like(labels), k))
        nk, sx, sxx = gaussian.unpack_full_stats(G, feats.d)
        self._set_components(prior.posterior(nk, sx, sxx), nk, nk)
        self.new_cluster_weight_ = 0.0
        self.labels_ = labels.cpu().numpy()
        self.k_trace_ = np.asarray(ks)
        self.posterior_k_ = {k: 1.0}
        self.assignment_probs_ = self._proba_std(feats.X)
        self.draws_weights_, self.draws_means_ = _pad_draws(
            [torch.as_tensor(self.weights_)],
            [prior.posterior(nk, sx, sxx).m0],
            self.data_mean_,
            self.data_scale_,
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
    def _check_X(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, ["posterior_"])
        X = check_array(X, dtype="float64", n_features=self.n_features_in_)
        return self._standardise(X)

    def _log_joint_std(self, Xs: torch.Tensor) -> torch.Tensor:
        return student_t_logpdf(Xs.double(), self.posterior_) + torch.log(torch.as_tensor(self.weights_))

    def _proba_std(self, Xs: torch.Tensor) -> np.ndarray:
        if self.inference == "deep":  # DeepDPM predicts with the clustering net
            with torch.no_grad():
                return torch.softmax(self._net()(Xs.double()), 1).numpy()
        return torch.softmax(self._log_joint_std(Xs), 1).numpy()

    def _predict_std(self, Xs: torch.Tensor) -> np.ndarray:
        return self._proba_std(Xs).argmax(1)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable cluster of each row under the posterior predictive of the point estimate."""
        return self._predict_std(self._check_X(X))

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Labels of the point estimate (the highest joint-probability draw for splitmerge)."""
        return self.fit(X).predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """(N, n_components_) cluster probabilities (Student-t posterior predictives x weights)."""
        return self._proba_std(self._check_X(X))

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) per row under the fitted mixture (plus the DP's new-cluster mass, splitmerge)."""
        Xs = self._check_X(X)
        w_total = 1.0 - self.new_cluster_weight_
        logp = self._log_joint_std(Xs) + math.log(w_total)
        if self.new_cluster_weight_ > 0:
            prior_pred = student_t_logpdf(
                Xs, {k: v[None] if v.ndim else v[None] for k, v in self.prior_.items()}
            )
            logp = torch.cat([logp, prior_pred + math.log(self.new_cluster_weight_)], 1)
        jac = torch.log(self.data_scale_.double()).sum()
        return (torch.logsumexp(logp, 1) - jac).numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` points from the fitted Gaussian components; returns (X, labels)."""
        check_is_fitted(self, ["posterior_"])
        check_positive_int(n_samples, "n_samples")
        rng = np.random.default_rng(random_state)
        labels = rng.choice(self.n_components_, size=n_samples, p=self.weights_ / self.weights_.sum())
        chol = np.linalg.cholesky(self.covariances_)
        eps = rng.standard_normal((n_samples, self.n_features_in_))
        X = self.means_[labels] + np.einsum("nij,nj->ni", chol[labels], eps)
        return X, labels

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


def _pad_draws(
    weights: list[torch.Tensor], means: list[torch.Tensor], mean: torch.Tensor, scale: torch.Tensor
):
    """Per-draw weights (S, Kmax) and means (S, Kmax, D), sorted by weight, NaN-padded, original units."""
    d = mean.shape[0]
    if not weights:
        return np.zeros((0, 1)), np.zeros((0, 1, d))
    kmax = max(int(w.shape[0]) for w in weights)
    W = np.full((len(weights), kmax), np.nan)
    M = np.full((len(weights), kmax, d), np.nan)
    for s, (w, m) in enumerate(zip(weights, means)):  # loop over stored draws (summaries only)
        order = torch.argsort(w, descending=True)
        W[s, : w.shape[0]] = w[order].double().numpy()
        M[s, : w.shape[0]] = (m[order].double() * scale.double() + mean.double()).numpy()
    return W, M


def _aligned_probs(draws: list[torch.Tensor], labels: torch.Tensor, k: int) -> np.ndarray:
    """P(point i in point-estimate cluster c): each draw's clusters are mapped to the point-estimate
    cluster they overlap most, then the one-hot assignments are averaged over draws."""
    n = labels.shape[0]
    if not draws:
        return np.eye(k)[labels.cpu().numpy()]
    acc = torch.zeros(n, k, dtype=torch.float64)
    lab = labels.cpu()
    for z in draws:  # loop over stored draws; each step is O(N) tensor work
        z = z.long().cpu()
        kz = int(z.max()) + 1
        cont = torch.bincount(z * k + lab, minlength=kz * k).view(kz, k)
        mapped = cont.argmax(1)[z]
        acc[torch.arange(n), mapped] += 1.0
    return (acc / len(draws)).numpy()


def _coclustering(draws: list[torch.Tensor], labels: torch.Tensor) -> np.ndarray:
    n = labels.shape[0]
    if n > 5000:
        raise ValueError(f"coclustering=True needs an (N, N) matrix; N={n} > 5000 is too large.")
    if not draws:
        z = labels.cpu()
        return (z[:, None] == z[None, :]).double().numpy()
    acc = torch.zeros(n, n, dtype=torch.float64)
    for z in draws:
        z = z.cpu()
        acc += (z[:, None] == z[None, :]).double()
    return (acc / len(draws)).numpy()
