"""Deep transformation-invariant clustering, ``bc.DTIKMeans`` and ``bc.DTIGMM``.

Monnier, Groueix, Aubry (2020), "Deep Transformation-Invariant Clustering". Each cluster k has a
prototype ``c_k`` and, per transformation module, a head that predicts how to warp ``c_k`` towards
an image; the networks and losses are in :mod:`bayesclust.models.dti`.

Training (:mod:`bayesclust.inference.dti_steps` through the
:class:`~bayesclust.inference.engine.Engine`): one iteration is one Adam step on a mini-batch; the
modules are switched on one by one (the curriculum, in iterations) and starved clusters are
reassigned every ``reassign_every`` iterations.

Defaults that scale with the data (each explicit parameter wins; the rules and their constants are
in :mod:`bayesclust.inference.dti_steps`): one run is ``clip(20 * ceil(N / batch_size), 3000,
10000)`` Adam steps (``n_epochs`` given: ``n_epochs * ceil(N / batch_size)``); the curriculum
trains the prototypes alone for the first 10% of the run and adds one module (in the order of
``transforms``) every further 10%, so that all modules train together for most of the run;
reassignment is checked every epoch or every ``100 K`` images if that is longer; ``n_init="auto"``
runs as many restarts (1 to 3, the lowest-loss one kept) as fit a fixed budget of
``steps * K * C*H*W * batch_size / 64`` (one run when ``max_iter`` or ``n_epochs`` is given).
Measured accuracy and run times on MNIST and USPS: ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._device import resolve_device, resolve_dtype
from .._frame import Frame
from .._validation import check_array, check_positive_int, check_scalar
from ..inference import distributed
from ..inference.dti_steps import (
    default_curriculum,
    default_n_init,
    default_reassign_every,
    default_steps,
    full_loss,
    make_schedule,
    per_cluster,
)
from ..inference.engine import Engine
from ..inference.kmeans import kmeans_plusplus
from ..models.dti import DTINetwork
from ..models.transforms import canonical_name
from ._base import DEPRECATED, ClusterEstimator, MixtureMixin, Run

_KMEANSPP_MAX_IMAGES = 5000  # k-means++ seeds on a random subset of at most this many images


@dataclass
class _FitData:
    """What every restart shares: the images (N, C, H, W) in the network's frame on the device, that
    frame, and the run length."""

    X: torch.Tensor
    input_ndim: int
    names: list[str]
    max_iter: int
    starts: list[int]
    reassign_every: int
    frame: Frame
    n_init: int


def _transform_names(transforms: Any) -> list[str]:
    if transforms is None:
        return []
    if isinstance(transforms, str):
        transforms = (transforms,)
    names = [str(t) for t in transforms]
    if [n.lower() for n in names] in (["identity"], []):
        return []
    if any(n.lower() == "identity" for n in names):
        raise ValueError("transforms='identity' must be used alone (it means no transformation module).")
    out = [canonical_name(n) for n in names]
    if len(set(out)) != len(out):
        raise ValueError(f"transforms={tuple(names)} lists a module twice; give each module once.")
    return out


def _kmeanspp_images(X: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ (one candidate per draw) on flattened images X (N, C, H, W); returns (K, C, H, W)."""
    n = X.shape[0]
    sub = torch.randperm(n, generator=generator)[: min(n, _KMEANSPP_MAX_IMAGES)].to(X.device)
    centres = kmeans_plusplus(X[sub].flatten(1), k, generator, n_local_trials=1)
    return centres.view(k, *X.shape[1:])


class _DTIBase(ClusterEstimator):
    _gmm = False
    _non_deterministic = True
    _images_only = True  # scikit-learn tags: 3-D input; its (N, D) checks do not apply

    _renamed_params = {"lr": "learning_rate"}

    def __init__(
        self,
        n_components: int = 10,
        *,
        transforms: Sequence[str] | str | None = ("affine", "morpho", "tps"),
        curriculum: Sequence[int] | None = None,
        init: str | Any = "kmeans++",
        max_iter: int | None = None,
        n_epochs: int | None = None,
        n_init: int | str = "auto",
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        encoder_width: int = 16,
        feature_dim: int = 128,
        head_hidden: int = 64,
        tps_grid: int = 4,
        morpho_kernel: int = 3,
        empty_threshold: float = 0.2,
        reassign_every: int | None = None,
        reassign_noise: float = 0.01,
        sigma_min: float = 0.05,
        sigma_init: float = 0.3,
        chunk_size: int = 512,
        device: str | torch.device | None = "cpu",
        dtype: str = "float32",
        random_state: int | None = None,
        verbose: bool = False,
        callbacks: Sequence[Any] | None = None,
        lr: Any = DEPRECATED,
    ) -> None:
        self._set_init_params(locals())

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _as_images(X: Any, name: str = "X", device: Any = "cpu", dtype: Any = "float32",
                   **checks: Any) -> torch.Tensor:
        """Images (N, H, W) or (N, C, H, W) as a tensor (N, C, H, W); ``checks`` go to check_array."""
        t = check_array(X, name=name, ndim=(3, 4), device=device, dtype=dtype, **checks)
        return t.unsqueeze(1) if t.ndim == 3 else t

    def _check_params(self) -> None:
        check_positive_int(self.n_components, "n_components")
        names = _transform_names(self.transforms)
        for name in ("batch_size", "encoder_width", "feature_dim", "head_hidden", "chunk_size"):
            check_positive_int(getattr(self, name), name)
        for name in ("max_iter", "n_epochs", "reassign_every"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name)
        if not (isinstance(self.n_init, str) and self.n_init == "auto"):
            check_positive_int(self.n_init, "n_init")
        if self.curriculum is not None:
            starts = [int(s) for s in self.curriculum]
            if len(starts) != len(names):
                raise ValueError(
                    f"curriculum has {len(starts)} start iteration(s) but transforms has {len(names)} "
                    f"module(s) {names}; give one start iteration per module."
                )
            if any(s < 0 for s in starts) or starts != sorted(starts):
                raise ValueError(
                    f"curriculum={list(self.curriculum)} must be non-negative and non-decreasing."
                )
        check_scalar(self.learning_rate, "learning_rate", low=0, low_inclusive=False)
        check_scalar(self.empty_threshold, "empty_threshold", low=0, high=1)
        check_scalar(self.reassign_noise, "reassign_noise", low=0)
        if self._gmm:
            check_scalar(self.sigma_min, "sigma_min", low=0, low_inclusive=False)
            check_scalar(self.sigma_init, "sigma_init", low=self.sigma_min, low_inclusive=False)
        if self.encoder_width % 8:
            raise ValueError(
                f"encoder_width must be a multiple of 8 (GroupNorm groups), got {self.encoder_width}."
            )
        check_positive_int(self.tps_grid, "tps_grid", minimum=2)
        check_positive_int(self.morpho_kernel, "morpho_kernel")

    def _prepare(self, X: Any) -> _FitData:
        k, bs = int(self.n_components), int(self.batch_size)
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        raw = self._as_images(X, device=device, dtype="input", min_samples=k)
        # the network fits x_w = (x - min) / (max - min): answers do not depend on the units (data
        # already in [0, 1], for which the defaults are set, is unchanged); computed in float64
        frame = distributed.global_input_map("unit_range", raw).frame  # every rank's min and range
        Xt = frame.apply(raw, dtype)
        names = _transform_names(self.transforms)
        max_iter, starts, every, n_init = self._plan(Xt.shape, k, bs, len(names))
        self._restart_losses: list[float] = []
        ndim = X.ndim if torch.is_tensor(X) else int(np.ndim(X))
        return _FitData(Xt, ndim, names, max_iter, starts, every, frame, n_init)

    def _plan(
        self, shape: tuple[int, ...], k: int, bs: int, n_modules: int
    ) -> tuple[int, list[int], int, int]:
        """Run length, curriculum, reassignment period and number of runs for images ``shape``
        (N, C, H, W): the explicit parameters, else the rules of :mod:`~bayesclust.inference.dti_steps`."""
        n, pixels = shape[0], int(np.prod(shape[1:]))
        if self.max_iter is not None:
            max_iter = int(self.max_iter)
        elif self.n_epochs is not None:
            max_iter = int(self.n_epochs) * math.ceil(n / bs)
        else:
            max_iter = default_steps(n, bs)
        starts = (default_curriculum(max_iter, n_modules) if self.curriculum is None
                  else [int(s) for s in self.curriculum])
        every = (default_reassign_every(n, k, bs) if self.reassign_every is None
                 else int(self.reassign_every))
        if not (isinstance(self.n_init, str) and self.n_init == "auto"):
            n_init = int(self.n_init)
        elif self.max_iter is None and self.n_epochs is None:
            n_init = default_n_init(max_iter, k, pixels, bs)
        else:
            n_init = 1  # a run length fixed by the user: one run unless n_init says otherwise
        return max_iter, starts, every, n_init

    def _n_restarts(self, data: _FitData) -> int:
        return data.n_init

    # ------------------------------------------------------------------ one restart
    def _init_prototypes(self, X: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        init = self.init
        if isinstance(init, str):
            if init == "kmeans++":
                return _kmeanspp_images(X, k, gen)
            if init == "random":
                idx = torch.randperm(X.shape[0], generator=gen)[:k].to(X.device)
                return X[idx].clone()
            raise ValueError(
                f"init={init!r} is not supported; choose 'kmeans++', 'random' or an array (K, C, H, W)."
            )
        protos = self._as_images(init, name="init", device=X.device, dtype=X.dtype)
        if tuple(protos.shape) != (k, *X.shape[1:]):
            raise ValueError(
                f"init has shape {tuple(protos.shape)} but (n_components, C, H, W) = {(k, *X.shape[1:])} "
                "is needed."
            )
        return protos.clone()

    def _build_net(self, prototypes: torch.Tensor, names: list[str]) -> DTINetwork:
        return DTINetwork(
            prototypes, names, gmm=self._gmm, encoder_width=self.encoder_width, feature_dim=self.feature_dim,
            head_hidden=self.head_hidden, tps_grid=self.tps_grid, morpho_kernel=self.morpho_kernel,
            sigma_min=self.sigma_min, sigma_init=self.sigma_init,
        )

    def _start(self, data: _FitData, seed: int | None) -> Run:
        engine = Engine(
            device=self.device, dtype=self.dtype, random_state=seed, max_iter=data.max_iter,
            tol=0.0, maximize=False, verbose=self.verbose, callbacks=self.callbacks, keep_best=False,
            desc=type(self).__name__,
        )
        k = int(self.n_components)
        protos = self._init_prototypes(data.X, k, engine.generator)
        net = self._build_net(protos.cpu(), data.names).to(device=engine.device, dtype=engine.dtype)
        state = {
            "net": net, "optimizer": torch.optim.Adam(net.parameters(), lr=self.learning_rate),
            "X": data.X, "order": None, "cursor": 0, "n_reassigned": 0,
            "counts": torch.zeros(k, device=engine.device, dtype=torch.float64),
        }
        schedule = make_schedule(
            engine, n=data.X.shape[0], batch_size=int(self.batch_size), names=data.names,
            starts=data.starts, n_clusters=k, gmm=self._gmm, empty_threshold=self.empty_threshold,
            reassign_every=data.reassign_every, reassign_noise=self.reassign_noise,
        )
        return Run(engine, schedule, state)

    def _restart_score(self, data: _FitData, run: Run) -> float:
        """Minus the full-data training loss, as Monnier et al. (2020) keep their lowest-loss run."""
        loss = full_loss(run.state["net"].eval(), data.X, self.chunk_size)
        self._restart_losses.append(loss)
        return -loss

    # ------------------------------------------------------------------ fitted attributes
    def _finish(self, data: _FitData, run: Run) -> None:
        assert run.result is not None
        self._net = run.state["net"].eval()
        self.init_losses_ = self._restart_losses
        del self._restart_losses
        self.loss_ = -run.score
        # fixed-length runs (tol=0): "converged" means the schedule ran to its end
        self.converged_ = not (run.result.interrupted or run.result.stopped)
        self.n_reassigned_ = int(run.state["n_reassigned"])
        self.n_components_ = int(self.n_components)
        self.transforms_ = list(data.names)
        self.curriculum_ = list(data.starts)
        self.input_ndim_ = data.input_ndim
        self.image_shape_ = tuple(data.X.shape[1:])
        self.n_features_in_ = int(np.prod(self.image_shape_))
        self.input_shift_, self.input_scale_ = float(data.frame.shift), float(data.frame.scale)
        self._set_prototypes()
        self.labels_ = self._scores_w(data.X).argmax(1).cpu().numpy()  # data.X is in the network's frame

    def _as_input_shape(self, images: np.ndarray) -> np.ndarray:
        """(K, C, H, W) -> (K, H, W) when the model was fitted on single-channel (N, H, W) input."""
        return images[:, 0] if (self.input_ndim_ == 3 and images.shape[1] == 1) else images

    def _user_frame(self) -> Frame:
        """The map from the user's units to the network's (identity for models saved without it)."""
        shift = torch.tensor(getattr(self, "input_shift_", 0.0), dtype=torch.float64)
        return Frame(shift, getattr(self, "input_scale_", 1.0))

    def _set_prototypes(self) -> None:
        f = self._user_frame()
        protos = self._net.prototypes.detach().cpu().double() * f.scale + f.shift
        self.prototypes_ = self._as_input_shape(protos.to(self._net.prototypes.dtype).numpy())
        if self._gmm:
            sigmas = self._net.sigma().detach().cpu().double() * f.scale
            self.sigmas_ = self._as_input_shape(sigmas.to(self._net.prototypes.dtype).numpy())
            self.weights_ = torch.softmax(self._net.mix_logits.detach(), 0).cpu().numpy()

    # ------------------------------------------------------------------ inference helpers
    def _check_predict(self, X: Any) -> torch.Tensor:
        self._check_fitted()
        p = next(self._net.parameters())
        shape = self.image_shape_  # (C, H, W); single-channel images may also come as (N, H, W)
        if (X.ndim if hasattr(X, "ndim") else np.ndim(X)) == 3 and shape[0] == 1:
            shape = shape[1:]
        raw = self._as_images(X, device=p.device, dtype="input", n_features=shape)
        return self._user_frame().apply(raw, p.dtype)

    def _per_cluster(self, X: Any, what: str) -> torch.Tensor:
        return per_cluster(self._net, self._check_predict(X), what, self.chunk_size)

    def _log_scores(self, X: Any) -> torch.Tensor:
        return self._scores_w(self._check_predict(X))

    def transform(self, X: Any) -> np.ndarray:
        """Per-pixel mean squared error to each cluster's transformed prototype, (N, K), in X's units."""
        return (self._per_cluster(X, "cost").double() * self._user_frame().scale**2).cpu().numpy()

    def reconstruct(self, X: Any, cluster: str | int = "assigned") -> np.ndarray:
        """Transformed prototypes: ``"all"`` (N, K, C, H, W), ``"assigned"`` (N, C, H, W) or cluster id."""
        f = self._user_frame()
        rec = self._per_cluster(X, "recon").double() * f.scale + f.shift.to(self._net.prototypes.device)
        if cluster == "all":
            return rec.cpu().numpy()
        if cluster == "assigned":
            lab = torch.as_tensor(self.predict(X), device=rec.device)
            return rec[torch.arange(rec.shape[0], device=rec.device), lab].cpu().numpy()
        k = check_positive_int(cluster, "cluster", minimum=0)
        if k >= self._net.n_clusters:
            raise ValueError(f"cluster={k} is out of range for n_components={self._net.n_clusters}.")
        return rec[:, k].cpu().numpy()

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict[str, Any]:
        return {"net": {k: v.detach().cpu() for k, v in self._net.state_dict().items()}}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Rebuild the network in the saved dtype and load its weights (checks the fitted attributes)."""
        from .._persist import require_attributes, require_keys

        require_keys(extra, ("net",), "extra state")
        require_keys(extra["net"], ("prototypes",), "network weights")
        require_attributes(self, ("transforms_", "image_shape_", "input_ndim_", "prototypes_"))
        if self._gmm:
            require_attributes(self, ("sigmas_", "weights_"))
        sd = extra["net"]
        protos = sd["prototypes"]
        net = self._build_net(protos, list(self.transforms_)).to(protos.dtype)
        net.load_state_dict(sd)
        self._net = net.eval()


_PARAMETERS_DOC = """
    Parameters
    ----------
    n_components : number of clusters K.
    transforms : modules applied in this order, from ``"colour"``, ``"affine"``, ``"projective"``,
        ``"tps"``, ``"morpho"``; ``"identity"`` (or ``()``) gives plain mini-batch K-means.
    curriculum : start iteration of each module; default ``round((i + 1) * 0.1 * run length)`` for
        module i (stages of ``0.5 / M`` of the run with more than 5 modules).
    init : ``"kmeans++"`` (D^2 seeding on at most 5000 images), ``"random"`` (random images) or
        prototypes (K, H, W) / (K, C, H, W).
    max_iter : Adam steps per run (one mini-batch each); ``None`` -> ``n_epochs * ceil(N / batch_size)``,
        or with ``n_epochs=None`` too ``clip(20 * ceil(N / batch_size), 3000, 10000)``.
    n_epochs, batch_size, learning_rate : data passes when ``max_iter`` is None, mini-batch size,
        Adam step size (``lr`` is a deprecated alias).
    n_init : training runs from seeds ``random_state + i``; the lowest full-data loss is kept.
        ``"auto"``: 1 to 3 runs, as many as fit the budget of
        :func:`~bayesclust.inference.dti_steps.default_n_init`; 1 when ``max_iter`` or ``n_epochs`` is set.
    encoder_width, feature_dim, head_hidden : CNN width (multiple of 8), feature size, head hidden size.
    tps_grid, morpho_kernel : TPS control grid side, morphological window side (odd).
    empty_threshold, reassign_every, reassign_noise : a cluster with fewer than
        ``empty_threshold / K`` of the assignments over the last ``reassign_every`` iterations
        (default one epoch, at least ``100 K`` images) becomes a copy of the largest plus noise of
        this std.
    chunk_size : images per chunk in predict and in the full-data loss.
    device, dtype, random_state, verbose, callbacks : see :class:`~bayesclust.inference.engine.Engine`.
"""

_ATTRIBUTES_DOC = """
    Attributes
    ----------
    prototypes_ (K, H, W) or (K, C, H, W), labels_ (N,), n_components_, history_ (batch loss per
    iteration), n_iter_, converged_ (the runs have a fixed length: ``True`` when the schedule ran to
    its end, ``False`` when it was interrupted or stopped by a callback), n_reassigned_, transforms_,
    curriculum_, image_shape_, n_features_in_, input_shift_ and input_scale_ (the network fits
    ``(X - input_shift_) / input_scale_``, the data's minimum and range: answers do not depend on the
    units; prototypes_, sigmas_, transform, reconstruct and score_samples are in X's units),
    loss_ (full-data loss of the kept run in the network's frame: mean per-pixel squared error of the
    best cluster; for DTIGMM the negative mean log-likelihood per image), init_losses_ (that loss
    for every run).
"""


class DTIKMeans(_DTIBase):
    __doc__ = (
        """DTI K-means: ``min sum_i min_k ||x_i - T_{f_k(x_i)}(c_k)||^2`` over prototypes and heads.

    ``predict`` gives the cluster with the smallest reconstruction error, ``transform`` all of them.
    """
        + _PARAMETERS_DOC
        + _ATTRIBUTES_DOC
    )

    def _scores_w(self, Xw: torch.Tensor) -> torch.Tensor:
        """Minus the reconstruction costs (N, K) of images already in the network's frame."""
        return -per_cluster(self._net, Xw, "cost", self.chunk_size)

    def score(self, X: Any, y: Any = None) -> float:
        """Negative mean reconstruction error of the best cluster (higher is better)."""
        return -float(self.transform(X).min(1).mean())


class DTIGMM(MixtureMixin, _DTIBase):
    __doc__ = (
        """DTI Gaussian mixture: ``p(x) = sum_k pi_k N(x | T_k(c_k), T_k(diag sigma_k^2))``.

    Same parameters as :class:`DTIKMeans`, plus ``sigma_min`` (floor of the per-pixel standard
    deviations, which keeps the likelihood bounded on constant background pixels) and ``sigma_init``.
    The spatial modules warp the variance image with the same grid as the prototype; the colour
    module scales it by the squared gain. The loss is the exact negative log-likelihood from
    ``TraceEnum_ELBO`` on :func:`~bayesclust.models.dti.dti_gmm_model` (assignments enumerated).

    ``score`` / ``score_samples`` are log-likelihoods per image, ``predict_proba`` the posterior
    assignments. ``bic`` / ``aic`` count every trainable parameter of the fitted network that the
    likelihood depends on: prototypes, per-pixel sigmas, mixing weights, and the encoder and heads
    of every module that was switched on. ``sample`` draws from the untransformed prototypes,
    ``N(c_k, sigma_k^2)`` per pixel: the transformations are predicted per image from the image
    itself, so they are not part of the samples.
    """
        + _PARAMETERS_DOC
        + _ATTRIBUTES_DOC
        + """    sigmas_ (per-pixel standard deviations, shaped as prototypes_), weights_ (K,).
"""
    )

    _gmm = True

    def _scores_w(self, Xw: torch.Tensor) -> torch.Tensor:
        """Joint log densities (N, K) of images already in the network's frame."""
        return per_cluster(self._net, Xw, "logp", self.chunk_size)

    def score_samples(self, X: Any) -> np.ndarray:
        """``log p(x_i)`` under the fitted mixture, (N,), a density in X's units."""
        jacobian = self.n_features_in_ * self._user_frame().log_scale
        return (torch.logsumexp(self._per_cluster(X, "logp").double(), 1) - jacobian).cpu().numpy()

    def _n_parameters(self) -> int:
        return self._net.n_parameters()

    def _sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        weights = self.weights_.astype(np.float64)
        labels = rng.choice(len(weights), size=n, p=weights / weights.sum())
        noise = rng.standard_normal((n, *self.prototypes_.shape[1:]))
        X = self.prototypes_[labels] + self.sigmas_[labels] * noise
        return X.astype(self.prototypes_.dtype), labels
