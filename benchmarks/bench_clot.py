"""CLOT and SwAV (``ContrastiveClustering``) on MNIST and USPS images beside pixel K-means and the MI + VAT
recipe, with the learned embedding clustered by DPGMM and an ablation (issue 19). Every fit of a run
has the same time budget.

Rows per data set and seed: ``kmeans`` (scikit-learn on pixels, n_init=10), ``mi-vat`` (the IMSAT-style
``EntropyClustering`` recipe of benchmarks/RESULTS.md on flattened pixels), ``clot`` and ``swav``
(``ContrastiveClustering`` with a small CNN: ``--width`` 16 channels in its first convolution, for the
2-core CPU), ``clot+dpgmm`` / ``swav+dpgmm`` (``DPGMM`` with its defaults on ``transform_embedding``:
K inferred), and with ``--methods ablation`` CLOT without the
contrastive term, without OT (argmax pseudo-labels) and SwAV without multi-crop. Each fit is
stopped after ``--budget-min`` minutes (an engine callback); ACC (Hungarian), NMI, ARI, K, time.

The CLOT paper reports its figures on CIFAR-10/100, ImageNet-10 and STL-10 with a ResNet backbone on
GPUs; those data and that compute are not available here, and those figures are not reproduced.

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_clot.py --data usps --seeds 0,10,20
    .venv/bin/python benchmarks/bench_clot.py --data usps --seeds 0 --methods ablation
    .venv/bin/python benchmarks/bench_clot.py --data usps-test --seeds 0 --epochs 2 --methods clot  # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bayesclust as bc  # noqa: E402
from bayesclust.datasets import load_mnist, load_usps  # noqa: E402
from bayesclust.metrics import evaluate  # noqa: E402

SHARED = Path(os.environ.get("BAYESCLUST_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA = {
    "mnist": lambda: load_mnist("all", path=SHARED / "mnist"),
    "usps": lambda: _usps("all"),
    "usps-test": lambda: _usps("test"),
}


def _usps(split: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_usps(split, path=SHARED / "usps" / "usps.h5")
    return X.reshape(-1, 16, 16), y


def _budget(minutes: float):
    start = time.perf_counter()
    return lambda *args: time.perf_counter() - start > 60 * minutes  # True stops the engine


ABLATION = ("clot-no-contrastive", "clot-no-ot", "swav-no-multicrop")


def methods(epochs: int, budget: float, width: int) -> dict:
    small = dict(max_iter=epochs, batch_size=256, embedding_dim=64, projection_dim=32, hidden=128,
                 width=width)

    def make(method: str, **kw):
        return lambda s: bc.ContrastiveClustering(10, method, random_state=s, callbacks=[_budget(budget)],
                                                  **small, **kw)

    return {
        "clot": make("clot"), "swav": make("swav"),
        "clot-no-contrastive": make("clot", contrastive_weight=0.0),
        "clot-no-ot": make("clot", pseudo_labels="argmax"),
        "swav-no-multicrop": make("swav", n_local_views=0),
    }


def mi_vat(seed: int, budget: float):
    """The IMSAT-style recipe of RESULTS.md (MNIST-70k 98.5% in 20 CPU minutes), on flat pixels."""
    return bc.EntropyClustering(10, head="mlp", hidden=1200, loss="collision", lam=4, warmup=12,
                                learning_rate=2e-3, weight_decay=0, batch_size=250, aug_weight=10,
                                augmentation="vat", vat_eps=0.25, vat_knn=10, max_iter=45,
                                preprocess="unit_range", random_state=seed, callbacks=[_budget(budget)])


def row(
    data: str, name: str, seed: int, y: np.ndarray, labels: np.ndarray, secs: float, extra: str = ""
) -> None:
    s = evaluate(y, labels)
    print(f"{data:10s} {name:22s} seed={seed:<3d} ACC={s['acc']:.4f} NMI={s['nmi']:.4f} ARI={s['ari']:.4f} "
          f"k={s['k']:3d} time={secs:7.1f}s {extra}", flush=True)


def run(data: str, seeds: list[int], a: argparse.Namespace) -> None:
    from sklearn.cluster import KMeans

    X, y = DATA[data]()
    X = X.reshape(len(X), *X.shape[-2:]) if X.ndim == 2 else X
    flat = X.reshape(len(X), -1)
    print(f"# {data}: images {X.shape}", flush=True)
    table = methods(a.epochs, a.budget_min, a.width)
    wanted = [m for m in a.methods if m != "ablation"] + (list(ABLATION) if "ablation" in a.methods else [])
    for seed in seeds:
        if "kmeans" in a.methods:
            t = time.perf_counter()
            labels = KMeans(10, n_init=10, random_state=seed).fit_predict(flat)
            row(data, "kmeans-pixels", seed, y, labels, time.perf_counter() - t)
        if "mi-vat" in a.methods:
            t = time.perf_counter()
            labels = mi_vat(seed, a.budget_min).fit(flat).labels_
            row(data, "mi-vat", seed, y, labels, time.perf_counter() - t)
        for name in [m for m in table if m in wanted]:
            t = time.perf_counter()
            est = table[name](seed).fit(X)
            secs = time.perf_counter() - t
            row(data, name, seed, y, est.labels_, secs, f"epochs={est.n_iter_}")
            if name in ("clot", "swav"):
                t = time.perf_counter()
                dp = bc.DPGMM(random_state=seed).fit(est.transform_embedding(X))
                row(data, f"{name}+dpgmm", seed, y, dp.labels_, time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="usps,mnist", help="comma-separated: " + ", ".join(DATA))
    ap.add_argument("--seeds", default="0,10,20")
    ap.add_argument("--methods", default="kmeans,mi-vat,clot,swav",
                    help=f"comma-separated: kmeans, mi-vat, clot, swav, ablation ({', '.join(ABLATION)})")
    ap.add_argument("--width", type=int, default=16, help="channels of the CNN's first convolution")
    ap.add_argument("--epochs", type=int, default=100, help="epochs per fit (the budget may stop earlier)")
    ap.add_argument("--budget-min", type=float, default=30.0, help="minutes per fit at most")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    a.methods = a.methods.split(",")
    if not SHARED.exists():
        print(f"skipped: {SHARED} (the shared data) is not here")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    print(f"# bench_clot {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC | {platform.machine()} | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"# command: python {' '.join(sys.argv)}")
    for data in a.data.split(","):
        run(data, [int(s) for s in a.seeds.split(",")], a)


if __name__ == "__main__":
    main()
