"""``ContrastiveClustering``: representation and clusters learned together (SwAV, CLOT) on images."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._device import resolve_device, resolve_dtype
from .._frame import InputMap
from .._validation import check_array, check_option, check_positive_int, check_scalar
from ..inference import contrastive as C
from ..inference import distributed
from ..inference.discriminative import mutual_information
from ..inference.engine import Engine
from ..models.contrastive import ContrastiveNet
from ..models.views import ViewSpec
from ._base import ClusterEstimator, ProbabilisticMixin, Run

__all__ = ["ContrastiveClustering"]


@dataclass
class _FitData:
    x: torch.Tensor  # (N, C, H, W) in [0, 1] (the images' minimum and range)
    cfg: C.ContrastiveConfig


class ContrastiveClustering(ProbabilisticMixin, ClusterEstimator):
    """Clusters and image features learned together: SwAV's swapped prediction or CLOT.

    Parameters
    ----------
    n_components : K, the number of clusters (prototypes).
    method : ``"swav"`` (per-batch Sinkhorn codes of the global views, every view predicts the
        others'; Caron et al. 2020) or ``"clot"`` (equal-partition OT labels of the whole data each
        epoch, cross-entropy on every view, plus NT-Xent between the two global views' projections).
    backbone : ``"cnn"`` (VGG-4-like, any image size >= 8 x 8) or an ``nn.Module`` mapping images
        to ``embedding_dim`` features. embedding_dim, projection_dim, hidden : network widths; width :
        channels of the CNN's first convolution (then 2, 4, 4 x; the cost grows as its square).
    n_local_views : small views per image (``None``: 4 for swav, 0 for clot); local_size (pixels;
        ``None``: 3/7 of the side, at least 8), global_scale, local_scale (area shares), flip,
        jitter : see :class:`bayesclust.models.views.ViewSpec`.
    temperature : of the prototype softmax. swav_epsilon, queue_length : SwAV's codes (a queue of
        earlier scores helps small batches). sela_lambda : CLOT's OT power lambda.
    contrastive_weight, contrastive_temperature : CLOT's NT-Xent term. pseudo_labels : CLOT's labels,
        ``"ot"`` (equal-partition Sinkhorn) or ``"argmax"`` (the network's own predictions: an ablation).
    learning_rate, weight_decay, batch_size, max_iter (epochs), tol, n_init (restarts kept by the
        mutual information of their predictions), device, dtype, random_state, verbose, callbacks.

    Attributes: ``module_`` (the network), ``labels_``, ``n_components_``, ``n_iter_``,
    ``converged_``, ``history_`` (mean batch loss per epoch), ``input_shape_``, ``n_features_in_``,
    ``input_shift_`` / ``input_scale_`` (the images' minimum and range). ``transform_embedding(X)``
    gives the learned features (N, embedding_dim), e.g. to cluster with ``DPGMM``.
    """

    _fitted_check = "module_"
    _images_only = True
    _non_deterministic = True

    def __init__(
        self,
        n_components: int = 10,
        method: str = "swav",
        *,
        backbone: str | nn.Module = "cnn",
        embedding_dim: int = 128,
        projection_dim: int = 64,
        hidden: int = 256,
        width: int = 32,
        n_local_views: int | None = None,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        flip: bool = False,
        jitter: float = 0.4,
        temperature: float = 0.1,
        swav_epsilon: float = 0.05,
        queue_length: int = 0,
        sela_lambda: float = 25.0,
        contrastive_weight: float = 1.0,
        contrastive_temperature: float = 0.5,
        pseudo_labels: str = "ot",
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-6,
        batch_size: int = 256,
        max_iter: int = 50,
        tol: float = 0.0,
        n_init: int = 1,
        device: str = "cpu",
        dtype: str = "float32",
        random_state: int | None = None,
        verbose: bool = False,
        callbacks: Sequence[Callable[..., Any]] | None = None,
    ) -> None:
        self._set_init_params(locals())

    # ------------------------------------------------------------------ fit hooks
    def _check_params(self) -> None:
        check_positive_int(self.n_components, "n_components", minimum=2)
        check_option(self.method, "method", C.METHODS)
        check_option(self.pseudo_labels, "pseudo_labels", ("ot", "argmax"))
        widths = ("embedding_dim", "projection_dim", "hidden", "width")
        for name in (*widths, "batch_size", "max_iter", "n_init"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.queue_length, "queue_length", minimum=0)
        if self.n_local_views is not None:
            check_positive_int(self.n_local_views, "n_local_views", minimum=0)
        positive = ("temperature", "swav_epsilon", "sela_lambda", "contrastive_temperature", "learning_rate")
        for name in positive:
            check_scalar(getattr(self, name), name, low=0.0, low_inclusive=False)
        for name in ("contrastive_weight", "weight_decay", "tol"):
            check_scalar(getattr(self, name), name, low=0.0)

    def _views(self, side: int) -> ViewSpec:
        n_local = self.n_local_views
        if n_local is None:  # SwAV's multi-crop; CLOT compares the two global views
            n_local = 4 if self.method == "swav" else 0
        local = self.local_size if self.local_size is not None else max(8, round(side * 3 / 7))
        return ViewSpec(n_global=2, global_scale=tuple(self.global_scale), n_local=int(n_local),
                        local_size=int(local), local_scale=tuple(self.local_scale), flip=bool(self.flip),
                        jitter=float(self.jitter))

    def _prepare(self, X: Any) -> _FitData:
        raw = check_array(X, ndim=(3, 4), device=self.device, dtype="input", min_samples=self.n_components)
        distributed.check_equal_shards(raw.shape[0])
        self.input_shape_ = tuple(int(v) for v in raw.shape[1:])
        self.n_features_in_ = math.prod(self.input_shape_)
        imap = distributed.global_input_map("unit_range", raw)
        self.input_shift_, self.input_scale_ = float(imap.frame.shift), float(imap.frame.scale)
        x = imap.apply(raw, resolve_dtype(self.dtype))
        x = x.unsqueeze(1) if x.ndim == 3 else x
        cfg = C.ContrastiveConfig(
            method=self.method, views=self._views(min(x.shape[-2:])), temperature=float(self.temperature),
            swav_epsilon=float(self.swav_epsilon), queue_length=int(self.queue_length),
            sela_lambda=float(self.sela_lambda), contrastive_weight=float(self.contrastive_weight),
            contrastive_temperature=float(self.contrastive_temperature), batch_size=int(self.batch_size),
            pseudo_labels=self.pseudo_labels,
        )
        return _FitData(x, cfg)

    def _build(self, shape: tuple[int, ...]) -> ContrastiveNet:
        return ContrastiveNet(self.backbone, shape, int(self.n_components), int(self.embedding_dim),
                              int(self.projection_dim), int(self.hidden), int(self.width))

    def _start(self, data: _FitData, seed: int | None) -> Run:
        engine = Engine(
            device=self.device, dtype=self.dtype, random_state=seed, max_iter=self.max_iter, tol=self.tol,
            maximize=False, verbose=self.verbose, callbacks=self.callbacks, warn_not_converged=self.tol > 0,
            keep_best=("model", "optimizer"), desc=f"ContrastiveClustering({self.method})",
        )
        net = self._build(tuple(data.x.shape[1:])).to(engine.device, engine.dtype)
        distributed.broadcast_module(net)
        opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        return Run(engine, C.build_schedule(engine, data.x, data.cfg), C.initial_state(net, opt))

    def _restart_score(self, data: _FitData, run: Run) -> float:
        logits = C.predict_scores(run.state["model"], data.x) / float(self.temperature)
        run.state["labels"] = logits.argmax(1)
        return mutual_information(logits)

    def _finish(self, data: _FitData, run: Run) -> None:
        self.module_ = run.state["model"].eval()
        self.labels_ = run.state["labels"].cpu().numpy()
        self.n_components_ = int(self.n_components)

    # ------------------------------------------------------------------ predict
    def _images(self, X: Any) -> torch.Tensor:
        self._check_fitted()
        x = check_array(X, ndim=(3, 4), device=self.device, dtype="input", n_features=self.input_shape_)
        x = InputMap.fitted(self, "unit_range").apply(x, resolve_dtype(self.dtype))
        return x.unsqueeze(1) if x.ndim == 3 else x

    def _log_scores(self, X: Any) -> torch.Tensor:
        """(N, K) logits: prototype cosines over the temperature."""
        return C.predict_scores(self.module_, self._images(X)) / float(self.temperature)

    def transform_embedding(self, X: Any) -> np.ndarray:
        """The learned backbone features of X, (N, embedding_dim) (float64 NumPy)."""
        return C.embed(self.module_, self._images(X)).double().cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mutual information of the predictions on X (higher is better)."""
        return mutual_information(self._log_scores(X))

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict[str, Any]:
        return {"module": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()}}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        from .._persist import require_attributes, require_keys

        require_keys(extra, ("module",), "extra state")
        require_attributes(self, ("input_shape_", "input_shift_", "input_scale_"))
        shape = tuple(int(v) for v in self.input_shape_)
        net = self._build((1, *shape) if len(shape) == 2 else shape)
        net = net.to(resolve_device(self.device), resolve_dtype(self.dtype))
        net.load_state_dict(extra["module"])
        self.module_ = net.eval()
