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

Data larger than memory: ``fit`` accepts, besides arrays, the out-of-core sources of
``GaussianMixture`` (a numpy memmap, an HDF5 dataset, a list of arrays or ``.npy`` paths, a folder
of ``.npy`` files) on the splitmerge and vi routes. The moments and every pass of the sampler read
the source chunk by chunk (``streaming.SourceFeatures``); what is kept per point is O(N) integers
(labels, sub-labels, the stored label draws: ``store_labels`` x N int32), never a float copy of X, and
``assignment_probs_`` is None (an (N, K) array). ``predict``, ``predict_proba`` and ``score_samples``
take data in memory (a memmap is loaded whole).

Prior defaults (all computed in a standardised frame: each feature centred and divided by its
standard deviation; constant features are left unscaled):
``m0`` = data mean, ``kappa0 = mean_precision_prior = 0.01``, ``nu0 = degrees_of_freedom_prior = D + 2``,
``psi0 = psi_scale (nu0 - D - 1) diag(var)`` so that the prior mean of a cluster covariance is
``psi_scale * diag(var)``; the DP concentration ``alpha ~ Gamma(1, 1)`` (``concentration_prior``,
resampled every splitmerge sweep, Escobar & West 1995; started at ``weight_concentration_prior = 1``).
``scale_prior="wishart"`` puts a Wishart hyperprior on psi0 (off by default: on UMAP embeddings, whose
clusters are thin in some directions, it drives psi0 to those directions' scale and K up; see
benchmarks/results/dpgmm.md, issue 15).

What K counts (issue 15): clusters holding at least ``min_cluster_size`` points (default 0.1% of N,
at least 1); smaller ones are reported in ``small_clusters_`` and their points reassigned.
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
from ..inference.neural import evaluate_rows
from ..models import gaussian
from ..models.deepdpm import NET_DTYPE, ClusterNet
from ..models.dp import student_t_logpdf
from ..models.priors import NIW, WishartScalePrior
from ..posterior import (
    aligned_assignment_probs,
    check_min_cluster_size,
    coclustering_matrix,
    counted_k,
    k_distribution,
    pad_draws,
    size_threshold,
)
from ._base import DEPRECATED, ClusterEstimator, MixtureMixin, Run

INFERENCE = ("splitmerge", "vi", "deep")
SCALE_PRIORS = ("fixed", "wishart")
_INIT_SAMPLE = 100_000  # rows that seed k-means for vi on out-of-core data


class DPGMM(MixtureMixin, ClusterEstimator):
    """Dirichlet-process Gaussian mixture with full covariances; the number of clusters is inferred.

    Parameters
    ----------
    weight_concentration_prior : the DP concentration alpha (> 0); larger favours more clusters
        (scikit-learn's name in ``BayesianGaussianMixture``; ``alpha`` is a deprecated alias). With
        ``concentration_prior`` set it is the starting value of the splitmerge chain.
    concentration_prior : (shape, rate) of a Gamma hyperprior on alpha, default (1, 1): splitmerge
        resamples alpha every sweep (Escobar & West 1995) and reports ``alpha_trace_`` and
        ``alpha_mean_`` (post burn-in); None keeps alpha fixed. vi and deep use the fixed value.
    scale_prior : "fixed" (default: psi0 as below) or "wishart": a hyperprior psi0 ~ Wishart(D + 2,
        psi0_fixed / (D + 2)) resampled every splitmerge sweep from its conditional given the cluster
        covariances; ``covariance_prior_`` is then its posterior mean. vi and deep use the fixed psi0.
    min_cluster_size : the counting rule: an int (points) or a float in (0, 1) (a share of N; default
        0.001, at least 1 point). ``n_components_``, ``labels_``/``predict``, ``k_trace_`` and
        ``posterior_k_`` count only clusters of at least this many points; points of smaller clusters
        go to their most probable remaining cluster; the smaller clusters are reported in
        ``small_clusters_`` ({"sizes", "means"}) and ``fit_summary_``; the raw occupied counts stay in
        ``k_trace_raw_`` and ``posterior_k_raw_``. ``min_cluster_size=1`` counts every occupied
        cluster. The sampler is unchanged: this is a reading of its output, alike on every route.
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
    ``assignment_probs_`` (N, n_components_; None for out-of-core data), ``joint_trace_``,
    ``history_``, ``n_iter_``,
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
        min_cluster_size: int | float = 0.001,
        concentration_prior: tuple[float, float] | None = (1.0, 1.0),
        scale_prior: str = "fixed",
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
        check_min_cluster_size(self.min_cluster_size)
        self._check_concentration_prior()
        check_option(self.scale_prior, "scale_prior", SCALE_PRIORS)
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

    def _check_concentration_prior(self) -> None:
        cp = self.concentration_prior
        if cp is None:
            return
        ok = isinstance(cp, (tuple, list)) and len(cp) == 2
        if ok:
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < np.inf for v in cp)
        if not ok:
            raise ValueError(
                "concentration_prior must be None (alpha fixed) or a (shape, rate) pair of positive "
                f"numbers for a Gamma hyperprior on alpha, got {cp!r}."
            )

    def _alpha_prior(self) -> tuple[float, float] | None:
        cp = self.concentration_prior
        return None if cp is None else (float(cp[0]), float(cp[1]))

    def _scale_prior(self, family: gaussian.GaussianFamily) -> WishartScalePrior | None:
        """``scale_prior="wishart"``: psi0 ~ Wishart(D + 2, psi_default / (D + 2)), centred on the
        fixed prior's psi0 with the fewest integer degrees of freedom that give a finite mean of
        psi0^-1 (a weak hyperprior)."""
        if self.scale_prior != "wishart":
            return None
        d = family.niw.dim
        return WishartScalePrior(float(d + 2), family.niw.psi0.clone())

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
        Gaussian family with its NIW prior in that frame, and the statistics cache. Out-of-core data
        (memmap, HDF5 dataset, chunks, folder of .npy) goes to :meth:`_prepare_source`."""
        # a memmap is read chunk by chunk, except on the deep route (it is an array: loaded)
        if streaming.is_chunk_source(X) and not (self._route == "deep" and isinstance(X, np.ndarray)):
            return self._prepare_source(X)
        # standardised in float64 before the cast to the fit dtype: X + 1e8 loses no digits
        X = check_array(X, device=resolve_device(self.device), dtype="input")
        n, d = X.shape
        mean = X.double().mean(0)
        std = X.double().std(0, unbiased=False) if n > 1 else torch.zeros(d, dtype=torch.float64)
        if streaming.is_reducing():  # a distributed fit: the moments of the whole data
            n, mean, var = streaming.global_moments(X)
            std = var.sqrt()
        self._set_frame(mean, std, d, torch.finfo(X.dtype).eps if X.is_floating_point() else 0.0)
        Xs = self._standardise(X.double()).to(resolve_dtype(self.dtype))
        family = self._family(d)
        feats = streaming.Features(Xs, family.statistics_map, self.chunk_size)
        return SimpleNamespace(feats=feats, family=family, burn=self._burn(), sample=None, source=False)

    def _prepare_source(self, X: Any) -> SimpleNamespace:
        """Out-of-core data: the moments (two passes) and every pass of the fit read the source
        chunk by chunk, standardising each chunk in float64 as the in-memory path does; only O(N)
        labels are kept. ``vi`` seeds k-means on a sample of at most ``_INIT_SAMPLE`` rows (all rows,
        in order, when there are fewer)."""
        if self._route == "deep":
            raise ValueError(
                "out-of-core data (HDF5, chunks, folder of .npy) is fitted with inference='splitmerge' "
                "or 'vi'; load the data into memory (or pass a numpy memmap) for inference='deep'."
            )
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        source, chunk = streaming.ChunkSource(X), int(self.chunk_size)

        def check(a: Any, **kw: Any) -> torch.Tensor:
            return check_array(a, n_features=source.d, **kw)

        _, mean, var = streaming.source_moments(source, device, torch.float64, chunk, check)
        self._set_frame(mean, var.sqrt(), source.d)
        family = self._family(source.d)
        shift, scale = self.data_mean_.to(device), self.data_scale_.to(device)
        feats = streaming.SourceFeatures(
            source, family.statistics_map, shift, chunk, scale=scale, dtype=dtype
        )
        sample = self._init_sample(feats) if self._route == "vi" else None
        return SimpleNamespace(feats=feats, family=family, burn=self._burn(), sample=sample, source=True)

    def _init_sample(self, feats: streaming.SourceFeatures) -> torch.Tensor:
        """Standardised rows (m, D) that seed k-means for vi: all rows in order up to
        ``_INIT_SAMPLE``, else that many drawn without replacement with the fit's seed."""
        if feats.n <= _INIT_SAMPLE:
            return feats.rows(slice(0, feats.n))
        rng = np.random.default_rng(self._seed)
        return feats.gather(torch.from_numpy(np.sort(rng.choice(feats.n, _INIT_SAMPLE, replace=False))))

    def _set_frame(self, mean: torch.Tensor, std: torch.Tensor, d: int, eps: float | None = None) -> None:
        """``data_mean_``, ``data_scale_`` and ``constant_features_`` from float64 moments (D,). A
        feature is constant when its spread is within rounding of its own magnitude (``eps``: the
        input dtype's), whatever the units: ``X * 1e-12`` still has a spread, ``X + 1e6`` keeps it."""
        self.n_features_in_ = d
        eps = torch.finfo(torch.float64).eps if eps is None else eps
        constant = std <= 16 * eps * mean.abs()
        self.data_mean_ = mean.cpu()
        self.data_scale_ = torch.where(constant, torch.ones_like(std), std).cpu()
        self.constant_features_ = constant.cpu()

    def _family(self, d: int) -> gaussian.GaussianFamily:
        """The full-covariance Gaussian family with the NIW prior in the standardised frame (and the
        prior attributes set)."""
        prior = self._build_prior(d)
        self.prior_ = {"m": prior.m0, "kappa": prior.kappa0, "nu": prior.nu0, "psi": prior.psi0}
        self._set_prior_attributes(prior)
        return gaussian.GaussianFamily("full", prior)

    def _burn(self) -> int:
        return self.max_iter // 2 if self.burn_in is None else int(self.burn_in)

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
            store_labels=self.store_labels, reset_every=self.reset_every, alpha_prior=self._alpha_prior(),
            scale_prior=self._scale_prior(data.family),
        )
        st = sm.init_state(data.feats, data.family, engine.generator, data.feats.X.device)
        step = Step("splitmerge", lambda s, it: sm.sweep(s["sampler"], cfg, it))
        return Run(engine, [step], {"sampler": st})

    def _start_vi(self, data: SimpleNamespace, engine: Engine) -> Run:
        alpha = float(self.weight_concentration_prior)
        vs = vi.init_vi(data.feats, data.family, alpha, self.truncation, engine.generator, data.sample)
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
        st, feats = run.state["sampler"], data.feats
        self.converged_ = not (run.result.interrupted or run.result.stopped)  # MCMC: ran its sweeps
        self.min_size_threshold_ = size_threshold(self.min_cluster_size, float(st.G[:, -1].sum()))
        self._set_traces(st, data.burn)
        self.n_splits_, self.n_merges_ = st.n_splits, st.n_merges
        self.best_sweep_ = st.best_sweep
        # interrupted before one full sweep: the current labels (always a complete labelling)
        self._set_scale_posterior(data.family, st)
        labels, k = sm.best_labels(st)
        labels, G = self._apply_min_size(data, labels, self._cluster_stats(feats, labels, k))
        k, nk = G.shape[0], G[:, -1]
        alpha = self.alpha_mean_
        self._set_components(data.family.posterior(G), nk / (nk.sum() + alpha), nk)
        self.labels_ = labels.cpu().numpy()
        self.new_cluster_weight_ = float(alpha / (nk.sum() + alpha))
        self.draws_weights_, self.draws_means_ = pad_draws(
            st.draws_weights, st.draws_means, self.data_mean_, self.data_scale_
        )
        # out of core: no (N, K) float array (use predict_proba on rows in memory)
        self.assignment_probs_ = None if data.source else aligned_assignment_probs(st.draws_labels, labels, k)
        if self.coclustering:
            self.coclustering_ = coclustering_matrix(st.draws_labels, labels)

    def _set_traces(self, st: sm.SamplerState, burn: int) -> None:
        """K traces and posteriors (counted above ``min_cluster_size`` and raw), alpha's trace and mean."""
        self.joint_trace_ = np.asarray(st.joint_trace)
        self.k_trace_raw_ = np.asarray(st.k_trace)
        self.k_trace_ = counted_k(st.size_trace, self.min_size_threshold_)
        start = min(burn, len(self.k_trace_) - 1)
        self.posterior_k_ = k_distribution(self.k_trace_[start:])
        self.posterior_k_raw_ = k_distribution(self.k_trace_raw_[start:])
        self.alpha_trace_ = np.asarray(st.alpha_trace)
        kept = self.alpha_trace_[start:]
        self.alpha_mean_ = float(kept.mean()) if kept.size else float(self.weight_concentration_prior)

    def _set_scale_posterior(self, family: gaussian.GaussianFamily, st: sm.SamplerState) -> None:
        """With ``scale_prior="wishart"``: the family's psi0 set to its post-burn-in posterior mean
        (the reported prior, ``covariance_prior_``, and the one the fitted components use)."""
        if self.scale_prior != "wishart" or st.psi_count == 0:
            return
        family.niw.psi0 = st.psi_sum / st.psi_count
        self.prior_["psi"] = family.niw.psi0
        self._set_prior_attributes(family.niw)

    @staticmethod
    def _cluster_stats(feats: streaming.Features, labels: torch.Tensor, k: int) -> torch.Tensor:
        """Cluster statistics (K, Q) float64 of hard labels (n,)."""
        return sm.cluster_statistics(sm.sub_statistics(feats, labels, torch.zeros_like(labels), k))

    def _apply_min_size(
        self, data: SimpleNamespace, labels: torch.Tensor, G: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The counting rule: clusters of fewer than ``min_size_threshold_`` points (G (K, Q) their
        statistics) are reported in ``small_clusters_`` and their points given to the most probable
        remaining cluster (Student-t predictive x weight). Returns the new labels (n,) and G (K', Q)."""
        nk = G[:, -1]
        small = nk < self.min_size_threshold_ - 1e-9
        if bool(small.all()):
            small[int(nk.argmax())] = False
        n_small, mean_small, _ = data.family.moments(G[small])
        self._report_small(n_small, mean_small)
        if not bool(small.any()):
            return labels, G
        keep = ~small
        post = data.family.posterior(G[keep])
        postd = {"m": post.m0, "kappa": post.kappa0, "nu": post.nu0, "psi": post.psi0}
        dev = labels.device
        new_id = (torch.cumsum(keep.long(), 0) - 1).to(dev)
        idx = torch.nonzero(small.to(dev)[labels]).flatten()
        score = student_t_logpdf(data.feats.gather(idx).double().cpu(), postd) + torch.log(nk[keep])
        out = new_id[labels]
        out[idx] = score.argmax(1).to(dev)
        k = int(keep.sum())
        return out, self._cluster_stats(data.feats, out, k)

    def _report_small(self, n: torch.Tensor, mean: torch.Tensor) -> None:
        """``small_clusters_`` {"sizes": (S,), "means": (S, D) in X's units} from the uncounted
        clusters' sizes (S,) and standardised means (S, D); the ``fit_summary_`` note, and a message
        when ``verbose``."""
        n, mean = n.double().cpu(), mean.double().cpu()
        s, mu = self.data_scale_.double(), self.data_mean_.double()
        order = torch.argsort(n, descending=True)
        self.small_clusters_ = {
            "sizes": n[order].round().long().numpy(),
            "means": (mean[order] * s + mu).numpy(),
        }
        t = self.min_size_threshold_
        note = (
            f"{len(order)} cluster(s) below min_cluster_size ({t} points) not counted, their points "
            f"reassigned: sizes {self.small_clusters_['sizes'].tolist()}"
            if len(order) else f"no cluster below min_cluster_size ({t} points)"
        )
        self.fit_summary_ = note
        if self.verbose and len(order):
            print(f"DPGMM: {note}")

    def _finish_vi(self, data: SimpleNamespace, run: Run) -> None:
        vs = run.state["vi"]
        w = vi.expected_weights(vs.g1, vs.g2)
        keep = vs.n > max(0.5, self.prune_threshold * vs.n.sum())
        if not bool(keep.any()):
            keep = w == w.max()
        post = vs.post
        keep = self._vi_counting_rule(vs.n, keep, post.m0)
        sel = NIW.__new__(NIW)._set(post.m0[keep], post.kappa0[keep], post.nu0[keep], post.psi0[keep])
        self._set_components(sel, w[keep] / w[keep].sum(), vs.n[keep])
        self.new_cluster_weight_ = 0.0
        self.truncation_weights_ = w.numpy()
        self._set_point_traces(np.full(self.n_iter_, self.n_components_), self.k_raw_)
        if data.source:  # out of core: labels chunk by chunk, no (N, K) array
            labels = streaming.map_chunks(lambda x: self._log_scores_std(x).argmax(1), data.feats)
            self.labels_ = labels.numpy()
            self.assignment_probs_ = None
        else:
            self.assignment_probs_ = self._proba_std(data.feats.X)
            self.labels_ = self.assignment_probs_.argmax(1)
        self.draws_weights_, self.draws_means_ = pad_draws(
            [w[keep] / w[keep].sum()], [post.m0[keep]], self.data_mean_, self.data_scale_
        )

    def _vi_counting_rule(self, n: torch.Tensor, keep: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """The counting rule on vi's kept components (keep (T,)): those whose expected point count
        n (T,), rounded, is below the threshold are reported and dropped (their points then go to the
        most probable remaining component through the responsibilities)."""
        self.min_size_threshold_ = size_threshold(self.min_cluster_size, float(n.sum()))
        self.k_raw_ = int(keep.sum())
        small = keep & (n < self.min_size_threshold_ - 0.5)
        if bool(small[keep].all()):
            small[torch.nonzero(keep).flatten()[int(n[keep].argmax())]] = False
        order = torch.nonzero(small).flatten()
        self._report_small(n[order], means[order])
        return keep & ~small

    def _set_point_traces(self, k_trace: np.ndarray, k_raw: int) -> None:
        """vi and deep (one point estimate): K traces and posteriors, alpha fixed at its value."""
        self.k_trace_raw_ = np.asarray(k_trace)
        self.k_trace_ = np.full(len(k_trace), self.n_components_)
        self.posterior_k_ = {int(self.n_components_): 1.0}
        self.posterior_k_raw_ = {int(k_raw): 1.0}
        self.alpha_mean_ = float(self.weight_concentration_prior)
        self.alpha_trace_ = np.full(len(k_trace), self.alpha_mean_)

    def _deep_labels(self, data: SimpleNamespace, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The net's labels (n,) over the output units it uses that hold at least
        ``min_size_threshold_`` points (summed over processes, so every rank numbers them alike), and
        those units (K,): points of smaller units go to their most probable remaining unit."""
        logits = evaluate_rows(ds.net, ds.x_net)
        z = logits.argmax(1)
        counts = streaming.reduce_statistics(torch.bincount(z, minlength=ds.k).double()).cpu()
        self.min_size_threshold_ = size_threshold(self.min_cluster_size, float(counts.sum()))
        self.k_raw_ = int((counts > 0).sum())
        keep = counts >= self.min_size_threshold_ - 1e-9
        if not bool(keep.any()):
            keep = counts == counts.max()
        small = torch.nonzero((counts > 0) & ~keep).flatten()
        n_s, mean_s, _ = data.family.moments(self._cluster_stats(data.feats, z, ds.k)[small])
        self._report_small(n_s, mean_s)
        used = torch.nonzero(keep).flatten()
        return logits[:, used.to(logits.device)].argmax(1), used

    def _finish_deep(self, data: SimpleNamespace, run: Run) -> None:
        ds, feats = run.state["deep"], data.feats
        self.converged_ = not (run.result.interrupted or run.result.stopped)
        self.n_splits_, self.n_merges_ = ds.n_splits, ds.n_merges
        self.net_state_ = {k: v.detach().cpu().clone() for k, v in ds.net.state_dict().items()}
        labels, used = self._deep_labels(data, ds)
        head = self.net_state_
        head["head.weight"], head["head.bias"] = head["head.weight"][used], head["head.bias"][used]
        k = int(used.numel())
        G = sm.cluster_statistics(sm.sub_statistics(feats, labels, torch.zeros_like(labels), k))
        nk = G[:, -1]
        post = data.family.posterior(G)
        self._set_components(post, nk, nk)
        self.new_cluster_weight_ = 0.0
        self.labels_ = labels.cpu().numpy()
        self._set_point_traces(np.asarray(run.state["k_trace"]), self.k_raw_)
        self.assignment_probs_ = self._proba_std(feats.X)
        self.draws_weights_, self.draws_means_ = pad_draws(
            [torch.as_tensor(self.weights_)], [post.m0], self.data_mean_, self.data_scale_
        )

    def _net(self):
        net = ClusterNet(self.n_features_in_, self.n_components_, self.hidden).to(NET_DTYPE)
        net.load_state_dict({k: v.to(NET_DTYPE) for k, v in self.net_state_.items()})  # any saved dtype
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
            return evaluate_rows(self._net(), Xs.to(NET_DTYPE)).double()
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
