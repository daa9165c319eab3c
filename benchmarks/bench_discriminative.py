"""Discriminative clustering benchmark: EntropyClustering losses vs K-means on real data.

Examples::

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_discriminative.py \
        --data mnist --split test --head linear --losses mi --seeds 0 --epochs 30
    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_discriminative.py \
        --pseudo-label-timing 100000 1000

Prints ACC/NMI/ARI mean +- std over seeds, each with its K-means baseline in the same run.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bayesclust.datasets import load_mnist, load_usps
from bayesclust.metrics import evaluate
from bayesclust.models.entropy import EntropyClustering

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        return load_mnist(split, path=DATA / "mnist", flatten=True)
    return load_usps(split, path=DATA / "usps" / "usps.h5")


def kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=1, random_state=seed).fit_predict(X)


def pseudo_label_timing(n: int, k: int, d: int = 256) -> None:
    """Time one EM pseudo-label step and one SeLa step against one training epoch of a linear head."""
    from bayesclust.inference.selflabel import em_soft_labels, sela_labels

    torch.manual_seed(0)
    X = torch.randn(n, d)
    model = torch.nn.Linear(d, k)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    y = torch.randint(0, k, (n,))
    t = time.perf_counter()
    for s in range(0, n, 256):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[s : s + 256]), y[s : s + 256]).backward()
        opt.step()
    epoch = time.perf_counter() - t
    with torch.no_grad():
        logits = torch.cat([model(X[s : s + 65536]) for s in range(0, n, 65536)])
    probs = logits.softmax(1)
    t = time.perf_counter()
    em = em_soft_labels(probs, 1.0, max_iter=5, tol=0.0)
    t_em = time.perf_counter() - t
    t = time.perf_counter()
    _, sk = sela_labels(logits.log_softmax(1), lam=25.0, max_iter=5, tol=0.0)
    t_sela = time.perf_counter() - t
    print(
        f"N={n} K={k} D={d}: one linear-head epoch (batch 256) {epoch:.2f} s; "
        f"EM soft labels, {em.n_iter} iterations {t_em:.2f} s ({t_em / epoch:.1%} of the epoch); "
        f"SeLa Sinkhorn, {sk.n_iter} iterations {t_sela:.2f} s ({t_sela / epoch:.1%})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="mnist", choices=["mnist", "usps"])
    ap.add_argument("--split", default="test", choices=["test", "train", "all"])
    ap.add_argument("--n", type=int, default=None, help="use the first n samples")
    ap.add_argument("--head", default="linear", choices=["linear", "mlp", "cnn"])
    ap.add_argument("--losses", default="mi", help="comma list of mi,renyi,collision,sela,swav,ce,rce")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--aug-weight", type=float, default=0.0)
    ap.add_argument("--pseudo-label-timing", nargs=2, type=int, metavar=("N", "K"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {platform.processor() or platform.machine()}"
        f" | torch {torch.__version__} threads {torch.get_num_threads()}"
    )
    if a.pseudo_label_timing:
        pseudo_label_timing(*a.pseudo_label_timing)
        return
    X, y = load(a.data, a.split)
    if a.n:
        X, y = X[: a.n], y[: a.n]
    Ximg = X.reshape(len(X), 28, 28) if a.data == "mnist" else X.reshape(len(X), 16, 16)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        t = time.perf_counter()
        rows.setdefault("kmeans", []).append(
            {**evaluate(y, kmeans(X, 10, seed)), "s": time.perf_counter() - t}
        )
        for loss in a.losses.split(","):
            t = time.perf_counter()
            m = EntropyClustering(
                10,
                head=a.head,
                loss=loss,
                max_iter=a.epochs,
                lr=a.lr,
                batch_size=a.batch_size,
                aug_weight=a.aug_weight,
                random_state=seed,
            )
            pred = m.fit_predict(Ximg if a.head == "cnn" else X)
            rows.setdefault(loss, []).append({**evaluate(y, pred), "s": time.perf_counter() - t})
    print(f"data={a.data}/{a.split} n={len(X)} head={a.head} epochs={a.epochs} seeds={seeds}")
    print("| method | ACC | NMI | ARI | seconds/run |\n|---|---|---|---|---|")
    for name, rs in rows.items():
        f = lambda key, rs=rs: f"{np.mean([r[key] for r in rs]):.3f} +- {np.std([r[key] for r in rs]):.3f}"  # noqa: E731
        print(f"| {name} | {f('acc')} | {f('nmi')} | {f('ari')} | {np.mean([r['s'] for r in rs]):.1f} |")


if __name__ == "__main__":
    main()
