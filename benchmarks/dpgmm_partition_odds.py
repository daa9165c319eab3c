"""Does the DPGMM's posterior prefer the partition the issue-15 targets ask for? (diagnostic)

Fits DPGMM with its defaults (split/merge, seed 100: an exploration seed, not one of the benchmark's
0-4) on the MNIST-UMAP and USPS-UMAP embeddings, prints the clusters against the classes, and scores
edits of the fitted partition by the collapsed log joint ``log p(X, z) = log CRP(z | alpha) + sum_k log
p(X_k)`` (NIW marginal likelihood, Murphy 2007 eq. 266) under the fitted prior, with its scale psi0
multiplied by each ``--psi-scales`` factor, and with other mean precisions kappa0 (``--kappas``) and
degrees of freedom nu0 (``--nus``, as multiples of D; psi0 rescaled so that the prior's expected
covariance psi0 / (nu0 - D - 1) stays the same):

- MNIST: merge the two largest clusters of class 7 (the K = 10 answer the issue asks for);
- USPS: split a cluster that holds two classes by the label (one more cluster each: K 9, 10).

The labels only pick which clusters to edit; nothing is fitted to them. A positive "edit - fit" means
the model prefers the edited partition at that prior scale. Run::

    python benchmarks/dpgmm_partition_odds.py --psi-scales 0.03,0.1,0.3,1,3,10,30 --kappas 0.001,0.01,0.1,1 \
        --nus 1.2,2,5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dpgmm import DATA, load_npz  # noqa: E402

from bayesclust.estimators.dpgmm import DPGMM  # noqa: E402
from bayesclust.inference.splitmerge import log_crp  # noqa: E402
from bayesclust.models.priors import NIW  # noqa: E402


def log_joint(Xs: torch.Tensor, z: np.ndarray, prior: NIW, alpha: float) -> float:
    """Collapsed log p(X, z) of the standardised rows Xs (n, D) and labels z (n,)."""
    zt = torch.from_numpy(np.unique(z, return_inverse=True)[1])
    k = int(zt.max()) + 1
    n = torch.bincount(zt, minlength=k).double()
    sx = torch.zeros(k, Xs.shape[1], dtype=torch.float64).index_add_(0, zt, Xs)
    outer = Xs[:, :, None] * Xs[:, None, :]
    sxx = torch.zeros(k, Xs.shape[1], Xs.shape[1], dtype=torch.float64).index_add_(0, zt, outer)
    return float(log_crp(n, alpha) + prior.log_marginal_likelihood(n, sx, sxx).sum())


def table(z: np.ndarray, y: np.ndarray) -> None:
    """Cluster size and class counts per cluster."""
    counts = np.zeros((z.max() + 1, y.max() + 1), dtype=int)
    np.add.at(counts, (z, y), 1)
    print("| cluster | size | " + " | ".join(f"class {c}" for c in range(counts.shape[1])) + " |")
    print("|---" * (counts.shape[1] + 2) + "|")
    for k, row in enumerate(counts):
        print(f"| {k} | {row.sum()} | " + " | ".join(str(v) for v in row) + " |")


def edits(name: str, z: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The edited partitions for this data set (see the module docstring)."""
    out = {}
    if name == "mnist":
        a, b = np.argsort(np.bincount(z[y == 7], minlength=z.max() + 1))[::-1][:2]
        merged = z.copy()
        merged[merged == b] = a
        out[f"merge clusters {a} and {b} (class 7)"] = merged
        return out
    for c1, c2 in ((4, 9), (3, 5)):
        k = np.bincount(z[y == c1]).argmax()
        if k != np.bincount(z[y == c2]).argmax():
            continue
        split = z.copy()
        split[(z == k) & (y == c2)] = z.max() + 1
        out[f"split cluster {k} by class {c1} / {c2}"] = split
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--psi-scales", default="0.03,0.1,0.3,1,3,10,30")
    p.add_argument("--kappas", default="", help="other kappa0 values (default prior's row always shown)")
    p.add_argument("--nus", default="", help="other nu0 values, as multiples of D")
    p.add_argument("--seed", type=int, default=100)
    a = p.parse_args()
    torch.set_num_threads(1)
    scales = [float(s) for s in a.psi_scales.split(",")]
    for name, file in (("mnist", "mnist70k_ae_umap10.npz"), ("usps", "usps9298_ae_umap10.npz")):
        if not (DATA / "embeddings" / file).exists():
            print(f"skipped {name}: {DATA / 'embeddings' / file} not found")
            continue
        X, y = load_npz(file)
        m = DPGMM(random_state=a.seed).fit(X)
        z = m.labels_
        print(f"\n## {name} N={len(X)}: DPGMM() seed {a.seed}, K = {m.n_components_}, alpha mean "
              f"{m.alpha_mean_:.3f}\n")
        table(z, y)
        # the fit's standardised frame, in which its prior is stated
        Xs = (torch.from_numpy(X).double() - m.data_mean_.double()) / m.data_scale_.double()
        base = {k: v.double() for k, v in m.prior_.items()}
        d = X.shape[1]
        priors = [("default", base)]
        for kappa in (float(v) for v in a.kappas.split(",") if v):
            priors.append((f"kappa0 {kappa:g}", {**base, "kappa": torch.tensor(kappa, dtype=torch.float64)}))
        for mult in (float(v) for v in a.nus.split(",") if v):
            nu = torch.tensor(mult * d, dtype=torch.float64)
            psi = base["psi"] * (nu - d - 1) / (base["nu"] - d - 1)
            priors.append((f"nu0 {mult:g} D", {**base, "nu": nu, "psi": psi}))
        print("\n| edit | prior | " + " | ".join(f"psi x {s:g}" for s in scales) + " |")
        print("|---" * (len(scales) + 2) + "|")
        for label, z2 in edits(name, z, y).items():
            for which, pr in priors:
                diffs = []
                for s in scales:
                    prior = NIW(pr["m"], pr["kappa"], pr["nu"], pr["psi"] * s)
                    alpha = m.alpha_mean_
                    diffs.append(log_joint(Xs, z2, prior, alpha) - log_joint(Xs, z, prior, alpha))
                cells = " | ".join(f"{v:+.1f}" for v in diffs)
                print(f"| {label}: edit - fit (nats) | {which} | {cells} |")

if __name__ == "__main__":
    main()
