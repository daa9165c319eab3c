"""Deep transformation-invariant clustering, ``bc.DTIKMeans`` and ``bc.DTIGMM``.

Monnier, Groueix, Aubry (2020), "Deep Transformation-Invariant Clustering". Each cluster k has a
prototype ``c_k`` (C, H, W) and, for each transformation module, an MLP head ``f_k`` on a shared CNN
encoder that predicts how to warp ``c_k`` towards an image ``x``:

- DTI K-means minimises ``sum_i min_k ||x_i - T_{f_k(x_i)}(c_k)||^2`` (mean over pixels);
- DTI GMM maximises ``sum_i log sum_k pi_k N(x_i | T(c_k), T(sigma_k^2))`` with per-pixel
  variances warped by the spatial modules; the likelihood is the Pyro mixture
  :func:`dti_gmm_model` with the assignment enumerated (``TraceEnum_ELBO``).

Training (``inference/dti_steps.py`` through the :class:`~bayesclust.inference.engine.Engine`):
one iteration is one Adam step on a mini-batch; the modules are switched on one by one (the
curriculum, in iterations) and starved clusters are reassigned every ``reassign_every`` iterations.

Default length: ``max_iter=None`` runs ``n_epochs`` passes over the data, i.e.
``n_epochs * ceil(N / batch_size)`` iterations (at least 500), split in equal curriculum stages:
prototypes alone, then each module added in the order of ``transforms``. Measured on the shared
2-core CPU (one torch thread, 10 clusters, batch 64, affine+morpho+tps): the defaults on MNIST-test
(10,000 images of 28 x 28, 3,140 iterations) took 120 s for ACC 96.8%; 1,800 iterations on USPS
(16 x 16) took 32 s; see ``benchmarks/results/dti.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._validation import (
    check_array,
    check_is_fitted,
    check_positive_int,
    check_scalar,
)
from ..inference.dti_steps import make_activation_step, make_gradient_step, make_reassign_step
from ..inference.engine import Engine, Step
from ..models.dti import DTINetwork, gmm_loss, kmeans_loss
from ..models.transforms import canonical_name
from ._base import BaseEstimator, ClusterMixin

# --------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------


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


def _kmeanspp(X: torch.Tensor, k: int, gen: torch.Generator, max_points: int = 5000) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on flattened images; returns K sample images."""
    n = X.shape[0]
    sub = torch.randperm(n, generator=gen)[: min(n, max_points)].to(X.device)
    flat = X[sub].flatten(1)
    first = int(torch.randint(flat.shape[0], (1,), generator=gen))
    chosen = [first]
    d2 = (flat - flat[first]).square().sum(1)
    for _ in range(1, k):
        probs = (d2 / d2.sum()).cpu() if float(d2.sum()) > 0 else torch.ones(flat.shape[0]) / flat.shape[0]
        nxt = int(torch.multinomial(probs.double(), 1, generator=gen))
        chosen.append(nxt)
        d2 = torch.minimum(d2, (flat - flat[nxt]).square().sum(1))
    return X[sub[torch.tensor(chosen, device=X.device)]].clone()


class _DTIBase(ClusterMixin, BaseEstimator):
    _gmm = False
    _non_deterministic = True

    def __init__(
        self,
        n_components: int = 10,
        *,
        transforms: Sequence[str] | str | None = ("affine", "morpho", "tps"),
        curriculum: Sequence[int] | None = None,
        init: str | Any = "kmeans++",
        max_iter: int | None = None,
        n_epochs: int = 20,
        n_init: int = 1,
        batch_size: int = 64,
        lr: float = 1e-3,
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
        device: str | torch.device | None = "auto",
        dtype: str = "float32",
        random_state: int | None = None,
        verbose: bool = False,
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        self.n_components = n_components
        self.transforms = transforms
        self.curriculum = curriculum
        self.init = init
        self.max_iter = max_iter
        self.n_epochs = n_epochs
        self.n_init = n_init
        self.batch_size = batch_size
        self.lr = lr
        self.encoder_width = encoder_width
        self.feature_dim = feature_dim
        self.head_hidden = head_hidden
        self.tps_grid = tps_grid
        self.morpho_kernel = morpho_kernel
        self.empty_threshold = empty_threshold
        self.reassign_every = reassign_every
        self.reassign_noise = reassign_noise
        self.sigma_min = sigma_min
        self.sigma_init = sigma_init
        self.chunk_size = chunk_size
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    # ------------------------------------------------------------------ validation helpers
    @staticmethod
    def _as_images(X: Any, name: str = "X", device: Any = "cpu", dtype: Any = "float32") -> torch.Tensor:
        t = check_array(X, name=name, ndim=(3, 4), device=device, dtype=dtype)
        return t.unsqueeze(1) if t.ndim == 3 else t

    def _check_params(self, n: int) -> dict[str, Any]:
        k = check_positive_int(self.n_components, "n_components")
        if n < k:
            raise ValueError(
                f"X has {n} sample(s) but n_components={k}; pass at least one image per cluster."
            )
        names = _transform_names(self.transforms)
        bs = check_positive_int(self.batch_size, "batch_size")
        epochs = check_positive_int(self.n_epochs, "n_epochs")
        check_positive_int(self.n_init, "n_init")
        if self.max_iter is None:
            max_iter = max(500, epochs * math.ceil(n / bs))
        else:
            max_iter = check_positive_int(self.max_iter, "max_iter")
        if self.curriculum is None:
            starts = [round((i + 1) * max_iter / (len(names) + 1)) for i in range(len(names))]
        else:
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
        every = self.reassign_every
        every = max(1, math.ceil(n / bs)) if every is None else check_positive_int(every, "reassign_every")
        check_scalar(self.lr, "lr", low=0, low_inclusive=False)
        check_scalar(self.empty_threshold, "empty_threshold", low=0, high=1)
        check_scalar(self.reassign_noise, "reassign_noise", low=0)
        if self._gmm:
            check_scalar(self.sigma_min, "sigma_min", low=0, low_inclusive=False)
            check_scalar(self.sigma_init, "sigma_init", low=self.sigma_min, low_inclusive=False)
        for name in ("encoder_width", "feature_dim", "head_hidden", "chunk_size"):
            check_positive_int(getattr(self, name), name)
        if self.encoder_width % 8:
            raise ValueError(
                f"encoder_width must be a multiple of 8 (GroupNorm groups), got {self.encoder_width}."
            )
        check_positive_int(self.tps_grid, "tps_grid", minimum=2)
        check_positive_int(self.morpho_kernel, "morpho_kernel")
        return {"k": k, "names": names, "bs": bs, "max_iter": max_iter, "starts": starts, "every": every}

    def _init_prototypes(self, X: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        init = self.init
        if isinstance(init, str):
            if init == "kmeans++":
                return _kmeanspp(X, k, gen)
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

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> _DTIBase:
        """Fit on images (N, H, W) or (N, C, H, W); ``y`` is ignored.

        With ``n_init > 1`` the model is trained from that many initialisations (seeds
        ``random_state + i``) and the one with the lowest full-data loss is kept, as Monnier et al.
        (2020) select their reported run; every run's loss is in ``init_losses_``.
        """
        engine_probe = Engine(device=self.device, dtype=self.dtype, random_state=self.random_state)
        Xt = self._as_images(X, device=engine_probe.device, dtype=engine_probe.dtype)
        cfg = self._check_params(Xt.shape[0])
        self.input_ndim_ = int(np.ndim(X)) if not torch.is_tensor(X) else X.ndim
        best, losses = None, []
        for i_init in range(self.n_init):
            seed = None if self.random_state is None else int(self.random_state) + i_init
            net, result, n_reassigned = self._fit_once(Xt, cfg, seed)
            self._net = net.eval()
            loss = self._full_loss(Xt)
            losses.append(loss)
            if best is None or loss < best[0]:
                best = (loss, net, result, n_reassigned)
        loss, net, result, n_reassigned = best
        self._net = net
        self.init_losses_ = losses
        self.loss_ = loss
        self.transforms_ = list(cfg["names"])
        self.curriculum_ = list(cfg["starts"])
        self.image_shape_ = tuple(Xt.shape[1:])
        self.n_features_in_ = int(np.prod(self.image_shape_))
        self.history_ = list(result.history)
        self.n_iter_ = result.n_iter
        self.n_reassigned_ = int(n_reassigned)
        self._set_prototypes()
        self.labels_ = self.predict(Xt)
        return self

    def _fit_once(self, Xt: torch.Tensor, cfg: dict[str, Any], seed: int | None):
        """One training run through the engine; returns (network, engine result, reassignments)."""
        engine = Engine(
            device=self.device, dtype=self.dtype, random_state=seed, max_iter=cfg["max_iter"],
            tol=0.0, maximize=False, verbose=self.verbose, callbacks=self.callbacks, keep_best=False,
            desc=type(self).__name__,
        )
        protos = self._init_prototypes(Xt, cfg["k"], engine.generator)
        net = self._build_net(protos.cpu(), cfg["names"]).to(device=engine.device, dtype=engine.dtype)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        state = {
            "net": net, "optimizer": opt, "X": Xt, "order": None, "cursor": 0, "n_reassigned": 0,
            "counts": torch.zeros(cfg["k"], device=engine.device, dtype=torch.float64),
        }
        schedule = [
            Step(f"activate_{name}", make_activation_step(i), every=cfg["max_iter"] + 1, start=s)
            for i, (name, s) in enumerate(zip(cfg["names"], cfg["starts"]))
        ]
        loss_fn = gmm_loss if self._gmm else kmeans_loss
        schedule.append(Step("gradient", make_gradient_step(engine, loss_fn, cfg["bs"])))
        if self.empty_threshold > 0:
            threshold = self.empty_threshold / cfg["k"]
            schedule.append(
                Step("reassign", make_reassign_step(threshold, self.reassign_noise, engine),
                     every=cfg["every"], start=cfg["every"] - 1)
            )
        result = engine.run(schedule, state)
        return state["net"], result, state["n_reassigned"]

    def _full_loss(self, Xt: torch.Tensor) -> float:
        """Training objective on all of ``Xt`` with the current network (lower is better)."""
        what = "logp" if self._gmm else "cost"
        per = self._per_cluster(Xt, what)
        if self._gmm:
            return -float(torch.logsumexp(per, 1).mean())
        return float(per.min(1).values.mean())

    def _set_prototypes(self) -> None:
        p = self._net.prototypes.detach().cpu().numpy()
        self.prototypes_ = p[:, 0] if (self.input_ndim_ == 3 and p.shape[1] == 1) else p
        if self._gmm:
            s = self._net.sigma().detach().cpu().numpy()
            self.sigmas_ = s[:, 0] if (self.input_ndim_ == 3 and s.shape[1] == 1) else s
            self.weights_ = torch.softmax(self._net.mix_logits.detach(), 0).cpu().numpy()

    # ------------------------------------------------------------------ inference helpers
    def _check_predict(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, ["n_features_in_"])
        p = next(self._net.parameters())
        Xt = self._as_images(X, device=p.device, dtype=p.dtype)
        if tuple(Xt.shape[1:]) != self.image_shape_:
            raise ValueError(
                f"X has image shape {tuple(Xt.shape[1:])} but the model was fitted on {self.image_shape_}; "
                "pass images of the same size and channels as in fit."
            )
        return Xt

    def _per_cluster(self, Xt: torch.Tensor, what: str) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for sl in Engine.chunks(Xt.shape[0], self.chunk_size):
                x = Xt[sl]
                recon = self._net.reconstruct(x)
                if what == "cost":
                    outs.append(self._net.kmeans_cost(x, recon[0]))
                elif what == "logp":
                    outs.append(self._net.gmm_log_prob(x, recon))
                else:
                    outs.append(recon[0])
        return torch.cat(outs)

    def transform(self, X: Any) -> np.ndarray:
        """Per-pixel mean squared error to each cluster's transformed prototype, (N, K)."""
        return self._per_cluster(self._check_predict(X), "cost").cpu().numpy()

    def reconstruct(self, X: Any, cluster: str | int = "assigned") -> np.ndarray:
        """Transformed prototypes: ``"all"`` (N, K, C, H, W), ``"assigned"`` (N, C, H, W) or cluster id."""
        Xt = self._check_predict(X)
        rec = self._per_cluster(Xt, "recon")
        if cluster == "all":
            return rec.cpu().numpy()
        if cluster == "assigned":
            lab = torch.as_tensor(self.predict(Xt), device=rec.device)
            return rec[torch.arange(rec.shape[0], device=rec.device), lab].cpu().numpy()
        k = check_positive_int(cluster, "cluster", minimum=0)
        if k >= self.n_components:
            raise ValueError(f"cluster={k} is out of range for n_components={self.n_components}.")
        return rec[:, k].cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Negative mean reconstruction error of the best cluster (higher is better)."""
        return -float(self.transform(X).min(1).mean())

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict[str, Any]:
        return {"net": {k: v.detach().cpu() for k, v in self._net.state_dict().items()}}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        sd = extra["net"]
        net = self._build_net(sd["prototypes"].float(), list(self.transforms_))
        net.load_state_dict(sd)
        self._net = net.eval()


class DTIKMeans(_DTIBase):
    """DTI K-means: ``min sum_i min_k ||x_i - T_{f_k(x_i)}(c_k)||^2`` over prototypes and heads.

    Parameters
    ----------
    n_components : number of clusters K.
    transforms : modules applied in this order, from ``"colour"``, ``"affine"``, ``"projective"``,
        ``"tps"``, ``"morpho"``; ``"identity"`` (or ``()``) gives plain mini-batch K-means.
    curriculum : start iteration of each module; default equal stages over ``max_iter``.
    init : ``"kmeans++"`` (samples chosen by D^2 seeding), ``"random"`` (random samples) or prototypes.
    max_iter : Adam steps (one mini-batch each); ``None`` -> ``max(500, n_epochs * ceil(N / batch_size))``.
    n_epochs, batch_size, lr : data passes when ``max_iter`` is None, mini-batch size, Adam step size.
    n_init : training runs from different initialisations; the lowest full-data loss is kept.
    encoder_width, feature_dim, head_hidden : CNN width (multiple of 8), feature size, head hidden size.
    tps_grid, morpho_kernel : TPS control grid side, morphological window side (odd).
    empty_threshold, reassign_every, reassign_noise : a cluster with fewer than
        ``empty_threshold / K`` of the assignments over the last ``reassign_every`` iterations
        (default one epoch) becomes a copy of the largest plus noise of this std.
    chunk_size : images per chunk in predict.
    device, dtype, random_state, verbose, callbacks : see :class:`~bayesclust.inference.engine.Engine`.

    Attributes
    ----------
    prototypes_ (K, H, W) or (K, C, H, W), labels_, history_ (batch loss per iteration), n_iter_,
    n_reassigned_, transforms_, curriculum_, image_shape_, n_features_in_, loss_ (full-data loss of
    the kept run: mean per-pixel squared error of the best cluster; for DTIGMM the negative mean
    log-likelihood per image), init_losses_ (that loss for every run).
    """

    def predict(self, X: Any) -> np.ndarray:
        """Cluster with the smallest reconstruction error, (N,)."""
        return self._per_cluster(self._check_predict(X), "cost").argmin(1).cpu().numpy()


class DTIGMM(_DTIBase):
    """DTI Gaussian mixture: ``p(x) = sum_k pi_k N(x | T_k(c_k), T_k(diag sigma_k^2))``.

    Same parameters as :class:`DTIKMeans`, plus ``sigma_min`` (floor of the per-pixel standard
    deviations, which keeps the likelihood bounded on constant background pixels) and ``sigma_init``.
    The spatial modules warp the variance image with the same grid as the prototype; the colour
    module scales it by the squared gain. The loss is the exact negative log-likelihood from
    ``TraceEnum_ELBO`` on :func:`dti_gmm_model` (assignments enumerated), per pixel.

    Attributes
    ----------
    As :class:`DTIKMeans`, plus ``sigmas_`` (per-pixel standard deviations) and ``weights_`` (K,).
    """

    _gmm = True

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior assignment probabilities, (N, K)."""
        lp = self._per_cluster(self._check_predict(X), "logp")
        return torch.softmax(lp, 1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        return self._per_cluster(self._check_predict(X), "logp").argmax(1).cpu().numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        """``log p(x_i)`` under the fitted mixture, (N,)."""
        lp = self._per_cluster(self._check_predict(X), "logp")
        return torch.logsumexp(lp, 1).cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per image."""
        return float(self.score_samples(X).mean())
