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

import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .._device import make_generator, resolve_device, resolve_dtype, resolve_seed
from .._frame import Frame, frame_from_moments, standard_frame
from .._validation import (
    check_array,
    check_is_fitted,
    check_option,
    check_positive_int,
    check_scalar,
)
from ..inference import distributed, em, em_cholesky, kmeans, streaming
from ..inference.engine import Engine, Step
from ..inference.streaming import ChunkSource, Features, SourceFeatures
from ..models import gaussian
from ..models.gmm_model import GMMPrior
from ..models.priors import NIW, gamma_shape
from ._base import ClusterEstimator, MixtureMixin, Run, available_if

_INIT_SAMPLE = 100_000  # rows of out-of-core data that initialisation (k-means) runs on


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
    reg_covar : added to covariance diagonals for numerical stability, relative to the data's scale:
        the fit adds ``reg_covar * s**2`` in X's units, ``s**2`` the mean per-feature variance
        (scikit-learn adds ``reg_covar`` itself; the two agree for standardised data). So the clusters
        do not depend on X's units.
    max_iter : EM iterations (or SVI steps for "svi").
    n_init : initialisations; the best objective is kept.
    init : "kmeans" (k-means++ then Lloyd), "kmeans++", "random", "random_from_data", or
        initial means (K, D).
    weights_init, covariances_init : optional initial weights (K,) and covariances (sklearn shape),
        used with given means.
    warm_start : start from the previous fit's parameters.
    step_decay : kappa in (0.5, 1] of :meth:`partial_fit`'s step sizes ``(t + 2) ** -kappa``.
    svi_guide : "map" (AutoDelta) or "meanfield"; learning_rate and batch_size apply to SVI.
    num_samples, warmup_steps, num_chains : NUTS settings.
    device, dtype, chunk_size, random_state, verbose, callbacks : see :class:`bayesclust.Engine`.
    formulation : the E/M-step form for full / tied covariances: "features" (the quadratic feature
        map), "cholesky" (Cholesky solves on centred data) or "auto" (chosen from D, K, dtype and
        whether the feature map fits its cache: ``models.gaussian.choose_formulation``; the choice is
        in ``formulation_``). Same model and answers; only speed and float32 digits differ. In float32
        the feature map takes the log densities and statistics of a component whose uncentred forms
        would cancel (a small, tight component far from the data's centre:
        ``models.gaussian.cancelling_components``) centred on its mean. When a float32 M-step still
        gives a covariance that is not positive definite, EM redoes it and goes on with the
        statistics summed in float64, then in the Cholesky form (``formulation_`` says so), then that
        form's statistics in float64, before it raises.

    Attributes
    ----------
    weights_ (K,), means_ (K, D), covariances_, precisions_, precisions_cholesky_,
    converged_, n_iter_, lower_bound_ (final per-sample objective), history_, labels_,
    n_features_in_, formulation_ ("features" or "cholesky"); for NUTS also ``posterior_samples_``
    and ``relabel_fraction_``. Attributes are in the fit's dtype, except full / tied covariance
    matrices (``covariances_``, ``precisions_``, ``precisions_cholesky_``), which are float64: the
    float32 copy of a thin component's covariance can round to an indefinite matrix.

    Notes
    -----
    A component whose expected count falls to the rounding error of N (``N_k <= eps N``, eps of the
    statistics' dtype) keeps its previous mean and covariance, with a weight of about zero.
    scikit-learn updates such a component from its vanishing sums, and it can come back as a spike on
    a few points whose covariance sits at the ``reg_covar`` floor. From the same start the two fits
    agree until a component empties (``benchmarks/gmm_trajectory.py`` shows a case).
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
        step_decay: float = 0.6,
        formulation: str = "auto",
    ) -> None:
        self._set_init_params(locals())

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        check_positive_int(self.n_components, "n_components")
        check_option(self.covariance_type, "covariance_type", gaussian.COVARIANCE_TYPES)
        check_option(self.inference, "inference", ("em", "svi", "nuts"))
        route_only = {"svi": ("svi_guide", "learning_rate", "batch_size"),
                      "nuts": ("num_samples", "warmup_steps", "num_chains")}
        for route, names in route_only.items():
            if self.inference != route:
                self._warn_unused(names, f"with inference={self.inference!r} (they are {route} settings)")
        given_init = self.weights_init is not None or self.covariances_init is not None
        if isinstance(self.init, str) and given_init:
            raise ValueError(
                "weights_init / covariances_init are used with initial means only: pass init=means "
                f"(K, D) as well, or drop them (init={self.init!r} computes all the parameters)."
            )
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
        check_positive_int(self.max_iter, "max_iter", minimum=0)  # 0: initialise only, as scikit-learn
        check_positive_int(self.n_init, "n_init")
        check_positive_int(self.chunk_size, "chunk_size")
        check_option(self.formulation, "formulation", gaussian.FORMULATIONS)
        if isinstance(self.init, str):
            check_option(self.init, "init", ("kmeans", "kmeans++", "random", "random_from_data"))
        check_option(self.svi_guide, "svi_guide", ("map", "meanfield"))
        check_scalar(self.learning_rate, "learning_rate", low=0, low_inclusive=False)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.num_samples, "num_samples")
        check_positive_int(self.warmup_steps, "warmup_steps", minimum=0)
        check_positive_int(self.num_chains, "num_chains")

    def _map_prior(self, X: torch.Tensor, frame: Frame | None = None) -> gaussian.MAPPrior | None:
        """The prior on the working-frame data X (N, D) (or a stand-in with its moments); a given
        ``mean_prior`` / ``covariance_prior`` (in X's units) is moved into ``frame`` (default: none)."""
        if self.prior is None:
            return None
        d = X.shape[1]
        frame = frame or Frame(torch.zeros(d, dtype=torch.float64), 1.0)
        nu0 = self.degrees_of_freedom_prior
        if nu0 is not None:
            check_scalar(nu0, "degrees_of_freedom_prior", low=d - 1, low_inclusive=False)
            if self.covariance_type == "spherical":
                gamma_shape(float(nu0), d, "spherical")  # raises when the shared-precision prior is improper
        m0 = None
        if self.mean_prior is not None:
            m0 = check_array(self.mean_prior, name="mean_prior", ndim=1, device=X.device, dtype=torch.float64)
            if m0.shape[0] != d:
                raise ValueError(f"mean_prior has {m0.shape[0]} entries but X has {d} features.")
            m0 = frame.apply(m0[None], X.dtype)[0]
        psi0 = None
        if self.covariance_prior is not None:
            psi0 = (self._covariance_prior_matrix(d, X.device) / frame.scale**2).to(X.dtype)
        niw = NIW.from_data(X, kappa0=float(self.mean_precision_prior), nu0=nu0, m0=m0, psi0=psi0)
        return gaussian.MAPPrior(float(self.weight_concentration_prior), niw)

    def _covariance_prior_matrix(self, d: int, device: torch.device) -> torch.Tensor:
        """``covariance_prior`` as a (D, D) float64 matrix in X's units."""
        cp = self.covariance_prior
        if isinstance(cp, int | float) and not isinstance(cp, bool):
            check_scalar(cp, "covariance_prior", low=0, low_inclusive=False)
            return float(cp) * torch.eye(d, dtype=torch.float64, device=device)
        arr = check_array(cp, name="covariance_prior", ndim=(1, 2), device=device, dtype=torch.float64)
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
        """Validated data, its working frame (``Frame``: per-feature mean, one scalar scale, applied in
        float64 before the cast, so answers do not depend on X's units), the family with its prior in
        that frame, and the feature cache shared by the restarts. ``data.X`` is X as given (float32
        or float64), ``data.Xc`` the working-frame data in the fit dtype."""
        # a memmap is read chunk by chunk on the EM route; the other routes load it (it is an array)
        if streaming.is_chunk_source(X) and not (self.inference != "em" and isinstance(X, np.ndarray)):
            return self._prepare_source(X)
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        Xin = check_array(X, device=device, dtype="input", min_samples=max(2, self.n_components))
        if streaming.is_reducing():  # one pass of global moments gives the frame and the prior's data
            _, mean, var = streaming.global_moments(Xin)
            frame = frame_from_moments(mean, var)
            Xc = frame.apply(Xin, dtype)
            moments = _working_moments(var, frame, dtype)
        else:
            frame = standard_frame(Xin)
            Xc = moments = frame.apply(Xin, dtype)
        prior = self._map_prior(moments, frame)
        fused = em_cholesky.fused_passes(Xc.shape[0], self.n_components, Xc.shape[1], Xc.device, Xc.dtype)
        family = self._family(prior, Xc.shape[0], Xc.shape[1], Xc.element_size(), cached=True, fused=fused)
        feats = Features(Xc, family.feature_map, int(self.chunk_size))
        warm = bool(self.warm_start and hasattr(self, "means_"))
        data = SimpleNamespace(X=Xin, Xc=Xc, frame=frame, prior=prior, family=family, feats=feats, warm=warm)
        data.n_total = distributed.global_count(Xin.shape[0])
        return data

    def _prepare_source(self, X: Any) -> SimpleNamespace:
        """Out-of-core data: moments and every E-step read the source chunk by chunk (memory bounded
        by a chunk); initialisation runs on a sample of at most ``_INIT_SAMPLE`` rows (all rows, in
        order, when there are fewer), which ``data.X`` / ``data.Xc`` hold."""
        if self.inference != "em":
            raise ValueError(
                f"out-of-core data (memmap, HDF5, chunks) is fitted with inference='em' only, got "
                f"inference={self.inference!r}; load the data into memory for the other routes."
            )
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        source, chunk = ChunkSource(X), int(self.chunk_size)

        def check(a: Any, **kw: Any) -> torch.Tensor:
            return check_array(a, n_features=source.d, **kw)

        n, mean, var = streaming.source_moments(source, device, torch.float64, chunk, check)
        if n < max(2, self.n_components):
            raise ValueError(
                f"X has {n} sample(s) but at least {max(2, self.n_components)} are needed "
                f"(one per component); pass more data or fewer components."
            )
        frame = frame_from_moments(mean, var)
        prior = self._map_prior(_working_moments(var, frame, dtype), frame)
        family = self._family(prior, n, source.d, dtype.itemsize, cached=False)
        if source.n <= _INIT_SAMPLE:
            sample = source.rows(0, source.n)
        else:
            rng = np.random.default_rng(self._seed)
            sample = source.take(np.sort(rng.choice(source.n, _INIT_SAMPLE, replace=False)))
        Xs = check_array(sample, device=device, dtype="input")
        Xc = frame.apply(Xs, dtype)
        scale = torch.tensor(frame.scale, dtype=torch.float64, device=device)
        return SimpleNamespace(
            X=Xs, Xc=Xc, frame=frame, prior=prior, family=family, n_total=n,
            feats=SourceFeatures(source, family.feature_map, frame.shift.to(device), chunk,
                                 scale=scale, dtype=dtype),
            init_feats=Features(Xc, family.feature_map, chunk),
            warm=bool(self.warm_start and hasattr(self, "means_")),
        )

    def _family(
        self, prior: gaussian.MAPPrior | None, n: int, d: int, itemsize: int, cached: bool,
        fused: bool = False,
    ) -> gaussian.GaussianFamily:
        """The Gaussian family with ``prior`` (working frame) for n x d data; ``reg_covar`` is added in
        that frame, i.e. relative to the data's mean feature variance. Sets ``formulation_``: "auto"
        resolved for this shape (``cached``: in-memory data, whose phi(X) is cached when it fits;
        ``fused``: Cholesky passes would run fused, :func:`em_cholesky.fused_passes`)."""
        formulation = getattr(self, "formulation", "auto")  # files saved before the parameter: "auto"
        if formulation == "auto":
            fits = cached and streaming.cache_fits(n, gaussian.feature_dim(d, self.covariance_type), itemsize)
            formulation = gaussian.choose_formulation(
                self.covariance_type, d, self.n_components, itemsize, fits, fused)
        self.formulation_ = formulation
        return gaussian.GaussianFamily(
            self.covariance_type, None if prior is None else prior.niw,
            float(self.weight_concentration_prior), float(self.reg_covar), formulation,
        )

    @property
    def _formulation(self) -> str:
        """The fitted form (files saved before ``formulation_`` existed: their parameter, or "auto")."""
        return getattr(self, "formulation_", getattr(self, "formulation", "auto"))

    # ------------------------------------------------------------------ online EM
    @available_if(lambda self: self.inference == "em", "partial_fit runs stepwise EM: use inference='em'")
    def partial_fit(self, X: Any, y: Any = None) -> GaussianMixture:
        """One step of stepwise online EM (Cappe & Moulines 2009) on the batch X (n, D).

        The E-step at the current parameters gives the batch statistics; the running per-point
        statistics move towards them by ``(t + 2) ** -step_decay`` (t: the number of earlier
        calls) and the M-step runs on them. The first call initialises as ``fit`` does, on its
        batch (or continues from a previous ``fit``); each later call must have the same features.
        X may be out of core as for ``fit``. Sets ``labels_`` (of this batch), ``lower_bound_``
        (its mean log-likelihood before the step) and ``n_iter_`` (the number of calls). Returns ``self``.
        """
        self._check_params()
        check_scalar(self.step_decay, "step_decay", low=0.5, high=1.0, low_inclusive=False)
        if self.inference != "em":
            raise ValueError(
                f"partial_fit runs stepwise EM and needs inference='em', got inference={self.inference!r}."
            )
        online = getattr(self, "_online", None)
        if online is None:
            online, feats = self._online_start(X)
        else:
            feats = self._online_features(X, online)
        A, c = online.family.log_prob_coefficients(online.params)
        loglik, G = em.e_step(feats, A, c)
        online.stats = em.stepwise_statistics(online.stats, G, feats.n, online.t, float(self.step_decay))
        online.t, online.n_seen = online.t + 1, online.n_seen + feats.n
        G_run = (online.stats * online.n_seen).to(device=A.device)  # float64: the M-step keeps digits
        online.params = online.family.m_step(G_run, online.params)
        self._online = online
        self._store(online.params, online.frame)
        self.n_features_in_, self.n_components_ = int(feats.d), int(self.n_components)
        self.lower_bound_ = loglik / feats.n - feats.d * online.frame.log_scale
        self.n_iter_, self.converged_ = online.t, False
        earlier = getattr(self, "history_", []) if online.t > 1 else []
        self.history_ = [*earlier, self.lower_bound_]
        A, c = online.family.log_prob_coefficients(online.params)
        self.labels_ = em.argmax_chunks(feats, A, c).cpu().numpy()
        return self

    def _online_start(self, X: Any) -> tuple[SimpleNamespace, Features]:
        """The online state from the first batch: shift, prior and family from it, parameters from
        the previous fit when there is one, else from ``init`` on the batch."""
        self._seed = resolve_seed(self.random_state)
        fitted = hasattr(self, "means_")
        data = self._prepare(X)
        if fitted and data.X.shape[1] == np.shape(self.means_)[1]:
            params = self._params(data.frame, data.Xc)
        else:
            params = self._initial_params(data, make_generator(self._seed, "cpu"))
        online = SimpleNamespace(frame=data.frame, family=data.family, params=params, stats=None)
        online.device, online.dtype = data.Xc.device, data.Xc.dtype
        online.t, online.n_seen = 0, 0
        return online, data.feats

    def _online_features(self, X: Any, online: SimpleNamespace) -> Features:
        """Features of a later batch, in the first batch's working frame."""
        device, dtype, frame = online.device, online.dtype, online.frame
        chunk = int(self.chunk_size)
        if streaming.is_chunk_source(X):
            source = ChunkSource(X)
            if source.d != self.n_features_in_:
                raise ValueError(
                    f"X has {source.d} features, but GaussianMixture is expecting {self.n_features_in_} "
                    "features as input."
                )
            scale = torch.tensor(frame.scale, dtype=torch.float64, device=device)
            return SourceFeatures(source, online.family.feature_map, frame.shift.to(device), chunk,
                                  scale=scale, dtype=dtype)
        Xt = check_array(X, device=device, dtype="input", n_features=self.n_features_in_)
        return Features(frame.apply(Xt, dtype), online.family.feature_map, chunk)

    def _n_restarts(self, data: SimpleNamespace) -> int:
        return 1 if data.warm or not isinstance(self.init, str) else int(self.n_init)

    def _start(self, data: SimpleNamespace, seed: int | None) -> Run:
        previous = None  # a warm start judges convergence against the previous call's objective
        if data.warm and np.isfinite(getattr(self, "lower_bound_", -np.inf)):
            previous = float(self.lower_bound_) + data.X.shape[1] * data.frame.log_scale  # working frame
        engine = Engine(
            device=data.Xc.device, dtype=data.Xc.dtype, random_state=seed, max_iter=self.max_iter,
            tol=self.tol, maximize=True, verbose=self.verbose,
            callbacks=self.callbacks, desc="GaussianMixture EM", previous_objective=previous,
        )
        if data.warm:
            params0 = self._params(data.frame, data.Xc)
        else:
            params0 = self._initial_params(data, engine.generator)
        step = em.em_step(data.family, data.feats, n_total=getattr(data, "n_total", None))
        return Run(engine, [Step("em", step)], {"params": params0})

    def _restart_score(self, data: SimpleNamespace, run: Run) -> float:
        history = run.result.history
        return float(history[-1]) if history else -np.inf  # interrupted before one iteration

    def _finish(self, data: SimpleNamespace, run: Run) -> None:
        params = run.state["params"]
        self._store(params, data.frame)
        d = data.X.shape[1]
        self.history_ = [h - d * data.frame.log_scale for h in self.history_]  # per point, X's units
        self.lower_bound_ = self.history_[-1] if self.history_ else -np.inf
        self.n_features_in_ = d
        self.n_components_ = int(self.n_components)
        if self.inference != "em":
            self._X_fit = data.X.detach().double().cpu()
            # the EM warm start's run; n_iter_ / converged_ / history_ then describe the route's run
            self.em_n_iter_, self.em_converged_ = self.n_iter_, self.converged_
            self.em_history_ = self.history_
        if self.inference != "em" and (run.result.interrupted or run.result.stopped):
            warnings.warn(
                f"the EM warm start was {'interrupted' if run.result.interrupted else 'stopped'}; "
                f"the {self.inference} stage did not run (the model holds the EM estimate).",
                RuntimeWarning,
                stacklevel=3,
            )
        elif self.inference == "svi":
            params = self._fit_svi(data, params)
        elif self.inference == "nuts":
            params = self._fit_nuts(data, params)
        family, feats = data.family, data.feats
        if run.state.get("formulation") == "cholesky":  # EM moved to centred statistics mid-fit
            self.formulation_ = "cholesky"
            family = family.centred(feats.d) or family  # labels in the form predict() uses
            feats = feats.remapped(family.feature_map)
        A, c = family.log_prob_coefficients(params)
        self.labels_ = em.argmax_chunks(feats, A, c, em.centred_set(family, params)).cpu().numpy()

    @property
    def _fit_frame(self) -> Frame:
        """The working frame of the fit: ``shift_`` (D,) and ``scale_`` (1 for files from before it)."""
        return Frame(torch.as_tensor(self.shift_, dtype=torch.float64), float(getattr(self, "scale_", 1.0)))

    def _params(self, frame: Frame, like: torch.Tensor) -> gaussian.GMMParams:
        """The fitted parameters in ``frame``, on ``like``'s device and in its dtype: the working-frame
        parameters themselves when ``frame`` is the fit's (``means_`` in float32 may have lost digits
        to a large offset), else the attributes mapped in float64."""
        saved = getattr(self, "_working", None)
        if saved is not None and torch.equal(frame.shift, self._fit_frame.shift) and \
                frame.scale == self._fit_frame.scale:
            return gaussian.GMMParams(*(t.to(device=like.device, dtype=like.dtype) for t in saved))
        user = gaussian.GMMParams(*(torch.as_tensor(a, dtype=torch.float64) for a in
                                    (self.weights_, self.means_, self.covariances_)))
        w = gaussian.affine_params(user, -frame.shift / frame.scale, 1.0 / frame.scale)
        return gaussian.GMMParams(*(t.to(device=like.device, dtype=like.dtype) for t in
                                    (w.weights, w.means, w.covariances)))

    def _initial_params(self, data: SimpleNamespace, gen: torch.Generator) -> gaussian.GMMParams:
        """Parameters from the ``init`` responsibilities (or given means / weights / covariances)."""
        Xc, k = data.Xc, self.n_components
        n, d = Xc.shape
        chunk = int(self.chunk_size)
        if not isinstance(self.init, str):
            means = check_array(self.init, name="init", device=Xc.device, dtype=torch.float64)
            if tuple(means.shape) != (k, d):
                raise ValueError(f"init means must have shape ({k}, {d}), got {tuple(means.shape)}.")
            means = data.frame.apply(means, Xc.dtype)
            if self.weights_init is not None or self.covariances_init is not None:
                return self._given_params(means, Xc, data.frame.scale)
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
            centers = distributed.broadcast(centers)  # rank 0's centres on every rank
            resp = torch.nn.functional.one_hot(kmeans.nearest_center(Xc, centers, chunk), k).to(Xc.dtype)
        unit = gaussian.GMMParams(
            torch.full((k,), 1.0 / k, dtype=Xc.dtype, device=Xc.device),
            torch.zeros(k, d, dtype=Xc.dtype, device=Xc.device),
            gaussian.identity_covariances(self.covariance_type, k, d, Xc),
        )
        init_feats = getattr(data, "init_feats", data.feats)  # out of core: the sample Xc's features
        G = em.statistics_from_resp(init_feats, resp, cholesky=data.family.uses_cholesky(d))
        return data.family.m_step(G, unit)

    def _given_params(
        self, means_c: torch.Tensor, Xc: torch.Tensor, scale: float = 1.0
    ) -> gaussian.GMMParams:
        """Given weights / covariances (X's units) with means already in the working frame."""
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
            cov = check_array(self.covariances_init, name="covariances_init", ndim=len(expected),
                              device=Xc.device, dtype=torch.float64)
            if tuple(cov.shape) != expected:
                raise ValueError(
                    f"covariances_init must have shape {expected} for covariance_type="
                    f"{self.covariance_type!r}, got {tuple(cov.shape)}."
                )
            cov = (cov / scale**2).to(Xc.dtype)
        return gaussian.GMMParams(w, means_c, cov)

    def _store(self, params: gaussian.GMMParams, frame: Frame) -> None:
        """Working-frame parameters as the fitted attributes in X's units (mapped in float64, stored
        in the fit dtype; full / tied covariance matrices in float64, see the class docstring), with
        ``shift_`` / ``scale_`` of the frame."""
        out = params.means.dtype
        matrices = torch.float64 if self.covariance_type in ("full", "tied") else out
        self._working = tuple(t.detach().cpu().clone() for t in params_tuple(params))
        p64 = gaussian.GMMParams(*(t.detach().cpu().double() for t in
                                   (params.weights, params.means, params.covariances)))
        user = gaussian.affine_params(p64, frame.shift, frame.scale)

        def numpy(t: torch.Tensor) -> np.ndarray:
            return t.to(out).numpy()

        self.weights_, self.means_ = numpy(user.weights), numpy(user.means)
        self.covariances_ = user.covariances.to(matrices).numpy()
        prec_chol = gaussian.precisions_cholesky(p64.covariances, self.covariance_type) / frame.scale
        self.precisions_cholesky_ = prec_chol.to(matrices).numpy()
        if self.covariance_type in ("full", "tied"):
            self.precisions_ = (prec_chol @ prec_chol.transpose(-1, -2)).numpy()
        else:
            self.precisions_ = numpy(prec_chol * prec_chol)
        self.shift_, self.scale_ = frame.shift.numpy(), float(frame.scale)

    # ------------------------------------------------------------------ svi / nuts routes
    def _fit_svi(self, data: SimpleNamespace, params: gaussian.GMMParams) -> gaussian.GMMParams:
        """SVI in the working frame from the EM point ``params``; returns its point estimate."""
        from ..inference.svi import fit_svi

        X, prior = data.Xc, data.prior
        engine = Engine(
            device=X.device, dtype=X.dtype, random_state=self._seed, max_iter=self.max_iter,
            tol=0.0, maximize=False, verbose=self.verbose, callbacks=self.callbacks,
            desc="GaussianMixture SVI",
        )
        gmm_prior = GMMPrior.from_niw(prior.alpha, prior.niw)
        result = fit_svi(
            X, self.n_components, self.covariance_type, gmm_prior, _init_dict(params), engine,
            guide=self.svi_guide, lr=float(self.learning_rate), batch_size=self.batch_size,
        )
        self._svi_result = result  # in the working frame; to_inference_data maps its draws
        point = gaussian.GMMParams(result.weights, result.means, result.covariances)
        self._store_route(point, data.frame)
        self._set_run_attributes(result.fit)  # n_iter_ / converged_ / history_: the SVI epochs
        self.history_ = [h + X.shape[1] * data.frame.log_scale for h in self.history_]  # -ELBO, X's units
        return gaussian.GMMParams(*(t.detach().to(X) for t in params_tuple(point)))

    def _fit_nuts(self, data: SimpleNamespace, params: gaussian.GMMParams) -> gaussian.GMMParams:
        """NUTS (float64) in the working frame from the EM point; returns the posterior mean."""
        from ..inference.nuts import fit_nuts

        X, prior = data.Xc.double(), data.prior
        gmm_prior = GMMPrior.from_niw(prior.alpha, prior.niw, torch.float64)
        result = fit_nuts(
            X, self.n_components, self.covariance_type, gmm_prior,
            {k: v.double() for k, v in _init_dict(params).items()},
            num_samples=int(self.num_samples), warmup_steps=int(self.warmup_steps),
            num_chains=int(self.num_chains), random_state=self._seed,
        )
        self._nuts_result = result  # in the working frame
        s = result.samples
        point = gaussian.GMMParams(
            s["weights"].mean((0, 1)), s["means"].mean((0, 1)), _posterior_mean_cov(s, self.covariance_type)
        )
        self._store_route(point, data.frame)
        user = gaussian.affine_draws({k: v.detach().cpu() for k, v in s.items()}, data.frame.shift,
                                     data.frame.scale)
        self.posterior_samples_ = {k: v.numpy() for k, v in user.items()}
        self.relabel_fraction_ = float(result.relabelled_fraction)
        self.divergences_ = int(torch.as_tensor(result.divergences).sum())
        self._set_nuts_attributes(X, s, data.frame)
        return gaussian.GMMParams(*(t.to(data.Xc) for t in (point.weights, point.means, point.covariances)))

    def _set_nuts_attributes(self, X: torch.Tensor, samples: dict[str, torch.Tensor], frame: Frame) -> None:
        """NUTS run attributes: ``n_iter_`` draws per chain, ``history_`` the mean log-likelihood per
        point of each draw (averaged over chains), ``converged_`` max split R-hat of weights and
        means below 1.1 (``rhat_`` holds that maximum; NaN, and ``converged_`` False, with < 4 draws)."""
        from ..inference.nuts import draw_log_likelihoods, max_split_rhat

        family = gaussian.GaussianFamily(self.covariance_type, formulation=self._formulation)
        feats = Features(X.double(), family.feature_map, int(self.chunk_size))
        cov = _draw_covariances(samples, self.covariance_type)
        loglik = draw_log_likelihoods(family, feats, samples["weights"], samples["means"], cov)
        self.history_ = (loglik.mean(0) / X.shape[0] - X.shape[1] * frame.log_scale).tolist()
        self.n_iter_ = int(loglik.shape[1])
        # split R-hat needs at least 4 draws a chain; with fewer, convergence is not assessed
        self.rhat_ = max_split_rhat(samples, ("weights", "means")) if self.n_iter_ >= 4 else float("nan")
        self.converged_ = bool(self.rhat_ < 1.1)

    def _store_route(self, point: gaussian.GMMParams, frame: Frame) -> None:
        """The route's working-frame point estimate as the fitted attributes; the EM means kept."""
        self.em_means_ = self.means_
        dtype = torch.as_tensor(self.means_).dtype
        self._store(gaussian.GMMParams(*(torch.as_tensor(t).detach().cpu().to(dtype) for t in
                                         (point.weights, point.means, point.covariances))), frame)

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict[str, Any]:
        """What ``to_inference_data`` needs after a reload, as tensors and plain values: the fit data,
        the SVI point and mean-field guide parameters, the NUTS run's diagnostics (its draws are
        ``posterior_samples_``)."""
        out: dict[str, Any] = {}
        if getattr(self, "_working", None) is not None:
            out["working"] = list(self._working)
        if getattr(self, "_X_fit", None) is not None:
            out["X_fit"] = self._X_fit
        svi = getattr(self, "_svi_result", None)
        if svi is not None:
            loc_scale = None
            if svi.guide_type != "map":
                with torch.no_grad():
                    loc_scale = {k: tuple(svi.guide._get_loc_and_scale(k)) for k in _SVI_SITES}
            out["svi"] = {
                "point": {k: getattr(svi, k) for k in ("weights", "means", "covariances", "precisions")},
                "history": list(svi.history), "guide_type": svi.guide_type,
                "covariance_type": svi.covariance_type, "loc_scale": loc_scale,
            }
        nuts = getattr(self, "_nuts_result", None)
        if nuts is not None:
            keys = ("divergences", "permutations", "n_relabelled", "relabelled_fraction", "covariance_type",
                    "reference_means", "accept_prob")
            out["nuts"] = {k: getattr(nuts, k) for k in keys}
            out["nuts_samples"] = dict(nuts.samples)  # the working frame's draws, exactly
        return out

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Check the fitted parameters and rebuild the SVI / NUTS result ``to_inference_data`` reads."""
        from .._persist import require_attributes, require_keys

        require_attributes(self, ("weights_", "means_", "covariances_", "shift_", "n_components_"))
        working = extra.get("working")
        if working is not None:
            if len(working) != 3 or not all(isinstance(t, torch.Tensor) for t in working):
                raise ValueError("extra state 'working' must hold the three working-frame parameter tensors.")
            self._working = tuple(working)
        route = self.inference
        if route == "em" or not hasattr(self, "em_means_"):  # EM, or the route's stage did not run
            return
        require_keys(extra, ("X_fit", route), "extra state")
        self._X_fit = extra["X_fit"]
        if route == "nuts":
            from ..inference.nuts import NUTSResult

            require_attributes(self, ("posterior_samples_",))
            samples = extra.get("nuts_samples")
            if samples is None:  # a file from before the working frame: posterior_samples_ mapped back
                frame = self._fit_frame
                samples = gaussian.affine_draws(
                    {k: torch.as_tensor(v) for k, v in self.posterior_samples_.items()},
                    -frame.shift / frame.scale, 1.0 / frame.scale)
            self._nuts_result = NUTSResult(samples=samples, **extra["nuts"])
        else:
            from ..inference.svi import SVIResult

            st = extra["svi"]
            ls = st["loc_scale"]
            guide = None if ls is None else _SavedNormalGuide(ls, _svi_supports(st["covariance_type"]))
            self._svi_result = SVIResult(
                **st["point"], history=st["history"], guide=guide, guide_type=st["guide_type"],
                covariance_type=st["covariance_type"], model=None,
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
        return gmm_inference_data(result, torch.as_tensor(self._X_fit), self.covariance_type,
                                  frame=self._fit_frame)

    # ------------------------------------------------------------------ prediction
    def _weighted_log_prob(self, X: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """log w_k + log N(x | mu_k, Sigma_k) (N, K) and log p(x) (N,) of new data."""
        self._check_fitted()
        # float64 whatever the fit dtype: a row's result then does not depend on the other rows of
        # the block (float32 matmuls round differently by block size), and log-densities keep digits
        device, dtype = resolve_device(self.device), torch.float64
        Xt = check_array(X, device=device, dtype=dtype, n_features=self.n_features_in_)
        frame = self._fit_frame
        family = gaussian.GaussianFamily(self.covariance_type, formulation=self._formulation)
        A, c = family.log_prob_coefficients(self._params(frame, Xt))
        feats = Features(frame.apply(Xt, dtype), family.feature_map, int(self.chunk_size), cache_bytes=0)
        logits, ll = em.log_resp_chunks(feats, A, c)
        jac = Xt.shape[1] * frame.log_scale  # densities in X's units
        return logits - jac, ll - jac

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


def _working_moments(var: torch.Tensor, frame: Frame, dtype: torch.dtype) -> torch.Tensor:
    """A (2, D) stand-in for data of variance ``var`` (D,) (X's units) in the working ``frame``
    (mean 0 there, since the frame's shift is the data mean), for the data-dependent prior."""
    return streaming.moment_proxy(torch.zeros_like(var), var / frame.scale**2, dtype)


def params_tuple(params: gaussian.GMMParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, means, covariances)."""
    return params.weights, params.means, params.covariances


def _init_dict(params: gaussian.GMMParams) -> dict[str, torch.Tensor]:
    """The starting point of SVI / NUTS: the EM parameters (working frame) by site name."""
    return {"weights": params.weights, "means": params.means, "covariances": params.covariances}


def _draw_covariances(samples: dict[str, torch.Tensor], cov_type: str) -> torch.Tensor:
    """Covariances of every draw (chains, draws, ...) from the NUTS samples."""
    if "covariances" in samples:
        return samples["covariances"]
    from ..models.gmm_model import precisions_to_covariances

    return precisions_to_covariances(samples["precisions"], cov_type)


def _posterior_mean_cov(samples: dict[str, torch.Tensor], cov_type: str) -> torch.Tensor:
    return _draw_covariances(samples, cov_type).mean((0, 1))


# --------------------------------------------------------------------------------- persistence helpers
_SVI_SITES = ("weights", "means", "precisions")  # the global sites of the SVI guide


def _svi_supports(cov_type: str) -> dict[str, Any]:
    """Support of each global site of :func:`~bayesclust.models.gmm_model.make_gmm_model`."""
    from torch.distributions import constraints

    from ..models.gmm_model import positive_definite_precision

    prec = {"full": positive_definite_precision, "tied": positive_definite_precision,
            "diag": constraints.independent(constraints.positive, 1), "spherical": constraints.positive}
    return {"weights": constraints.simplex, "means": constraints.real_vector, "precisions": prec[cov_type]}


class _SavedNormalGuide:
    """A mean-field guide read back from a model file: the (loc, scale) of each site in the
    unconstrained space and the site's support, which is what ``SVIResult.sample_posterior`` reads."""

    def __init__(self, loc_scale: dict[str, Any], supports: dict[str, Any]) -> None:
        self._loc_scale = {k: (torch.as_tensor(v[0]), torch.as_tensor(v[1])) for k, v in loc_scale.items()}
        self.prototype_trace = SimpleNamespace(
            nodes={k: {"fn": SimpleNamespace(support=supports[k])} for k in self._loc_scale}
        )

    def _get_loc_and_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loc_scale[name]
