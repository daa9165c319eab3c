"""Every estimator with its defaults only, beside scikit-learn's K-means on the same input (issue 18).

Each estimator gets ``n_components=K`` (the number of classes; DPGMM infers K) and ``random_state``,
nothing else. K-means is ``sklearn.cluster.KMeans(K, n_init=10, random_state=seed)`` on the same
input (images flattened), in the same run. Metrics from ``bayesclust.metrics.evaluate`` (ACC is the
Hungarian one-to-one accuracy); every fit is timed.

Feature sets (``--only``):
    mnist-umap      DeepDPM AE+UMAP 10-d features of MNIST 70k (``load_embeddings("mnist")``)
    usps-umap       the same for USPS 9,298
    mnist-pca50     MNIST 70k pixels projected on the top 50 principal axes (PCA fitted on the 70k)
    usps-pixels     USPS 9,298 raw pixels, 256-d
    mnist-rp128     MNIST 70k pixels through a fixed Gaussian random projection to 128-d, L2-normalised
    usps-test-images  USPS-test 2,007 images 16 x 16 (DTIKMeans only)

Estimators (``--estimators``): gmm, dpgmm, entropy-linear (``EntropyClustering(K, head="linear")``),
entropy (``EntropyClustering(K)``), dti (``DTIKMeans(K)``, images only).

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_defaults.py --estimators dti
    .venv/bin/python benchmarks/bench_defaults.py --only usps-umap --estimators entropy --seeds 0
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bayesclust as bc  # noqa: E402
from bayesclust.datasets import load_embeddings, load_mnist, load_usps  # noqa: E402
from bayesclust.metrics import evaluate  # noqa: E402

SHARED = Path(os.environ.get("BAYESCLUST_SHARED_DATA", ROOT.parent / "shared" / "data"))
PROJECTION_SEED = 20261202  # the fixed random projection of "mnist-rp128"


# ------------------------------------------------------------------------------------ feature sets


def _mnist_pixels() -> tuple[np.ndarray, np.ndarray]:
    """MNIST train + test, (70000, 784) float32 in [0, 1], labels (70000,)."""
    return load_mnist("all", path=SHARED / "mnist", flatten=True)


def pca(X: np.ndarray, d: int) -> np.ndarray:
    """X (N, D) centred and projected on its top ``d`` principal axes (SVD of the D x D scatter)."""
    Xc = torch.as_tensor(X, dtype=torch.float64)
    Xc = Xc - Xc.mean(0)
    _, _, vh = torch.linalg.svd(Xc.T @ Xc)
    return (Xc @ vh[:d].T).float().numpy()


def random_projection(X: np.ndarray, d: int, seed: int = PROJECTION_SEED) -> np.ndarray:
    """X (N, D) times a fixed Gaussian (D, d) matrix, rows L2-normalised: (N, d) float32."""
    g = np.random.default_rng(seed).standard_normal((X.shape[1], d)) / np.sqrt(d)
    Z = X.astype(np.float64) @ g
    return (Z / np.linalg.norm(Z, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def _mnist_pca50() -> tuple[np.ndarray, np.ndarray]:
    X, y = _mnist_pixels()
    return pca(X, 50), y


def _mnist_rp128() -> tuple[np.ndarray, np.ndarray]:
    X, y = _mnist_pixels()
    return random_projection(X, 128), y


def _usps_test_images() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_usps("test", path=SHARED / "usps" / "usps.h5")
    return X.reshape(-1, 16, 16), y


FEATURES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "mnist-umap": lambda: load_embeddings("mnist", path=SHARED),
    "usps-umap": lambda: load_embeddings("usps", path=SHARED),
    "mnist-pca50": _mnist_pca50,
    "usps-pixels": lambda: load_usps("all", path=SHARED / "usps" / "usps.h5"),
    "mnist-rp128": _mnist_rp128,
    "usps-test-images": _usps_test_images,
}
IMAGES = {"usps-test-images"}

# ------------------------------------------------------------------------------------ estimators

ESTIMATORS: dict[str, Callable[[int, int], object]] = {
    "gmm": lambda k, seed: bc.GaussianMixture(k, random_state=seed),
    "dpgmm": lambda k, seed: bc.DPGMM(random_state=seed),
    "entropy-linear": lambda k, seed: bc.EntropyClustering(k, head="linear", random_state=seed),
    "entropy": lambda k, seed: bc.EntropyClustering(k, random_state=seed),
    "dti": lambda k, seed: bc.DTIKMeans(k, random_state=seed),
}


def applies(estimator: str, feature_set: str) -> bool:
    """DTIKMeans runs on the image set only, every other estimator on the feature matrices only."""
    return (estimator == "dti") == (feature_set in IMAGES)


@dataclass
class Row:
    features: str
    estimator: str
    seed: int
    scores: dict
    seconds: float
    kmeans_acc: float
    extra: str = ""


def timed_fit(make: Callable[[], object], X: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Fit; returns the training labels (N,), the wall time of the fit and what the defaults chose
    (iterations, and for several runs each run's loss)."""
    t = time.perf_counter()
    model = make()
    labels = model.fit(X).labels_
    secs = time.perf_counter() - t
    info = [f"iters={model.n_iter_}"] if hasattr(model, "n_iter_") else []
    if getattr(model, "init_losses_", None):
        info.append("run_losses=[" + ", ".join(f"{v:.5f}" for v in model.init_losses_) + "]")
    return np.asarray(labels), secs, " ".join(info)


def kmeans_row(name: str, X: np.ndarray, y: np.ndarray, k: int, seed: int) -> Row:
    from sklearn.cluster import KMeans

    flat = X.reshape(len(X), -1)
    labels, secs, _ = timed_fit(lambda: KMeans(k, n_init=10, random_state=seed), flat)
    scores = evaluate(y, labels)
    return Row(name, "kmeans", seed, scores, secs, scores["acc"])


def line(r: Row) -> str:
    s = r.scores
    ratio = s["acc"] / r.kmeans_acc if r.kmeans_acc > 0 else float("nan")
    return (f"{r.features:17s} {r.estimator:15s} seed={r.seed} ACC={s['acc']:.4f} NMI={s['nmi']:.4f} "
            f"ARI={s['ari']:.4f} k={int(s['k']):3d} time={r.seconds:8.1f}s kmeans_ACC={r.kmeans_acc:.4f} "
            f"ratio={ratio:.3f} {r.extra}".rstrip())


def run_feature_set(name: str, estimators: list[str], seeds: list[int]) -> list[Row]:
    """K-means then each estimator, per seed, on one feature set; prints each line as it comes."""
    X, y = FEATURES[name]()
    X = np.ascontiguousarray(X, dtype=np.float32)
    k = int(len(np.unique(y)))
    print(f"# {name}: X {X.shape}, K={k}", flush=True)
    rows = []
    for seed in seeds:
        km = kmeans_row(name, X, y, k, seed)
        rows.append(km)
        print(line(km), flush=True)
        for est in estimators:
            labels, secs, info = timed_fit(lambda est=est, seed=seed: ESTIMATORS[est](k, seed), X)
            rows.append(Row(name, est, seed, evaluate(y, labels), secs, km.kmeans_acc, info))
            print(line(rows[-1]), flush=True)
    return rows


def ms(vals: list[float], fmt: str = ".3f") -> str:
    return f"{np.mean(vals):{fmt}} +- {np.std(vals):{fmt}}"


def summary(rows: list[Row]) -> str:
    """Markdown table: mean +- std over seeds of ACC, NMI, time and the ratio to K-means ACC."""
    out = ["| features | estimator | seeds | ACC | NMI | ARI | time (s) | K-means ACC | ACC / K-means |",
           "|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r.features, r.estimator) for r in rows))
    for feat, est in keys:
        grp = [r for r in rows if (r.features, r.estimator) == (feat, est)]
        ratio = [r.scores["acc"] / r.kmeans_acc for r in grp]
        out.append(
            f"| {feat} | {est} | {len(grp)} | {ms([r.scores['acc'] for r in grp])} | "
            f"{ms([r.scores['nmi'] for r in grp])} | {ms([r.scores['ari'] for r in grp])} | "
            f"{ms([r.seconds for r in grp], '.1f')} | {ms([r.kmeans_acc for r in grp])} | {ms(ratio)} |"
        )
    return "\n".join(out)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(FEATURES), help="feature sets, comma-separated")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS), help="estimators, comma-separated")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    args = ap.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    args.estimators = [s for s in args.estimators.split(",") if s]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    for name, known, what in ((args.only, FEATURES, "--only"), (args.estimators, ESTIMATORS, "--estimators")):
        bad = sorted(set(name) - set(known))
        if bad:
            ap.error(f"{what}: unknown {bad}; choose from {list(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not SHARED.is_dir():
        print(f"skipped: the shared data directory {SHARED} is absent (set BAYESCLUST_SHARED_DATA).")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC {platform.node()} "
          f"{platform.machine()} torch {torch.__version__} threads={torch.get_num_threads()}")
    words = sys.argv[1:] if argv is None else argv
    print(f"# command: python benchmarks/bench_defaults.py {' '.join(words)}")
    rows: list[Row] = []
    for name in args.only:
        ests = [e for e in args.estimators if applies(e, name)]
        if ests:
            rows += run_feature_set(name, ests, args.seeds)
    print()
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
