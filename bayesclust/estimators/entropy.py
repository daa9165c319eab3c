"""``EntropyClustering``: softmax clustering trained with entropy losses or by self-labelling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import losses as L
from .._device import empty_buffer
from .._validation import check_array, check_is_fitted, check_option, check_positive_int, check_scalar
from ..inference.engine import Engine, Step
from ..inference.neighbors import kth_neighbor_distance
from ..inference.neural import epoch_step
from ..inference.selflabel import em_soft_labels, one_hot_into, sela_labels, swav_codes
from ..models.heads import augment, build_head, frozen_batchnorm_stats, vat_view
from ._base import BaseEstimator, ClusterMixin

__all__ = ["EntropyClustering"]

_LOSSES = ("mi", "renyi", "collision", "sela", "swav", "ce", "rce")
EPOCH_PREDICTIONS_FROM = 100_000  # label_predictions="auto": reuse the epoch's predictions from here


class EntropyClustering(ClusterMixin, BaseEstimator):
    """Discriminative clustering with a softmax head ``sigma(f(x))``.

    Parameters
    ----------
    n_clusters : K.
    head : ``"linear"``, ``"mlp"``, ``"cnn"`` (images) or any ``nn.Module`` mapping inputs to K logits.
    loss : ``"mi"`` (Bridle: mean H(sigma) - lam H(mean sigma)) and ``"renyi"`` (Renyi decisiveness of
        order ``alpha`` + lam * fairness) train by gradient descent. The self-labelling losses alternate
        a pseudo-label step on the whole data and a neural epoch: ``"collision"`` (EM soft labels,
        collision CE), ``"rce"`` (EM soft labels for reverse CE), ``"ce"`` (collision EM labels, standard
        CE), ``"sela"`` (Sinkhorn hard labels, power ``sela_lambda``); ``"swav"`` uses per-batch Sinkhorn
        codes of one augmented view as targets for the other.
    lam : fairness weight. alpha : Renyi order. aug_weight : weight of the self-augmentation KL.
    fairness : the fairness term that ``"mi"``, ``"renyi"`` and the warm-up train with:
        ``"entropy"`` (``-H(mean sigma)``; with ``lam=1`` the MI loss is ``-I(X; C)``), ``"kl_uniform"``
        (``KL(mean sigma || u)``, the same minimiser) or ``"kl_reverse"`` (the zero-avoiding
        ``KL(u || mean sigma)``: its gradient grows as ``1 / mean sigma_k``, so a cluster that is
        emptying is pushed back; it is the fairness the EM pseudo-label step already uses).
    augmentation : the second view for that KL: ``"random"`` (Gaussian noise; random affine + noise
        for images), ``"vat"`` (virtual adversarial direction of radius ``vat_eps``, IMSAT; the
        prediction on the clean input is its fixed target) or ``"vat+random"`` (the sum of both KLs).
    vat_knn : if set, the VAT radius of each x_i is ``vat_eps`` times the distance to its
        ``vat_knn``-th nearest neighbour (IMSAT: ``vat_eps=0.25, vat_knn=10``), computed once by
        exact search at the start of ``fit``; the radius then follows the local density of the data.
    em_iter : EM iterations per pseudo-label step (warm-started from the previous step's labels).
    label_predictions : the predictions a pseudo-label step solves on. ``"fresh"``: a forward pass
        over the data before the step (exact, costs a third of an epoch's compute); ``"epoch"``: the
        clean-view predictions kept from the last epoch's own mini-batches (each row as the network
        was when its batch was seen; no extra pass). A step with no complete epoch behind it
        (``warmup=0``) uses fresh predictions. ``"auto"`` (default): ``"epoch"`` from
        N = 100,000 rows on (at N = 1e6, K = 1e3 the fresh pass alone costs 24-29% of an epoch, the EM
        step alone under 10%: ``benchmarks/RESULTS.md``), ``"fresh"`` below.
    warmup : epochs trained on the MI loss (weight ``lam``) before the self-labelling losses start, so
        their first pseudo-labels come from an informative network rather than a random one.
    sela_lambda, swav_epsilon : solver parameters.
    n_init : independent restarts (seeds ``random_state + i``); the one with the highest mutual
        information of its predictions on the training data (:meth:`score`) is kept.
    init_epochs : if set, each restart first trains only ``init_epochs`` epochs; the restart with the
        highest mutual information at that point is the only one trained on to ``max_iter``
        (screening: many cheap starts for the cost of one full fit plus ``n_init * init_epochs``
        epochs). ``None``: every restart is trained to ``max_iter``.
    hidden : MLP width. normalize_prototypes : cosine (L2-normalised) prototypes in the last layer.
    lr, weight_decay (the norm regulariser), batch_size, max_iter (epochs), tol, device, dtype,
    random_state, verbose, callbacks : see :class:`bayesclust.Engine`.
    """

    def __init__(
        self,
        n_clusters: int = 2,
        head: str | nn.Module = "linear",
        loss: str = "mi",
        *,
        lam: float = 1.0,
        fairness: str = "entropy",
        alpha: float = 2.0,
        aug_weight: float = 0.0,
        augmentation: str = "random",
        vat_eps: float = 1.0,
        vat_knn: int | None = None,
        em_iter: int = 20,
        label_predictions: str = "auto",
        warmup: int = 0,
        sela_lambda: float = 25.0,
        swav_epsilon: float = 0.05,
        hidden: int = 256,
        normalize_prototypes: bool = False,
        n_init: int = 1,
        init_epochs: int | None = None,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int | None = 256,
        max_iter: int = 50,
        tol: float = 0.0,
        device: str = "cpu",
        dtype: str = "float32",
        random_state: int | None = None,
        verbose: bool = False,
        callbacks: Sequence[Callable[..., Any]] | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.head = head
        self.loss = loss
        self.lam = lam
        self.fairness = fairness
        self.alpha = alpha
        self.aug_weight = aug_weight
        self.augmentation = augmentation
        self.vat_eps = vat_eps
        self.vat_knn = vat_knn
        self.em_iter = em_iter
        self.label_predictions = label_predictions
        self.warmup = warmup
        self.sela_lambda = sela_lambda
        self.swav_epsilon = swav_epsilon
        self.hidden = hidden
        self.normalize_prototypes = normalize_prototypes
        self.n_init = n_init
        self.init_epochs = init_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    # ------------------------------------------------------------------ data
    def _check_X(self, X: Any, fitted: bool) -> torch.Tensor:
        kw = {"n_features": self.n_features_in_} if fitted else {"min_samples": self.n_clusters}
        x = check_array(X, ndim=(2, 3, 4), device=self.device, dtype=self.dtype, **kw)
        return x.unsqueeze(1) if x.ndim == 3 else x

    def _logits_all(
        self, x: torch.Tensor, module: nn.Module | None = None, chunk: int = 4096
    ) -> torch.Tensor:
        module = self.module_ if module is None else module
        module.eval()
        with torch.no_grad():
            return torch.cat([module(x[s]) for s in Engine.chunks(x.shape[0], chunk)])

    @staticmethod
    def _predictions_into(
        module: nn.Module, x: torch.Tensor, out: torch.Tensor, log: bool, chunk: int = 4096
    ) -> None:
        """Fill ``out`` (N, K) with softmax (``log``: log-softmax) predictions, chunk by chunk."""
        module.eval()
        with torch.no_grad():
            for s in Engine.chunks(x.shape[0], chunk):
                z = module(x[s])
                out[s] = z.log_softmax(1) if log else z.softmax(1)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> EntropyClustering:
        k = check_positive_int(self.n_clusters, "n_clusters", minimum=2)
        check_option(self.loss, "loss", _LOSSES)
        lam = check_scalar(self.lam, "lam", low=0.0)
        alpha = check_scalar(self.alpha, "alpha", low=0.0, low_inclusive=False)
        aug_w = check_scalar(self.aug_weight, "aug_weight", low=0.0)
        check_option(self.augmentation, "augmentation", ("random", "vat", "vat+random"))
        check_option(self.fairness, "fairness", L.FAIRNESS_KINDS)
        check_scalar(self.vat_eps, "vat_eps", low=0.0, low_inclusive=False)
        check_scalar(self.lr, "lr", low=0.0, low_inclusive=False)
        check_scalar(self.weight_decay, "weight_decay", low=0.0)
        check_positive_int(self.warmup, "warmup", minimum=0)
        check_positive_int(self.em_iter, "em_iter")
        check_option(self.label_predictions, "label_predictions", ("auto", "fresh", "epoch"))
        if self.vat_knn is not None:
            check_positive_int(self.vat_knn, "vat_knn")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        n_init = check_positive_int(self.n_init, "n_init")
        max_iter = check_positive_int(self.max_iter, "max_iter")
        screen = max_iter  # epochs each restart trains before the restarts are compared
        if self.init_epochs is not None:
            screen = min(check_positive_int(self.init_epochs, "init_epochs"), max_iter)
        raw = check_array(X, ndim=(2, 3, 4), device=self.device, dtype=self.dtype, min_samples=k)
        self.n_features_in_ = tuple(raw.shape[1:]) if raw.ndim > 2 else int(raw.shape[1])
        x = raw.unsqueeze(1) if raw.ndim == 3 else raw
        radius = None
        if self.vat_knn is not None and "vat" in self.augmentation and aug_w > 0:
            radius = float(self.vat_eps) * kth_neighbor_distance(x, self.vat_knn)
        best = None
        for i in range(n_init):
            seed = None if self.random_state is None else self.random_state + i
            engine, schedule, state = self._start(x, k, lam, alpha, aug_w, seed, radius, max_iter)
            result = engine.run(schedule, state, stop_at=screen)
            state["probs"] = None  # free the (N, K) buffer while other restarts run (refilled later)
            logits = self._logits_all(x, state["model"])  # one pass: the restart's MI and labels
            mi = self._mutual_information(logits)
            if best is None or mi > best[0]:
                best = (mi, engine, schedule, state, result, logits.argmax(1))
        _, engine, schedule, state, result, labels = best
        self.module_ = state["model"]
        if result.n_iter < max_iter and not (result.converged or result.stopped or result.interrupted):
            result = engine.run(schedule, state, result=result)  # the screened winner, to max_iter
            labels = self._logits_all(x).argmax(1)
        self.history_ = list(result.history)
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.labels_ = labels.cpu().numpy()
        return self

    @staticmethod
    def _mutual_information(logits: torch.Tensor) -> float:
        return -float(L.mi_loss(logits.double()))

    def _start(
        self, x: torch.Tensor, k: int, lam: float, alpha: float, aug_w: float, seed, radius, max_iter: int
    ) -> tuple[Engine, list[Step], dict[str, Any]]:
        """One restart's engine, schedule and state (module, optimiser, pseudo-labels)."""
        engine = Engine(
            device=self.device,
            dtype=self.dtype,
            random_state=seed,
            max_iter=max_iter,
            tol=self.tol,
            maximize=False,
            verbose=self.verbose,
            callbacks=self.callbacks,
            warn_not_converged=self.tol > 0,
            keep_best=("model", "optimizer"),  # not the (N, K) prediction / label buffers
            desc=f"EntropyClustering({self.loss})",
        )
        self._engine_dtype = engine.dtype
        module = build_head(
            self.head,
            tuple(x.shape[1:]),
            k,
            hidden=self.hidden,
            normalize_prototypes=self.normalize_prototypes,
        ).to(engine.device, engine.dtype)
        opt = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        state: dict[str, Any] = {"model": module, "optimizer": opt, "y": None, "probs_ready": False}
        gen = engine.generator
        use_vat, use_random = "vat" in self.augmentation, "random" in self.augmentation
        n = x.shape[0]
        self_labelling = self.loss in ("collision", "rce", "ce", "sela")
        mode = self.label_predictions
        if mode == "auto":
            mode = "epoch" if n >= EPOCH_PREDICTIONS_FROM else "fresh"
        keep_epoch = self_labelling and mode == "epoch"
        # one (N, K) buffer of predictions for the pseudo-label steps, allocated when first needed
        # and kept; fit() drops it after a restart's first stage (a new buffer is never "ready")
        state["probs"] = None

        def probs_buffer(st: dict[str, Any]) -> torch.Tensor:
            if st["probs"] is None:
                st["probs"] = empty_buffer(n, k, engine.dtype, engine.device)
                st["probs_ready"] = False
            return st["probs"]

        def aug_term(z: torch.Tensor, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            out = z.new_zeros(())
            if aug_w == 0.0:
                return out
            if use_vat:
                eps = self.vat_eps if radius is None else radius[idx]
                view = vat_view(module, xb, z, eps, generator=gen)
                with frozen_batchnorm_stats(module):  # running statistics from clean inputs only
                    za = module(view)
                out = out + L.self_augmentation_loss(z.detach(), za)
            if use_random:
                out = out + L.self_augmentation_loss(z, module(augment(xb, gen)))
            return aug_w * out

        def batch_loss(st: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
            xb = x[idx]
            if self.loss == "swav":
                z1, z2 = module(augment(xb, gen)), module(augment(xb, gen))
                q1 = swav_codes(z1, self.swav_epsilon)
                q2 = swav_codes(z2, self.swav_epsilon)
                return 0.5 * (L.cross_entropy(z2, q1) + L.cross_entropy(z1, q2))
            z = module(xb)
            if keep_epoch:  # this epoch's clean-view predictions, for the next pseudo-label step
                with torch.no_grad():
                    zd = z.detach()
                    st["probs"][idx] = zd.log_softmax(1) if self.loss == "sela" else zd.softmax(1)
            if self.loss == "mi" or (self.loss != "renyi" and st["y"] is None):  # MI (or its warm-up)
                base = L.mi_loss(z, lam, 1.0, self.fairness)
            elif self.loss == "renyi":
                base = L.mi_loss(z, lam, alpha, self.fairness)
            else:
                yb = st["y"][idx]
                if self.loss == "collision":
                    base = L.collision_cross_entropy(z, yb)
                elif self.loss == "rce":
                    base = L.reverse_cross_entropy(z, yb)
                else:  # "ce", "sela"
                    base = L.cross_entropy(z, yb)
            return base + aug_term(z, xb, idx)

        def label_step(st: dict[str, Any], iteration: int) -> None:
            probs = probs_buffer(st)
            if not st["probs_ready"]:  # fresh predictions (or no complete epoch kept yet)
                self._predictions_into(module, x, probs, log=self.loss == "sela")
            if self.loss == "sela":
                # kernel Sinkhorn on log sigma, warm-started from the last column potential
                labels, res = sela_labels(
                    probs, self.sela_lambda, tol=1e-3, overwrite=False, init_log_v=st.get("log_v")
                )
                st["log_v"] = res.log_v
                if st["y"] is None:
                    st["y"] = empty_buffer(n, k, probs.dtype, probs.device)
                one_hot_into(st["y"], labels)
            else:
                kind = "reverse" if self.loss == "rce" else "collision"
                st["y"] = em_soft_labels(
                    probs, lam, loss=kind, max_iter=self.em_iter, init=st["y"], out=st["y"]
                ).y
            return None

        schedule = []
        if self_labelling:
            schedule.append(Step("pseudo_labels", label_step, start=int(self.warmup)))
        epoch = epoch_step(engine, n, self.batch_size, batch_loss)

        def neural(st: dict[str, Any], iteration: int) -> float:
            if keep_epoch:
                probs_buffer(st)
            out = epoch(st, iteration)
            st["probs_ready"] = keep_epoch  # every row of the buffer was written by this epoch
            return out

        schedule.append(Step("neural", neural))
        return engine, schedule, state

    # ------------------------------------------------------------------ predict
    def predict_proba(self, X: Any) -> np.ndarray:
        """(N, K) cluster probabilities ``sigma(f(x))``."""
        check_is_fitted(self, ["module_"])
        return self._logits_all(self._check_X(X, fitted=True)).softmax(1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def score(self, X: Any, y: Any = None) -> float:
        """Mutual information of the predictions on X, ``-mi_loss`` (higher is better, any ``loss``)."""
        check_is_fitted(self, ["module_"])
        return self._mutual_information(self._logits_all(self._check_X(X, fitted=True)))
