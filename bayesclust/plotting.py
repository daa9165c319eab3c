"""Matplotlib figures (Agg backend): prototype grids, per-cluster reconstructions, confusion matrices.

Every function takes plain arrays (or a fitted model with ``reconstruct``), returns the
``matplotlib.figure.Figure`` and writes it to ``path`` when one is given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_hwc(img: np.ndarray) -> np.ndarray:
    """(H, W), (1, H, W) or (C, H, W) -> something ``imshow`` draws, clipped to [0, 1]."""
    img = np.asarray(img, dtype=float)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    return np.clip(img, 0.0, 1.0)


def _finish(fig: Any, path: str | Path | None) -> Any:
    if path is not None:
        fig.savefig(Path(path), dpi=120, bbox_inches="tight")
    return fig


def plot_prototypes(
    prototypes: Any, *, ncols: int | None = None, titles: list[str] | None = None,
    path: str | Path | None = None, title: str | None = None,
) -> Any:
    """Grid of K images, prototypes (K, H, W) or (K, C, H, W) with values in [0, 1]."""
    protos = np.asarray(prototypes)
    if protos.ndim not in (3, 4):
        raise ValueError(f"prototypes must have shape (K, H, W) or (K, C, H, W), got {protos.shape}.")
    k = protos.shape[0]
    ncols = ncols or min(k, 10)
    nrows = math.ceil(k / ncols)
    plt = _plt()
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.3 * nrows + (0.3 if title else 0)))
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < k:
            ax.imshow(_as_hwc(protos[i]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(titles[i] if titles else str(i), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def plot_reconstructions(
    model: Any, X: Any, *, n_images: int = 6, path: str | Path | None = None
) -> Any:
    """For ``n_images`` samples: the image, then its transformed prototype for every cluster.

    ``model`` needs ``reconstruct(X, "all")`` -> (N, K, C, H, W) and ``predict``; the assigned
    cluster's panel is framed in red.
    """
    Xs = np.asarray(X)[:n_images]
    rec = model.reconstruct(Xs, "all")
    labels = model.predict(Xs)
    n, k = rec.shape[:2]
    plt = _plt()
    fig, axes = plt.subplots(n, k + 1, figsize=(1.0 * (k + 1), 1.05 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(_as_hwc(Xs[i]), cmap="gray", vmin=0, vmax=1)
        for j in range(k):
            ax = axes[i, j + 1]
            ax.imshow(_as_hwc(rec[i, j]), cmap="gray", vmin=0, vmax=1)
            if j == labels[i]:
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=8)
    for j in range(k):
        axes[0, j + 1].set_title(str(j), fontsize=8)
    return _finish(fig, path)


def plot_confusion(
    y_true: Any, y_pred: Any, *, path: str | Path | None = None, title: str | None = None
) -> Any:
    """Counts of (true class, cluster), clusters reordered by the Hungarian matching."""
    from .metrics import contingency_matrix, hungarian_mapping

    cm = contingency_matrix(y_true, y_pred)  # (classes, clusters)
    mapping = hungarian_mapping(y_true, y_pred)  # cluster -> class
    order = sorted(range(cm.shape[1]), key=lambda c: mapping.get(c, cm.shape[0] + c))
    cm = cm[:, order]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.45 * cm.shape[1] + 2, 0.45 * cm.shape[0] + 1.5))
    im = ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7,
                color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(cm.shape[1]), [str(o) for o in order], fontsize=7)
    ax.set_yticks(range(cm.shape[0]), [str(i) for i in range(cm.shape[0])], fontsize=7)
    ax.set_xlabel("cluster (matched order)")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _finish(fig, path)
