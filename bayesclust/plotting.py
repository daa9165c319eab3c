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


# ------------------------------------------------------------------------------ comparison and uncertainty
def _grid(X: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (resolution**2, 2) grid over the 2-D data range (5% margin) and its two axes."""
    lo, hi = X.min(0), X.max(0)
    pad = 0.05 * (hi - lo + 1e-12)
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution)
    xx, yy = np.meshgrid(gx, gy)
    return np.column_stack([xx.ravel(), yy.ravel()]), gx, gy


def _check_2d(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"this figure needs 2-D data (N, 2), got shape {X.shape}.")
    return X


def plot_decision_regions(
    models: dict[str, Any], X: Any, *, resolution: int = 150, path: str | Path | None = None,
    title: str | None = "Decision regions", xlabel: str = "x1", ylabel: str = "x2",
) -> Any:
    """Side-by-side panels: each fitted model's predicted cluster over a grid, data X (N, 2) on top."""
    X = _check_2d(X)
    if not models:
        raise ValueError("models is empty; pass {name: fitted estimator}.")
    grid, gx, gy = _grid(X, resolution)
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        Z = np.asarray(m.predict(grid)).reshape(resolution, resolution)
        top = max(9, int(Z.max()))  # tab10: cluster i gets colour i in both layers
        ax.contourf(gx, gy, Z, levels=np.arange(Z.max() + 2) - 0.5, cmap="tab10", alpha=0.35,
                    vmin=0, vmax=top)
        ax.scatter(X[:, 0], X[:, 1], c=np.asarray(m.predict(X)), cmap="tab10", s=8, edgecolors="k",
                   linewidths=0.2, vmin=0, vmax=top)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


def plot_uncertainty_map(
    model: Any, X: Any, *, resolution: int = 150, path: str | Path | None = None,
    title: str | None = "Assignment entropy", xlabel: str = "x1", ylabel: str = "x2",
) -> Any:
    """Assignment entropy (nats) of a probabilistic model over a grid around X (N, 2), as colour."""
    from .uncertainty import assignment_entropy

    X = _check_2d(X)
    grid, gx, gy = _grid(X, resolution)
    H = assignment_entropy(model, grid).reshape(resolution, resolution)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    im = ax.pcolormesh(gx, gy, H, cmap="magma", shading="auto")
    ax.scatter(X[:, 0], X[:, 1], c=assignment_entropy(model, X), cmap="magma", s=10, edgecolors="w",
               linewidths=0.3, vmin=H.min(), vmax=H.max())
    fig.colorbar(im, ax=ax, label="entropy (nats)")
    ax.set_title(title or "")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _finish(fig, path)


def plot_k_trace(
    k_trace: Any, posterior_k: dict[int, float], *, burn_in: int = 0, path: str | Path | None = None,
    title: str | None = "Number of clusters K",
) -> Any:
    """Left: K after each sweep (burn-in shaded); right: posterior probability of each K."""
    k_trace = np.asarray(k_trace)
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [2.2, 1]})
    a.plot(np.arange(1, len(k_trace) + 1), k_trace, drawstyle="steps-post", color="C0")
    if burn_in:
        a.axvspan(0, burn_in, color="0.85", label="burn-in")
        a.legend(loc="upper right", fontsize=8)
    a.set_xlabel("sweep")
    a.set_ylabel("K")
    a.set_title("K over sweeps", fontsize=10)
    ks = sorted(posterior_k)
    b.bar([str(k) for k in ks], [posterior_k[k] for k in ks], color="C1")
    b.set_xlabel("K")
    b.set_ylabel("posterior probability")
    b.set_title("posterior over K", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


def plot_coclustering(
    C: Any, labels: Any, *, path: str | Path | None = None, title: str | None = "Posterior co-clustering",
) -> Any:
    """Heatmap of the similarity matrix C (N, N), rows and columns ordered by cluster label (N,)."""
    C = np.asarray(C, dtype=np.float64)
    labels = np.asarray(labels)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or labels.shape != (C.shape[0],):
        raise ValueError(f"C must be (N, N) and labels (N,), got {C.shape} and {labels.shape}.")
    order = np.argsort(labels, kind="stable")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(C[np.ix_(order, order)], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="P(same cluster)")
    ax.set_xlabel("point (ordered by cluster)")
    ax.set_ylabel("point (ordered by cluster)")
    ax.set_title(title or "")
    return _finish(fig, path)


def plot_reliability(
    cal: dict[str, Any], *, path: str | Path | None = None, title: str | None = "Reliability diagram",
) -> Any:
    """Accuracy vs confidence per bin (from :func:`bayesclust.uncertainty.calibration`), with the ECE."""
    edges, acc, conf = cal["bin_edges"], cal["accuracy"], cal["confidence"]
    centers = (edges[:-1] + edges[1:]) / 2
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ok = ~np.isnan(acc)
    ax.bar(centers[ok], acc[ok], width=np.diff(edges)[ok], edgecolor="k", color="C0", alpha=0.7,
           label="accuracy")
    ax.plot(conf[ok], acc[ok], "o", color="C3", ms=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max assignment probability)")
    ax.set_ylabel("accuracy after Hungarian matching")
    ax.set_title(f"{title or ''} (ECE = {cal['ece']:.3f})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return _finish(fig, path)


def plot_samples_per_cluster(
    images: Any, labels: Any, *, n_per_cluster: int = 8, path: str | Path | None = None,
    title: str | None = "Sample images per cluster",
) -> Any:
    """A row per cluster of up to ``n_per_cluster`` member images (N, H, W) or (N, C, H, W)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim not in (3, 4) or labels.shape != (images.shape[0],):
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W) with labels (N,), got {images.shape} "
                         f"and {labels.shape}.")
    clusters = np.unique(labels)
    plt = _plt()
    fig, axes = plt.subplots(len(clusters), n_per_cluster, squeeze=False,
                             figsize=(0.9 * n_per_cluster, 0.95 * len(clusters) + 0.4))
    for r, c in enumerate(clusters):
        members = np.flatnonzero(labels == c)[:n_per_cluster]
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < members.size:
                ax.imshow(_as_hwc(images[members[j]]), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(f"cluster {c}", fontsize=7)
    axes[-1, 0].set_xlabel("members", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def plot_agreement(
    names: list[str], agreement: Any, *, path: str | Path | None = None,
    title: str | None = "Agreement between models (ARI)",
) -> Any:
    """Heatmap of the (M, M) pairwise ARI between models' labellings."""
    A = np.asarray(agreement, dtype=np.float64)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 0.9 * len(names) + 1.8))
    im = ax.imshow(A, cmap="Greens", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(A):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel("model")
    ax.set_title(title or "", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _finish(fig, path)


def plot_metrics(
    summary: list[dict[str, Any]], metrics: list[str], *, path: str | Path | None = None,
    title: str | None = "Scores (mean ± std over seeds)",
) -> Any:
    """Grouped bars of each model's mean (error bar: std over seeds) for the given metrics."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 2.5, 3.6))
    width = 0.8 / max(1, len(summary))
    x = np.arange(len(metrics))
    for i, d in enumerate(summary):
        ax.bar(x + i * width, [d[f"{m}_mean"] for m in metrics], width, yerr=[d[f"{m}_std"] for m in metrics],
               label=d["model"], capsize=3)
    ax.set_xticks(x + width * (len(summary) - 1) / 2, [m.upper() for m in metrics])
    ax.set_xlabel("metric")
    ax.set_ylabel("value")
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, path)


def _save_close(fig: Any, path: Path, paths: list[Path]) -> None:
    _finish(fig, path)
    _plt().close(fig)
    paths.append(path)


def comparison_figures(comp: Any, out_dir: Path, prefix: str = "") -> list[Path]:
    """The PNGs of a :class:`~bayesclust.compare.Comparison` (first seed's models); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if comp.y is not None:
        fig = plot_metrics(comp.summary(), ["acc", "nmi", "ari"])
        _save_close(fig, out_dir / f"{prefix}metrics.png", paths)
    if len(comp.names) > 1:
        _save_close(plot_agreement(comp.names, comp.agreement), out_dir / f"{prefix}agreement.png", paths)
    if comp.X.ndim == 2 and comp.X.shape[1] == 2:
        models = {n: comp.models[n][0] for n in comp.names}
        _save_close(plot_decision_regions(models, comp.X), out_dir / f"{prefix}decision_regions.png", paths)
    if comp.y is not None:
        for n in comp.names:
            slug = "".join(ch if ch.isalnum() else "_" for ch in n)
            fig = plot_confusion(comp.y, comp.labels[n][0], title=f"Confusion matrix: {n}")
            _save_close(fig, out_dir / f"{prefix}confusion_{slug}.png", paths)
    return paths


def plot_trace_rank(
    idata: Any, var_name: str = "weights", *, max_rows: int = 4, path: str | Path | None = None,
    title: str | None = None,
) -> Any:
    """Trace (left) and rank histograms per chain (right) of ``idata.posterior[var_name]`` (chain, draw, ...).

    One row per scalar component (the first ``max_rows``); flat rank histograms mean the chains agree.
    """
    from scipy.stats import rankdata

    if var_name not in idata.posterior:
        raise ValueError(f"{var_name!r} is not in the posterior; it has {list(idata.posterior.data_vars)}.")
    vals = np.asarray(idata.posterior[var_name])
    C, S = vals.shape[:2]
    flat = vals.reshape(C, S, -1)[:, :, :max_rows]
    plt = _plt()
    fig, axes = plt.subplots(flat.shape[2], 2, figsize=(9, 1.9 * flat.shape[2] + 0.6), squeeze=False)
    for r in range(flat.shape[2]):
        ranks = rankdata(flat[:, :, r].ravel()).reshape(C, S)
        bins = np.linspace(0, C * S, 11)
        for c in range(C):
            axes[r, 0].plot(flat[c, :, r], lw=0.7, label=f"chain {c}")
            axes[r, 1].hist(ranks[c], bins=bins, histtype="step", lw=1.2)
        axes[r, 0].set_ylabel(f"{var_name}[{r}]")
        axes[r, 1].set_ylabel("count")
    axes[-1, 0].set_xlabel("draw")
    axes[-1, 1].set_xlabel("rank over all chains")
    axes[0, 0].set_title("trace", fontsize=10)
    axes[0, 1].set_title("rank histogram per chain", fontsize=10)
    if C > 1:
        axes[0, 0].legend(fontsize=7)
    fig.suptitle(title or f"Posterior diagnostics: {var_name}")
    fig.tight_layout()
    return _finish(fig, path)


def plot_ppc(
    idata: Any, *, max_features: int = 4, n_replicates: int = 50, bins: int = 40,
    path: str | Path | None = None, title: str | None = "Posterior predictive check",
    feature_names: list[str] | None = None,
) -> Any:
    """Observed vs replicated histograms per feature of :func:`bayesclust.uncertainty.posterior_predictive`.

    Thin lines: ``n_replicates`` replicated data sets; thick: the observed data and the replicated mean;
    each panel's title gives the posterior predictive p-values of the std and the upper tail quantile.
    """
    from .uncertainty import ppc_pvalues

    pv = ppc_pvalues(idata)["p_value"]
    obs = np.asarray(idata.observed_data["X"], dtype=np.float64)
    rep = np.asarray(idata.posterior_predictive["X"], dtype=np.float64).reshape(-1, *obs.shape)
    rep = rep[np.round(np.linspace(0, rep.shape[0] - 1, min(n_replicates, rep.shape[0]))).astype(int)]
    D = min(obs.shape[1], max_features)
    plt = _plt()
    fig, axes = plt.subplots(1, D, figsize=(4.2 * D, 3.6), squeeze=False)
    for f, ax in enumerate(axes[0]):
        lo, hi = np.quantile(rep[:, :, f], [0.001, 0.999])
        lo, hi = min(lo, obs[:, f].min()), max(hi, obs[:, f].max())
        edges = np.linspace(lo, hi, bins + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        dens = np.stack([np.histogram(r[:, f], edges, density=True)[0] for r in rep])
        ax.plot(centers, dens.T, color="C0", alpha=0.12, lw=0.7)
        ax.plot(centers, dens.mean(0), color="C0", lw=1.8, label="replicated (mean)")
        ax.stairs(np.histogram(obs[:, f], edges, density=True)[0], edges, color="k", lw=1.6, label="observed")
        name = feature_names[f] if feature_names else f"feature {f}"
        ax.set_title(f"{name}: p(std) = {pv['std'][f]:.2f}, p(tail) = {pv['upper_tail'][f]:.2f}", fontsize=9)
        ax.set_xlabel(name)
        ax.set_ylabel("density")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


def _pair_band(ax: Any, gx: np.ndarray, gy: np.ndarray, mask: np.ndarray, colour: str) -> None:
    """Shade the grid cells where ``mask`` (len(gy), len(gx)) holds."""
    if mask.any():
        ax.contourf(gx, gy, mask.astype(float), levels=[0.5, 1.5], colors=[colour], alpha=0.18)


def _zero_line(ax: Any, gx: np.ndarray, gy: np.ndarray, field: np.ndarray, colour: Any, **kw: Any) -> None:
    """Draw the zero level of ``field`` where it crosses zero inside the grid (no empty-contour warning)."""
    if np.any(field < 0) and np.any(field > 0):
        ax.contour(gx, gy, field, levels=[0.0], colors=[colour], **kw)


def plot_linear_margins(
    model: Any, X: Any, *, resolution: int = 300, path: str | Path | None = None,
    title: str | None = "Linear softmax clustering: boundaries and margins", xlabel: str = "x1",
    ylabel: str = "x2",
) -> Any:
    """The margin picture of a fitted ``EntropyClustering(head="linear")`` on 2-D data X (N, 2).

    Points coloured by cluster; for each pair of clusters the decision boundary (solid where the two
    clusters are the top two logits, dotted elsewhere), the margin band of points within the pair's
    margin (see :func:`bayesclust.uncertainty.linear_margins`), and the closest point circled.
    """
    from .uncertainty import _linear_layer, linear_margins

    X = _check_2d(X)
    lm = linear_margins(model, X)
    W, b = _linear_layer(model)
    grid, gx, gy = _grid(X, resolution)
    Z = grid @ W.T + b
    top2 = np.sort(np.argsort(-Z, axis=1)[:, :2], axis=1) if W.shape[0] > 1 else None
    top = max(9, W.shape[0] - 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    for p, (i, j) in enumerate(lm["pairs"]):
        field = (grid @ lm["normals"][p] + lm["offsets"][p]).reshape(resolution, resolution)
        active = ((top2[:, 0] == i) & (top2[:, 1] == j)).reshape(resolution, resolution)
        colour = plt.get_cmap("Dark2")(p % 8)  # pair colours, distinct from the clusters' tab10
        _zero_line(ax, gx, gy, field, colour, linestyles=":", linewidths=0.8)
        _zero_line(ax, gx, gy, np.where(active, field, np.nan), colour, linewidths=2)
        if np.isfinite(lm["margins"][p]):
            dist = np.abs(field) / max(np.linalg.norm(lm["normals"][p]), 1e-300)
            _pair_band(ax, gx, gy, active & (dist <= lm["margins"][p]), colour)
            c = lm["closest"][p]
            ax.scatter(*X[c], s=90, facecolors="none", edgecolors=[colour], linewidths=1.5)
    ax.scatter(X[:, 0], X[:, 1], c=lm["labels"], cmap="tab10", vmin=0, vmax=top, s=10, edgecolors="k",
               linewidths=0.2)
    ax.set_xlim(gx[0], gx[-1])
    ax.set_ylim(gy[0], gy[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if 0 < len(lm["pairs"]) <= 6:
        margins = "margins " + ", ".join(f"{i}|{j}: {m:.2g}" for (i, j), m in zip(lm["pairs"], lm["margins"]))
    else:
        margins = f"smallest margin {np.nanmin(lm['margins']):.2g}" if len(lm["pairs"]) else "one cluster"
    ax.set_title(f"{title or ''}\n{margins}", fontsize=9)
    return _finish(fig, path)
