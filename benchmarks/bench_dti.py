"""DTI K-means / DTI GMM against pixel K-means (scikit-learn) on MNIST-test and USPS.

Examples (run under ``flock /tmp/bayesclust_bench.lock`` on the shared machine)::

    python benchmarks/bench_dti.py --dataset mnist                      # full MNIST-test, default length
    python benchmarks/bench_dti.py --dataset mnist --n 3000 --epochs 8  # a reduced run
    python benchmarks/bench_dti.py --dataset usps
    python benchmarks/bench_dti.py --dataset usps --gmm-ablation --n 2000 --max-iter 600

Prints one line per method with ACC / NMI / ARI and the wall time, and writes the prototype figure.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayesclust.estimators.dti import DTIGMM, DTIKMeans  # noqa: E402
from bayesclust.metrics import evaluate  # noqa: E402

SHARED = Path(os.environ.get("BAYESCLUST_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        X = _read_idx(SHARED / "mnist/t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
        y = _read_idx(SHARED / "mnist/t10k-labels-idx1-ubyte.gz").astype(np.int64)
        return X, y
    import h5py

    with h5py.File(SHARED / "usps/usps.h5", "r") as f:
        X = np.concatenate([f["train/data"][:], f["test/data"][:]]).reshape(-1, 16, 16).astype(np.float32)
        y = np.concatenate([f["train/target"][:], f["test/target"][:]]).astype(np.int64)
    return X, y


def _line(method: str, data: str, n: int, scores: dict, seconds: float, extra: str = "") -> str:
    return (f"{data:6s} n={n:6d} {method:28s} ACC={scores['acc']:.4f} NMI={scores['nmi']:.4f} "
            f"ARI={scores['ari']:.4f} time={seconds:8.1f}s {extra}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["mnist", "usps"], default="mnist")
    ap.add_argument("--n", type=int, default=None, help="use the first n images (default all)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="passes over the data when --max-iter is not set (default: the estimator's "
                         "rule, clip(20 epochs, 3000, 10000) steps)")
    ap.add_argument("--max-iter", type=int, default=None, help="Adam steps (overrides --epochs)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=1e-3,
                    help="Adam step size (--lr is the old name)")
    ap.add_argument("--transforms", default="affine,morpho,tps")
    ap.add_argument("--encoder-width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-init", default="1", help="n_init of each fit ('auto': the estimator's rule)")
    ap.add_argument("--runs", type=int, default=1,
                    help="DTI K-means runs with seeds seed..seed+runs-1: prints each, the mean +- std and "
                         "the lowest-loss run (what n_init=runs keeps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gmm-ablation", action="store_true",
                    help="also fit DTI GMM with identity, +affine, +affine+morpho, +affine+morpho+tps")
    ap.add_argument("--skip-kmeans", action="store_true", help="skip DTI K-means (e.g. ablation only)")
    ap.add_argument("--figure", default=str(ROOT / "benchmarks/results/dti_prototypes.png"))
    return ap.parse_args(argv)


def _dti_kmeans_runs(args: argparse.Namespace, X: np.ndarray, y: np.ndarray, common: dict) -> DTIKMeans:
    """DTI K-means with seeds ``seed .. seed + runs - 1``; prints each run and, for several, the
    summary; returns the lowest-loss model."""
    names = tuple(t for t in args.transforms.split(",") if t)
    runs = []
    for r in range(args.runs):
        t0 = time.perf_counter()
        model = DTIKMeans(10, transforms=names, **{**common, "random_state": args.seed + r}).fit(X)
        secs = time.perf_counter() - t0
        scores = evaluate(y, model.labels_)
        runs.append((model.loss_, scores, secs, model))
        print(_line(f"DTI KMeans {'+'.join(names)}", args.dataset, len(X), scores, secs,
                    f"seed={args.seed + r} iters={model.n_iter_} curriculum={model.curriculum_} "
                    f"reassigned={model.n_reassigned_} loss={model.loss_:.5f}"), flush=True)
    best_loss, best_scores, _, best = min(runs, key=lambda r: r[0])
    if args.runs > 1:
        accs = np.array([r[1]["acc"] for r in runs])
        nmis = np.array([r[1]["nmi"] for r in runs])
        print(f"{args.dataset:6s} DTI KMeans over {args.runs} runs: "
              f"ACC {accs.mean():.4f} +- {accs.std():.4f} "
              f"(min {accs.min():.4f}, max {accs.max():.4f}), NMI {nmis.mean():.4f} +- {nmis.std():.4f}; "
              f"lowest-loss run ACC {best_scores['acc']:.4f} NMI {best_scores['nmi']:.4f} "
              f"(loss {best_loss:.5f}); total time {sum(r[2] for r in runs):.1f}s", flush=True)
    return best


def _figures(model: DTIKMeans, args: argparse.Namespace, X: np.ndarray, y: np.ndarray) -> None:
    from bayesclust.plotting import plot_confusion, plot_prototypes, plot_reconstructions

    fig_path = Path(args.figure)
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    plot_prototypes(model.prototypes_, path=fig_path,
                    title=f"DTI K-means prototypes, {args.dataset} n={len(X)}")
    plot_reconstructions(model, X[:6], path=fig_path.with_name(fig_path.stem + "_recon.png"))
    plot_confusion(y, model.labels_, path=fig_path.with_name(fig_path.stem + "_confusion.png"))
    print(f"# figures: {fig_path} (+ _recon, _confusion)")


def _gmm_ablation(args: argparse.Namespace, X: np.ndarray, y: np.ndarray, common: dict) -> None:
    for names in [(), ("affine",), ("affine", "morpho"), ("affine", "morpho", "tps")]:
        t0 = time.perf_counter()
        g = DTIGMM(10, transforms=names or "identity", **common).fit(X)
        secs = time.perf_counter() - t0
        label = "DTI GMM " + ("identity" if not names else "+".join(names))
        print(_line(label, args.dataset, len(X), evaluate(y, g.labels_), secs,
                    f"iters={g.n_iter_} mean_loglik={g.score(X):.1f}"), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    X, y = load(args.dataset)
    if args.n:
        X, y = X[: args.n], y[: args.n]
    n = len(X)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} {platform.node()} "
          f"{platform.processor() or platform.machine()} torch {torch.__version__} threads={args.threads}")
    print(f"# command: python benchmarks/bench_dti.py {' '.join(argv if argv is not None else sys.argv[1:])}")

    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    pix = KMeans(10, n_init=10, random_state=args.seed).fit_predict(X.reshape(n, -1))
    secs = time.perf_counter() - t0
    print(_line("pixel KMeans (sklearn)", args.dataset, n, evaluate(y, pix), secs), flush=True)

    common = dict(max_iter=args.max_iter, n_epochs=args.epochs, batch_size=args.batch_size,
                  learning_rate=args.learning_rate, encoder_width=args.encoder_width, device="cpu",
                  random_state=args.seed, n_init=args.n_init if args.n_init == "auto" else int(args.n_init))
    if not args.skip_kmeans:
        model = _dti_kmeans_runs(args, X, y, common)
        if args.figure:
            _figures(model, args, X, y)
    if args.gmm_ablation:
        _gmm_ablation(args, X, y, common)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
