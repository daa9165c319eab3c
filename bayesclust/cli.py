"""Command line: ``bayesclust demo`` fits the models on embedded data, prints a table, writes figures."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np


def demo(out: Path, seed: int = 0) -> None:
    """Old Faithful with GaussianMixture (EM) and DPGMM; MNIST-test (PCA-50) with both, ACC/NMI/ARI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import bayesclust as bc

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    X, _ = bc.datasets.load_faithful()
    t0 = time.perf_counter()
    gmm = bc.GaussianMixture(2, random_state=seed, dtype="float64").fit(X)
    rows.append(("faithful", "GaussianMixture(em, K=2)", time.perf_counter() - t0, None, 2))
    t0 = time.perf_counter()
    dp = bc.DPGMM(random_state=seed).fit(X)
    rows.append(("faithful", "DPGMM(splitmerge)", time.perf_counter() - t0, None, dp.n_components_))

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for a, model, title in ((ax[0], gmm, "GaussianMixture EM"), (ax[1], dp, "DPGMM split/merge")):
        a.scatter(X[:, 0], X[:, 1], c=model.predict(X), s=8, cmap="tab10")
        a.set_title(title)
        a.set_xlabel("eruption (min)")
        a.set_ylabel("waiting (min)")
    fig.tight_layout()
    fig.savefig(out / "faithful.png", dpi=110)
    plt.close(fig)

    images, labels = bc.datasets.load_mnist("test", flatten=True)
    Xc = images - images.mean(0)
    _, _, vt = np.linalg.svd(Xc[::5], full_matrices=False)
    Z = Xc @ vt[:50].T
    for name, model in (
        ("GaussianMixture(em, diag, K=10)",
         bc.GaussianMixture(10, covariance_type="diag", random_state=seed)),
        ("GaussianMixture(em, full, K=10)", bc.GaussianMixture(10, random_state=seed)),
    ):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = model.fit_predict(Z)
        rows.append(("mnist-test pca50", name, time.perf_counter() - t0, bc.metrics.evaluate(labels, pred),
                     int(len(np.unique(pred)))))

    print(f"{'data':18} {'model':34} {'time s':>7} {'ACC':>6} {'NMI':>6} {'ARI':>6} {'K':>3}")
    for data, name, dt, sc, k in rows:
        acc, nmi, ari = (f"{sc['acc']:.3f}", f"{sc['nmi']:.3f}", f"{sc['ari']:.3f}") if sc else ("-",) * 3
        print(f"{data:18} {name:34} {dt:7.2f} {acc:>6} {nmi:>6} {ari:>6} {k:>3}")
    print(f"figures written to {out}/")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bayesclust", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="fit the models on embedded data, print a table, write figures")
    p_demo.add_argument("--out", type=Path, default=Path("demo_output"))
    p_demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.out, args.seed)


if __name__ == "__main__":
    main()
