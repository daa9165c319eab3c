"""``EntropyClustering``: softmax clustering trained with entropy losses or by self-labelling."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .. import losses as L
from .._device import make_generator, resolve_device, resolve_dtype, resolve_seed
from .._frame import InputMap
from .._validation import check_array, check_option, check_positive_int, check_scalar
from ..inference import discriminative as D
from ..inference import distributed, kmeans
from ..inference.engine import Engine
from ..inference.neighbors import kth_neighbor_distance, nearest_neighbors
from ..models.heads import build_head, nearest_centroid_init
from ._base import DEPRECATED, ClusterEstimator, ProbabilisticMixin, Run

__all__ = ["EntropyClustering"]



PREPROCESS = ("auto", "standard", "unit_range", "l2", "none")
AUGMENTATIONS = ("auto", "random", "vat", "vat+random", "neighbors")


@dataclass
class _FitData:
    """What every restart shares: inputs (N, ...) in the working frame, the training config, VAT
    radii (N,) or None, nearest-neighbour indices (N, k) or None."""

    x: torch.Tensor
    cfg: D.TrainConfig
    radius: torch.Tensor | None
    neighbors: torch.Tensor | None = None


class EntropyClustering(ProbabilisticMixin, ClusterEstimator):
    """Discriminative clustering with a softmax head ``sigma(f(x))``.

    Parameters
    ----------
    n_components : K, the number of clusters.
    head : ``"linear"``, ``"mlp"``, ``"cnn"`` (images) or any ``nn.Module`` mapping inputs to K logits.
    loss : a name of ``losses.CLUSTERING_LOSSES``. ``"mi"`` (Bridle: mean H(sigma) - lam H(mean sigma))
        and ``"renyi"`` (Renyi decisiveness of order ``renyi_order`` + lam * fairness) train by gradient
        descent. The self-labelling losses alternate a pseudo-label step on the whole data and a neural
        epoch: ``"collision"`` (EM soft labels, collision CE), ``"rce"`` (EM soft labels for reverse CE),
        ``"ce"`` (collision EM labels, standard CE), ``"sela"`` (Sinkhorn hard labels, power
        ``sela_lambda``); ``"swav"`` uses per-batch Sinkhorn codes of one augmented view as targets for
        the other.
    lam : fairness weight. renyi_order : Renyi order. aug_weight : weight of the self-augmentation KL;
        ``"auto"``: 1 with the neighbour view, 0 (no second view) otherwise.
    fairness : the fairness term that ``"mi"``, ``"renyi"`` and the warm-up train with:
        ``"entropy"`` (``-H(mean sigma)``; with ``lam=1`` the MI loss is ``-I(X; C)``), ``"kl_uniform"``
        (``KL(mean sigma || u)``, the same minimiser) or ``"kl_reverse"`` (the zero-avoiding
        ``KL(u || mean sigma)``: its gradient grows as ``1 / mean sigma_k``, so a cluster that is
        emptying is pushed back; it is the fairness the EM pseudo-label step already uses).
    augmentation : the second view for that KL: ``"random"`` (Gaussian noise; random affine + noise
        for images), ``"vat"`` (virtual adversarial direction of radius ``vat_eps``, IMSAT; the
        prediction on the clean input is its fixed target), ``"vat+random"`` (the sum of both KLs) or
        ``"neighbors"`` (one of the ``n_neighbors`` nearest rows, found once by exact search in the
        working frame, with SCAN's consistency ``-log <sigma(x), sigma(x')>`` instead of the KL).
        ``"auto"``: ``"neighbors"`` for feature vectors (N, D), ``"random"`` for images.
    preprocess : the map from X's units to the head's input, fitted on the training data and applied
        to every later input: ``"standard"`` (each feature centred, all divided by one scale, the root
        mean feature variance: Euclidean geometry kept), ``"unit_range"`` (the data's minimum and range
        onto [0, 1]; identity for pixels already there), ``"l2"`` (standard, then each row L2-normalised:
        cosine geometry, e.g. self-supervised embeddings) or ``"none"`` (X as given: answers then
        depend on X's units). ``"auto"``: ``"standard"`` for (N, D), ``"unit_range"`` for images.
        Computed in float64 before the cast to ``dtype``.
    init : ``"kmeans"``: the linear head starts as the nearest-centroid classifier of k-means++ /
        Lloyd on the mapped data (seeded per restart); ``"random"``: PyTorch's initialisation;
        ``"auto"``: for ``head="linear"`` on feature vectors the first restart starts from k-means and
        the others (``n_init > 1``) at random, so the restart kept by mutual information may leave the
        k-means partition; random otherwise.
    vat_knn : if set, the VAT radius of each x_i is ``vat_eps`` times the distance to its
        ``vat_knn``-th nearest neighbour (IMSAT: ``vat_eps=0.25, vat_knn=10``), computed once by
        exact search at the start of ``fit``; the radius then follows the local density of the data.
    em_iter : EM iterations per pseudo-label step (warm-started from the previous step's labels).
    label_predictions : the predictions a pseudo-label step solves on. ``"fresh"``: a forward pass
        over the data before the step (exact; one more forward pass per step); ``"epoch"``: the
        clean-view predictions kept from the last epoch's own mini-batches (each row as the network
        was when its batch was seen; no extra pass). A step with no complete epoch behind it
        (``warmup=0``) uses fresh predictions. ``"auto"`` (default): ``"epoch"`` from
        ``inference.discriminative.EPOCH_PREDICTIONS_FROM`` (100,000) rows on, ``"fresh"`` below
        (measured costs: ``benchmarks/RESULTS.md``).
    warmup : epochs trained on the MI loss (weight ``lam``) before the self-labelling losses start, so
        their first pseudo-labels come from an informative network rather than a random one.
    sela_lambda, swav_epsilon : solver parameters.
    n_init : independent restarts (seeds ``random_state + i``); the one with the highest mutual
        information of its predictions on the training data (:meth:`score`) is kept.
    init_epochs : if set, each restart first trains only ``init_epochs`` epochs; the restart with the
        highest mutual information at that point is the only one trained on to ``max_iter``.
        ``None``: every restart is trained to ``max_iter``.
    hidden : MLP width. normalize_prototypes : cosine (L2-normalised) prototypes in the last layer.
    learning_rate, weight_decay (the norm regulariser, Adam's L2 term). ``weight_decay="auto"``: 0 for
        a linear head on feature vectors (N, D), 1e-4 otherwise. Adam's L2 term is normalised with
        the loss gradient, which vanishes as the head grows confident; the decay then moves each
        parameter towards 0 at about the learning rate whatever its size, which shifts a linear
        head's boundaries away from where the clustering loss put them (a drift off its k-means start).
    batch_size, max_iter (epochs), tol,
    device, dtype, random_state, verbose, callbacks : see :class:`bayesclust.Engine`.
    n_clusters, lr, alpha : deprecated names of ``n_components``, ``learning_rate``, ``renyi_order``
        (a FutureWarning; they set the new parameter).

    Attributes
    ----------
    module_ : the trained head. labels_ : (N,) clusters of the training data. n_components_ : K.
    n_features_in_ (D, or C * H * W for images), input_shape_ (the trailing shape of X in fit),
    preprocess_, input_shift_, input_scale_ (the input map: ``(X - input_shift_) / input_scale_``),
    n_iter_ (epochs), converged_, history_ (mean batch loss per epoch).
    """

    _fitted_check = "module_"

    _renamed_params = {"n_clusters": "n_components", "lr": "learning_rate", "alpha": "renyi_order"}

    def __init__(
        self,
        n_components: int = 2,
        head: str | nn.Module = "linear",
        loss: str = "mi",
        *,
        lam: float = 1.0,
        fairness: str = "entropy",
        renyi_order: float = 2.0,
        aug_weight: float | str = "auto",
        augmentation: str = "auto",
        vat_eps: float = 1.0,
        vat_knn: int | None = None,
        n_neighbors: int = 10,
        preprocess: str = "auto",
        init: str = "auto",
        em_iter: int = 20,
        label_predictions: str = "auto",
        warmup: int = 0,
        sela_lambda: float = 25.0,
        swav_epsilon: float = 0.05,
        hidden: int = 256,
        normalize_prototypes: bool = False,
        n_init: int = 1,
        init_epochs: int | None = None,
        learning_rate: float = 1e-2,
        weight_decay: float | str = "auto",
        batch_size: int | None = 256,
        max_iter: int = 50,
        tol: float = 0.0,
        device: str = "cpu",
        dtype: str = "float32",
        random_state: int | None = None,
        verbose: bool = False,
        callbacks: Sequence[Callable[..., Any]] | None = None,
        n_clusters: Any = DEPRECATED,
        lr: Any = DEPRECATED,
        alpha: Any = DEPRECATED,
    ) -> None:
        self._set_init_params(locals())

    # ------------------------------------------------------------------ fit hooks
    def _check_params(self) -> None:
        check_positive_int(self.n_components, "n_components", minimum=2)
        check_option(self.loss, "loss", tuple(L.CLUSTERING_LOSSES))
        check_scalar(self.lam, "lam", low=0.0)
        check_scalar(self.renyi_order, "renyi_order", low=0.0, low_inclusive=False)
        if not (isinstance(self.aug_weight, str) and self.aug_weight == "auto"):
            check_scalar(self.aug_weight, "aug_weight", low=0.0)
        check_option(self.augmentation, "augmentation", AUGMENTATIONS)
        check_positive_int(self.n_neighbors, "n_neighbors")
        check_option(self.preprocess, "preprocess", PREPROCESS)
        check_option(self.init, "init", ("auto", "kmeans", "random"))
        if self.init == "kmeans" and (self.head != "linear" or self.normalize_prototypes):
            raise ValueError(
                "init='kmeans' sets a linear head to the k-means nearest-centroid classifier; it needs "
                f"head='linear' and normalize_prototypes=False (got head={self.head!r}, "
                f"normalize_prototypes={self.normalize_prototypes}). Use init='random' or 'auto'."
            )
        check_option(self.fairness, "fairness", L.FAIRNESS_KINDS)
        check_scalar(self.vat_eps, "vat_eps", low=0.0, low_inclusive=False)
        check_scalar(self.learning_rate, "learning_rate", low=0.0, low_inclusive=False)
        if not (isinstance(self.weight_decay, str) and self.weight_decay == "auto"):
            check_scalar(self.weight_decay, "weight_decay", low=0.0)
        check_positive_int(self.warmup, "warmup", minimum=0)
        check_positive_int(self.em_iter, "em_iter")
        check_option(self.label_predictions, "label_predictions", ("auto", "fresh", "epoch"))
        if self.vat_knn is not None:
            check_positive_int(self.vat_knn, "vat_knn")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.n_init, "n_init")
        check_positive_int(self.max_iter, "max_iter")
        if self.init_epochs is not None:
            check_positive_int(self.init_epochs, "init_epochs")
        check_scalar(self.sela_lambda, "sela_lambda", low=0.0, low_inclusive=False)
        check_scalar(self.swav_epsilon, "swav_epsilon", low=0.0, low_inclusive=False)

    def _train_config(self, features: bool) -> D.TrainConfig:
        weights = L.LossWeights(float(self.lam), float(self.renyi_order), self.fairness)
        augmentation = self.augmentation
        if augmentation == "auto":  # nearest neighbours for feature vectors, random affine views for images
            augmentation = "neighbors" if features else "random"
        aug_weight = self.aug_weight
        if isinstance(aug_weight, str):  # "auto": the neighbour consistency on, other views off
            aug_weight = 1.0 if augmentation == "neighbors" else 0.0
        return D.TrainConfig(
            loss=self.loss,
            weights=weights,
            aug_weight=float(aug_weight),
            augmentation=augmentation,
            vat_eps=float(self.vat_eps),
            em_iter=int(self.em_iter),
            label_predictions=self.label_predictions,
            warmup=int(self.warmup),
            sela_lambda=float(self.sela_lambda),
            swav_epsilon=float(self.swav_epsilon),
            batch_size=None if self.batch_size is None else int(self.batch_size),
        )

    def _prepare(self, X: Any, imap: InputMap | None = None) -> _FitData:
        """X validated and mapped by ``imap`` (default: the map of ``preprocess`` fitted on X)."""
        raw = check_array(X, ndim=(2, 3, 4), device=self.device, dtype="input",
                          min_samples=self.n_components)
        distributed.check_equal_shards(raw.shape[0])
        self.input_shape_ = tuple(int(v) for v in raw.shape[1:])  # (D,), (H, W) or (C, H, W)
        self.n_features_in_ = math.prod(self.input_shape_)
        features = raw.ndim == 2
        kind = self.preprocess if self.preprocess != "auto" else ("standard" if features else "unit_range")
        if imap is None:  # from every rank's rows in a distributed fit
            imap = distributed.global_input_map(kind, raw)
        self.preprocess_ = imap.kind
        self.input_shift_, self.input_scale_ = imap.frame.shift.numpy(), imap.frame.scale
        x = imap.apply(raw, resolve_dtype(self.dtype))
        x = x.unsqueeze(1) if x.ndim == 3 else x
        cfg = self._train_config(features)
        self._n_started = 0  # restarts started so far (init="auto": the first one from k-means)
        radius = neighbors = None
        if self.vat_knn is not None and "vat" in cfg.augmentation and cfg.aug_weight > 0:
            radius = cfg.vat_eps * kth_neighbor_distance(x, self.vat_knn)
        if cfg.augmentation == "neighbors" and cfg.aug_weight > 0:
            neighbors = nearest_neighbors(x, min(int(self.n_neighbors), x.shape[0] - 1))[1]
        return _FitData(x, cfg, radius, neighbors)

    @property
    def _input_map(self) -> InputMap:
        """The fit's input map (X as given for models saved without one)."""
        return InputMap.fitted(self)

    def _kmeans_init(self, module: torch.nn.Module, x: torch.Tensor, seed: int | None) -> None:
        """``init="kmeans"`` (or "auto": the first restart of a linear head on feature vectors): the
        head starts as the nearest-centroid classifier of k-means++ / Lloyd on the working-frame data,
        at the temperature of the clusters' mean squared distance per dimension."""
        first = getattr(self, "_n_started", 0) == 0
        self._n_started = getattr(self, "_n_started", 0) + 1
        use = self.init == "kmeans" or (
            self.init == "auto" and first and self.head == "linear" and not self.normalize_prototypes
            and x.ndim == 2)
        if not use:
            return
        gen = make_generator(seed, x.device)
        centers, t = kmeans.kmeans(x, int(self.n_components), gen)
        nearest_centroid_init(module, centers, max(t, 1e-12))
        distributed.broadcast_module(module)  # rank 0's k-means head on every rank


    def partial_fit(self, X: Any, y: Any = None) -> EntropyClustering:
        """One epoch of training on the batch X (n, ...), scikit-learn style: the first call builds
        the head and its optimiser (or continues from a previous ``fit``), later calls keep them
        and must have the same input shape. Self-labelling losses solve their pseudo-labels on the
        batch. Sets ``labels_`` (of this batch), ``n_iter_`` (epochs so far) and ``history_``.
        Returns ``self``."""
        online = getattr(self, "_online", None)
        if online is None:
            self._check_params()
            self._seed = resolve_seed(self.random_state)
            if hasattr(self, "module_"):
                self._check_X(X)
        else:
            self._check_X(X)
        # later batches (and batches after a fit) are mapped as the first one was
        data = self._prepare(X, self._input_map if hasattr(self, "module_") else None)
        if online is None:
            online = self._online_start(data)
        t = int(online.result.n_iter) if online.result is not None else 0
        engine = Engine(
            device=self.device, dtype=self.dtype, random_state=None if self._seed is None else self._seed + t,
            max_iter=t + 1, tol=0.0, maximize=False, keep_best=False, warn_not_converged=False,
            desc=f"EntropyClustering({self.loss}).partial_fit",
        )
        schedule = D.build_schedule(engine, data.x, int(self.n_components), data.cfg, data.radius,
                                    data.neighbors)
        online.result = engine.run(schedule, D.initial_state(online.module, online.opt), result=online.result)
        self._online = online
        self.module_ = online.module
        self.labels_ = D.predict_logits(online.module, data.x).argmax(1).cpu().numpy()
        self.n_components_ = int(self.n_components)
        self.n_iter_, self.converged_ = int(online.result.n_iter), False
        self.history_ = list(online.result.history)
        return self

    def _online_start(self, data: _FitData) -> SimpleNamespace:
        """The head (a previous fit's, else a new one) and its optimiser for :meth:`partial_fit`."""
        if hasattr(self, "module_"):
            module = self.module_
            opt = self._optimizer(module, data.x)
        else:
            state = self._start(data, self._seed).state
            module, opt = state["model"], state["optimizer"]
        return SimpleNamespace(module=module, opt=opt, result=None)

    def _screen_iter(self) -> int | None:
        return None if self.init_epochs is None else min(int(self.init_epochs), int(self.max_iter))

    def _start(self, data: _FitData, seed: int | None) -> Run:
        engine = Engine(
            device=self.device,
            dtype=self.dtype,
            random_state=seed,
            max_iter=self.max_iter,
            tol=self.tol,
            maximize=False,
            verbose=self.verbose,
            callbacks=self.callbacks,
            warn_not_converged=self.tol > 0,
            keep_best=("model", "optimizer"),  # not the (N, K) prediction / label buffers
            desc=f"EntropyClustering({self.loss})",
        )
        k = int(self.n_components)
        module = build_head(
            self.head, tuple(data.x.shape[1:]), k, hidden=self.hidden,
            normalize_prototypes=self.normalize_prototypes,
        ).to(engine.device, engine.dtype)
        self._kmeans_init(module, data.x, seed)
        opt = self._optimizer(module, data.x)
        schedule = D.build_schedule(engine, data.x, k, data.cfg, data.radius, data.neighbors)
        return Run(engine, schedule, D.initial_state(module, opt))

    def _optimizer(self, module: torch.nn.Module, x: torch.Tensor) -> torch.optim.Optimizer:
        """Adam on the head's parameters, with ``weight_decay`` ("auto": 0 for a linear head on rows,
        1e-4 otherwise)."""
        wd = self.weight_decay
        if isinstance(wd, str):
            wd = 0.0 if x.ndim == 2 and isinstance(self.head, str) and self.head == "linear" else 1e-4
        return torch.optim.Adam(module.parameters(), lr=self.learning_rate, weight_decay=float(wd))

    def _after_stage(self, run: Run) -> None:
        # free the (N, K) prediction buffer while other restarts run (refilled when needed)
        run.state["probs"] = None

    def _restart_score(self, data: _FitData, run: Run) -> float:
        # one forward pass per stage: the restart's mutual information, and its labels for _finish
        logits = D.predict_logits(run.state["model"], data.x)
        run.state["labels"] = logits.argmax(1)
        return D.mutual_information(logits)

    def _finish(self, data: _FitData, run: Run) -> None:
        self.module_ = run.state["model"]
        self.labels_ = run.state["labels"].cpu().numpy()
        self.n_components_ = int(self.n_components)

    # ------------------------------------------------------------------ predict
    def _check_X(self, X: Any) -> torch.Tensor:
        """X validated and mapped into the fit's working frame, (N, ...) (images (N, C, H, W))."""
        self._check_fitted()
        x = check_array(X, ndim=(2, 3, 4), device=self.device, dtype="input", n_features=self.input_shape_)
        x = self._input_map.apply(x, resolve_dtype(self.dtype))
        return x.unsqueeze(1) if x.ndim == 3 else x

    def _log_scores(self, X: Any) -> torch.Tensor:
        """(N, K) logits of the head on ``X`` (log probabilities up to a per-row constant)."""
        return D.predict_logits(self.module_, self._check_X(X))

    def score(self, X: Any, y: Any = None) -> float:
        """Mutual information of the predictions on X, ``-mi_loss`` (higher is better, any ``loss``)."""
        self._check_fitted()
        return D.mutual_information(self._log_scores(X))

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict[str, Any]:
        """The trained head's weights (state dict); :meth:`_load_extra_state` rebuilds the head."""
        return {"module": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()}}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Rebuild ``module_`` with ``build_head`` from the parameters (a user-given ``head`` is the
        module given to ``load``) and load the saved weights into it."""
        from .._persist import require_attributes, require_keys

        require_keys(extra, ("module",), "extra state")
        require_attributes(self, ("input_shape_",))
        shape = tuple(int(v) for v in self.input_shape_)
        module = build_head(
            self.head, (1, *shape) if len(shape) == 2 else shape, int(self.n_components),
            hidden=self.hidden, normalize_prototypes=self.normalize_prototypes,
        )
        module = module.to(resolve_device(self.device), resolve_dtype(self.dtype))
        module.load_state_dict(extra["module"])  # into the fit's dtype: no rounding on the way
        self.module_ = module.eval()
