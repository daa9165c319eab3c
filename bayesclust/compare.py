"""``bc.compare``: fit several estimators (generative and discriminative, any mix) on the same data.

Each estimator is cloned once per seed with ``random_state`` set, fitted, timed and scored; the
:class:`Comparison` holds one row per (model, seed), mean +- std over seeds, the pairwise agreement
(ARI) between models' labellings, and writes Markdown, HTML, JSON and figures.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import adjusted_rand_index, evaluate

__all__ = ["SHORT_NAMES", "Comparison", "clone_with_seed", "compare", "make_estimator"]


def _short_names() -> dict[str, Callable[[int], Any]]:
    import bayesclust as bc

    return {
        "gmm": lambda k: bc.GaussianMixture(k, covariance_type="full"),
        "gmm-diag": lambda k: bc.GaussianMixture(k, covariance_type="diag"),
        "gmm-svi": lambda k: bc.GaussianMixture(k, inference="svi", svi_guide="meanfield", max_iter=300),
        "gmm-nuts": lambda k: bc.GaussianMixture(k, inference="nuts", num_samples=200, warmup_steps=200),
        "dpgmm": lambda k: bc.DPGMM(max_iter=100),
        "dpgmm-vi": lambda k: bc.DPGMM(inference="vi"),
        "entropy": lambda k: bc.EntropyClustering(k, head="mlp", loss="mi", max_iter=30),
        "entropy-linear": lambda k: bc.EntropyClustering(k, head="linear", loss="mi", max_iter=30),
        "entropy-embeddings": lambda k: bc.EntropyClustering(k),
        "dti-kmeans": lambda k: bc.DTIKMeans(k, transforms=("affine",), n_epochs=5),
        "dti-gmm": lambda k: bc.DTIGMM(k, transforms=("affine",), n_epochs=5),
        "clot": lambda k: bc.ContrastiveClustering(k, "clot"),
        "swav": lambda k: bc.ContrastiveClustering(k, "swav"),
    }


SHORT_NAMES = (
    "gmm",
    "gmm-diag",
    "gmm-svi",
    "gmm-nuts",
    "dpgmm",
    "dpgmm-vi",
    "entropy",
    "entropy-linear",
    "entropy-embeddings",
    "dti-kmeans",
    "dti-gmm",
    "clot",
    "swav",
)


def make_estimator(name: str, n_components: int = 3) -> Any:
    """A default estimator from a short name (one of ``SHORT_NAMES``) with ``n_components`` clusters."""
    table = _short_names()
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown model {name!r}; choose one of {list(SHORT_NAMES)} or pass an estimator.")
    return table[name](int(n_components))


def clone_with_seed(estimator: Any, seed: int) -> Any:
    """An unfitted copy of ``estimator`` with ``random_state=seed`` (when it has that parameter)."""
    if not hasattr(estimator, "get_params"):
        raise TypeError(
            f"estimators must be bayesclust / scikit-learn estimators or short names, "
            f"got {type(estimator).__name__}."
        )
    if hasattr(estimator, "_clone_unfitted"):
        est = estimator._clone_unfitted()
    else:  # a scikit-learn estimator
        from sklearn.base import clone

        est = clone(estimator)
    if "random_state" in est.get_params(deep=False):
        est.set_params(random_state=int(seed))
    return est


class _PeakMemory:
    """Peak resident-set growth (MiB) while the block runs: polls /proc/self/statm, else tracemalloc."""

    def __enter__(self) -> _PeakMemory:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._proc = Path("/proc/self/statm").exists()
        if self._proc:
            import os

            self._page = os.sysconf("SC_PAGE_SIZE") / 2**20
            self._base = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        else:  # pragma: no cover - non-Linux
            import tracemalloc

            tracemalloc.start()
        return self

    def _rss(self) -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self._page

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, self._rss() - self._base)

    def __exit__(self, *exc: Any) -> None:
        if self._proc:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss() - self._base, 0.0)
        else:  # pragma: no cover
            import tracemalloc

            self.peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()


def _input_for(est: Any, X: np.ndarray, name: str) -> np.ndarray:
    """Images (N, H, W) for the estimators that take only images (DTI, contrastive: their
    ``_images_only`` tag), (N, D) rows for every other estimator."""
    if getattr(est, "_images_only", False):
        if X.ndim < 3:
            raise ValueError(f"{name} needs images (N, H, W) or (N, C, H, W); X has shape {X.shape}.")
        return X
    return X.reshape(X.shape[0], -1)


def _score_kind(est: Any) -> str:
    if hasattr(est, "score_samples"):
        return "mean log-likelihood"
    if type(est).__name__ in ("EntropyClustering", "ContrastiveClustering"):
        return "mutual information"
    return "score"


def _fit_one(name: str, est: Any, X: np.ndarray, y: np.ndarray | None, seed: int) -> tuple[dict, Any]:
    Xi = _input_for(est, X, name)
    with _PeakMemory() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(Xi)
        fit_time = time.perf_counter() - t0
    labels = np.asarray(est.labels_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = float(est.score(Xi))
    row: dict[str, Any] = {"model": name, "seed": int(seed)}
    if y is not None:
        row.update({k: float(v) for k, v in evaluate(y, labels).items() if k != "k"})
    row.update(
        {
            "k": int(np.unique(labels).size),
            "score": score,
            "score_kind": _score_kind(est),
            "fit_time_s": float(fit_time),
            "peak_mem_mb": float(mem.peak_mb),
            "n_iter": int(getattr(est, "n_iter_", 0)),
            "converged": bool(getattr(est, "converged_", True)),
        }
    )
    return row, labels


METRICS = ("acc", "nmi", "ari", "k", "score", "fit_time_s", "peak_mem_mb")


@dataclass
class Comparison:
    """Result of :func:`compare`.

    Row keys: model, seed, acc/nmi/ari (with labels), k (clusters used), score and score_kind (mean
    log-likelihood for mixtures, mutual information for entropy heads), fit_time_s, peak_mem_mb (growth
    of resident memory during the fit; the first fit in a process also counts lazy imports), n_iter,
    converged.

    Attributes: ``rows`` (one dict per model x seed), ``names`` (model names in order), ``seeds``,
    ``labels`` ({name: (S, N) labels per seed}), ``models`` ({name: [fitted estimator per seed]}),
    ``agreement`` (M, M) mean ARI between models' labellings over seeds, ``X`` and ``y``.
    """

    rows: list[dict[str, Any]]
    names: list[str]
    seeds: list[int]
    labels: dict[str, np.ndarray]
    models: dict[str, list[Any]]
    agreement: np.ndarray
    X: np.ndarray = field(repr=False)
    y: np.ndarray | None = field(default=None, repr=False)

    @property
    def columns(self) -> list[str]:
        """The metric columns present (acc/nmi/ari only when labels were given)."""
        return [c for c in METRICS if c in self.rows[0]]

    def summary(self) -> list[dict[str, Any]]:
        """Per model: ``{"model", "<metric>_mean", "<metric>_std", ...}`` over seeds."""
        out = []
        for name in self.names:
            rs = [r for r in self.rows if r["model"] == name]
            d: dict[str, Any] = {"model": name, "score_kind": rs[0]["score_kind"], "n_seeds": len(rs)}
            for c in self.columns:
                vals = np.array([r[c] for r in rs], dtype=np.float64)
                d[f"{c}_mean"], d[f"{c}_std"] = float(vals.mean()), float(vals.std())
            out.append(d)
        return out

    def best(self, metric: str = "ari") -> str:
        """Name of the model with the highest mean ``metric``."""
        if metric not in self.columns:
            raise ValueError(f"metric {metric!r} not in this comparison; choose one of {self.columns}.")
        return max(self.summary(), key=lambda d: d[f"{metric}_mean"])["model"]

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and formatted rows (mean +- std over seeds) of the summary table."""
        header = ["model", *self.columns]
        body = []
        for d in self.summary():
            cells = [d["model"]]
            for c in self.columns:
                m, s = d[f"{c}_mean"], d[f"{c}_std"]
                fmt = "{:.2f}" if c in ("k", "fit_time_s", "peak_mem_mb") else "{:.3f}"
                cells.append(fmt.format(m) + (" ± " + fmt.format(s) if len(self.seeds) > 1 else ""))
            body.append(cells)
        return header, body

    def to_markdown(self) -> str:
        """The summary table and the agreement matrix as GitHub Markdown."""
        header, body = self.table()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        lines += [
            "",
            "Pairwise agreement (ARI between labellings):",
            "",
            "| | " + " | ".join(self.names) + " |",
            "|" + "---|" * (len(self.names) + 1),
        ]
        lines += [
            "| " + a + " | " + " | ".join(f"{v:.3f}" for v in row) + " |"
            for a, row in zip(self.names, self.agreement)
        ]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """The summary and agreement tables as an HTML fragment (Jinja2 template ``table.html.j2``)."""
        from .report import render_template

        header, body = self.table()
        return render_template(
            "table.html.j2",
            header=header,
            body=body,
            names=self.names,
            agreement=[[f"{v:.3f}" for v in r] for r in self.agreement],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: rows, summary, agreement, names, seeds."""
        return {
            "names": self.names,
            "seeds": self.seeds,
            "rows": self.rows,
            "summary": self.summary(),
            "agreement": self.agreement.tolist(),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The :meth:`to_dict` as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def figures(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """Write the comparison's PNG figures to ``out_dir``; returns their paths."""
        from .plotting import comparison_figures

        return comparison_figures(self, Path(out_dir), prefix=prefix)


def _check_inputs(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"X must be a numeric array ({exc}).") from exc
    if X.ndim < 2 or X.shape[0] < 2:
        raise ValueError(f"X must be (N, D) or images (N, H, W) with N >= 2, got shape {X.shape}.")
    if not np.all(np.isfinite(X)):
        raise ValueError(
            f"X contains {int((~np.isfinite(X)).sum())} NaN or infinite value(s); "
            "remove or impute them first."
        )
    if y is not None:
        from ._validation import check_labels

        y = check_labels(y, name="y", n_samples=X.shape[0])
    return X, y


def _named(estimators: Any, names: Sequence[str] | None, k: int) -> list[tuple[str, Any]]:
    if isinstance(estimators, str) or hasattr(estimators, "fit"):
        estimators = [estimators]
    if isinstance(estimators, Mapping):
        names, estimators = list(estimators), list(estimators.values())
    estimators = list(estimators)
    if not estimators:
        raise ValueError("estimators is empty; pass at least one estimator or short name.")
    ests = [make_estimator(e, k) if isinstance(e, str) else e for e in estimators]
    if names is None:
        names = [e if isinstance(e, str) else type(e).__name__ for e in estimators]
    names = list(names)
    if len(names) != len(ests):
        raise ValueError(f"names has {len(names)} entries but there are {len(ests)} estimators.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"model names must be unique, got duplicates {dup}; pass names=[...].")
    for n, e in zip(names, ests):
        if not hasattr(e, "fit") or not hasattr(e, "get_params"):
            raise TypeError(f"model {n!r} is a {type(e).__name__}, not an estimator or short name.")
    return list(zip(names, ests))


def compare(
    estimators: Any,
    X: Any,
    y: Any = None,
    *,
    seeds: Sequence[int] = (0,),
    names: Sequence[str] | None = None,
    n_components: int | None = None,
    progress: bool = False,
) -> Comparison:
    """Fit every estimator once per seed on the same X (N, D) or images (N, H, W) and compare them.

    Parameters
    ----------
    estimators : configured estimators, short names (``SHORT_NAMES``: "gmm", "dpgmm", "entropy", "clot",
        "dti-kmeans", ...), a mix, or a dict name -> estimator.
    y : optional true labels (N,): adds ACC (Hungarian matching), NMI and ARI.
    seeds : each estimator is cloned with ``random_state=seed`` for every seed.
    names : display names (default: the short name or the class name).
    n_components : K for the short names (default: number of classes in y, else 3).
    progress : show a tqdm progress bar over the fits.
    """
    X, y = _check_inputs(X, y)
    seeds = [int(s) for s in (seeds if isinstance(seeds, Sequence) else [seeds])]
    if not seeds:
        raise ValueError("seeds is empty; pass at least one seed, e.g. seeds=(0,).")
    k = int(n_components) if n_components is not None else (int(np.unique(y).size) if y is not None else 3)
    named = _named(estimators, names, k)
    from tqdm.auto import tqdm

    rows, labels, models = [], {n: [] for n, _ in named}, {n: [] for n, _ in named}
    with tqdm(total=len(named) * len(seeds), disable=not progress, desc="fitting", unit="fit") as bar:
        for name, est in named:
            for seed in seeds:
                bar.set_postfix_str(f"{name} seed {seed}")
                fitted = clone_with_seed(est, seed)
                row, lab = _fit_one(name, fitted, X, y, seed)
                rows.append(row)
                labels[name].append(lab)
                models[name].append(fitted)
                bar.update()
    names_ = [n for n, _ in named]
    agree = np.array(
        [
            [
                np.mean([adjusted_rand_index(labels[a][s], labels[b][s]) for s in range(len(seeds))])
                for b in names_
            ]
            for a in names_
        ]
    )
    return Comparison(rows, names_, seeds, {n: np.stack(v) for n, v in labels.items()}, models, agree, X, y)
