"""DPGMM benchmarks: accuracy, inferred K and wall time against scikit-learn's DP-GMM.

Run ``python benchmarks/bench_dpgmm.py --only synth,mnist,usps,imbalanced,faithful,galaxies,big``
(wrap timed runs in ``flock /tmp/bayesclust_bench.lock``). Every number printed is measured here.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayesclust import metrics  # noqa: E402
from bayesclust.estimators.dpgmm import DPGMM  # noqa: E402

DATA = Path(os.environ.get("BAYESCLUST_SHARED_DATA", ROOT.parent / "shared" / "data"))


def synthetic(n: int, d: int, k: int, seed: int, sep: float = 6.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, sep, (k, d))
    y = rng.integers(0, k, n)
    A = rng.normal(0, 0.4, (k, d, d)) + np.eye(d)
    X = centers[y] + np.einsum("nij,nj->ni", A[y], rng.normal(size=(n, d)))
    return X.astype(np.float32), y


def run_ours(X, y, inference: str, seed: int, max_iter: int, **kw) -> dict:
    t = time.perf_counter()
    m = DPGMM(inference=inference, random_state=seed, max_iter=max_iter, **kw).fit(X)
    dt = time.perf_counter() - t
    out = {"route": f"bc.DPGMM[{inference}]", "seed": seed, "time_s": dt, "K": m.n_components_}
    if y is not None:
        out.update(metrics.evaluate(y, m.labels_))
    sizes = np.bincount(m.labels_)
    out["K_big"] = int((sizes >= 0.005 * len(X)).sum())  # clusters holding >= 0.5% of the points
    out["K_raw"] = max(m.posterior_k_raw_, key=m.posterior_k_raw_.get) if m.posterior_k_raw_ else 0
    out["small"] = m.small_clusters_["sizes"].tolist()
    if inference == "splitmerge":
        out["posterior_k"] = {k: round(v, 3) for k, v in sorted(m.posterior_k_.items())}
        out["alpha"] = m.alpha_mean_
    return out


def run_sklearn(X, y, k_max: int, seed: int, max_iter: int) -> dict:
    from sklearn.mixture import BayesianGaussianMixture

    t = time.perf_counter()
    m = BayesianGaussianMixture(
        n_components=k_max,
        weight_concentration_prior_type="dirichlet_process",
        max_iter=max_iter,
        random_state=seed,
    ).fit(X)
    labels = m.predict(X)
    dt = time.perf_counter() - t
    out = {"route": f"sklearn BGM(max_iter={max_iter}, n_iter={m.n_iter_}, conv={m.converged_})"}
    out.update({"seed": seed, "time_s": dt, "K": int(np.unique(labels).size)})
    out.update(metrics.evaluate(y, labels))
    return out


def fmt(r: dict) -> str:
    keys = ["route", "seed", "time_s", "K", "K_raw", "K_big", "acc", "nmi", "ari", "posterior_k", "alpha",
            "small"]
    parts = []
    for k in keys:
        if k in r:
            v = r[k]
            parts.append(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}")
    return "  " + " ".join(parts)


def load_npz(name: str):
    d = np.load(DATA / "embeddings" / name)
    return d["X"].astype(np.float32), d["y"].astype(np.int64)


IMBALANCE = ((8, 0.10), (2, 0.05), (5, 0.20), (9, 0.30))  # (class, share of its points kept)


def imbalanced_mnist(seed: int = 0):
    """DeepDPM's imbalanced MNIST: classes 8, 2, 5, 9 kept at 10%, 5%, 20%, 30%."""
    return imbalanced(*load_npz("mnist70k_ae_umap10.npz"), seed=seed)


def imbalanced(X: np.ndarray, y: np.ndarray, seed: int = 0):
    """The imbalanced subset rule (``IMBALANCE``), the points of each listed class drawn without
    replacement with a fixed seed (0 in every benchmark), the other classes kept whole."""
    rng = np.random.default_rng(seed)
    keep = np.ones(len(y), bool)
    for c, frac in IMBALANCE:
        idx = np.flatnonzero(y == c)
        drop = rng.choice(idx, size=len(idx) - int(round(frac * len(idx))), replace=False)
        keep[drop] = False
    return X[keep], y[keep]


def island_merge_ratios(max_iter: int) -> None:
    """Deep route on MNIST-UMAP (seed 0): the smallest cluster's log merge Hastings ratio with each of
    its three nearest clusters, from the fitted labels and the NIW prior in the model's standardised
    space (``splitmerge.log_merge_ratio``: > 0 favours the merge)."""
    from bayesclust.inference.splitmerge import log_merge_ratio
    from bayesclust.models.priors import NIW

    X, _ = load_npz("mnist70k_ae_umap10.npz")
    m = DPGMM(inference="deep", random_state=0, max_iter=max_iter).fit(X)
    Z = (torch.as_tensor(X, dtype=torch.float64) - m.data_mean_.double()) / m.data_scale_.double()
    p = m.prior_
    prior = NIW.__new__(NIW)._set(
        p["m"].double(), torch.as_tensor(p["kappa"]).double(), torch.as_tensor(p["nu"]).double(),
        p["psi"].double(),
    )
    lab = torch.as_tensor(m.labels_)
    sizes = torch.bincount(lab)
    small = int(sizes.argmin())
    means = torch.stack([Z[lab == j].mean(0) for j in range(len(sizes))])
    dist = (means - means[small]).norm(dim=1)
    dist[small] = float("inf")

    def log_ml(mask: torch.Tensor) -> torch.Tensor:
        Zm = Z[mask]
        return prior.log_marginal_likelihood(mask.sum().double()[None], Zm.sum(0)[None], (Zm.T @ Zm)[None])

    print(f"\n## deep route, MNIST-UMAP seed 0: K={m.n_components_}, cluster sizes {sorted(sizes.tolist())}")
    a = lab == small
    for nb in dist.argsort()[:3].tolist():
        b = lab == nb
        na, nb_ = a.sum().double()[None], b.sum().double()[None]
        r = log_merge_ratio(na, nb_, log_ml(a | b), log_ml(a), log_ml(b), float(m.weight_concentration_prior))
        print(f"  cluster {small} (n={int(a.sum())}) + cluster {nb} (n={int(b.sum())}, standardised distance "
              f"{float(dist[nb]):.2f}): log merge Hastings ratio {float(r[0]):.1f}", flush=True)


ISSUE15_TARGETS = {  # data: (NMI >=, K rule, DeepDPM's table)
    "mnist": (0.93, "K = 10 in >= 4 of 5 seeds", "NMI .94, ACC .98, K 10.0"),
    "usps": (0.87, "K in 9..11", "NMI .88, ACC .89, K 9.2"),
    "mnist-imb": (0.94, "", "NMI .95, ACC .98"),
    "usps-imb": (0.89, "", "NMI .90, ACC .94"),
}


def issue15_rows():
    """The four data sets of issue 15: MNIST / USPS UMAP-10 and their imbalanced subsets (seed 0)."""
    mnist, usps = load_npz("mnist70k_ae_umap10.npz"), load_npz("usps9298_ae_umap10.npz")
    return {"mnist": mnist, "usps": usps, "mnist-imb": imbalanced(*mnist), "usps-imb": imbalanced(*usps)}


def issue15_verdict(name: str, rows: list[dict]) -> str:
    nmi_min, k_rule, _ = ISSUE15_TARGETS[name]
    ks = [r["K"] for r in rows]
    nmi = float(np.mean([r["nmi"] for r in rows]))
    ok = [f"NMI {nmi:.4f} {'>=' if nmi >= nmi_min else '<'} {nmi_min}"]
    if name == "mnist":
        ok.append(f"K=10 in {sum(k == 10 for k in ks)}/{len(ks)} seeds")
    elif name == "usps":
        ok.append(f"K in 9..11 in {sum(9 <= k <= 11 for k in ks)}/{len(ks)} seeds")
    return "; ".join(ok)


def run_issue15(args, seeds: list[int]) -> None:
    """Every route with the estimator's defaults on every row (only max_iter per route, alike on
    every row); per seed NMI / ACC / K / time, then a summary against the issue's targets."""
    routes = [r for r in args.routes.split(",")]
    iters = {"splitmerge": args.max_iter, "vi": args.vi_max_iter, "deep": args.deep_max_iter or 100}
    for name, (X, y) in issue15_rows().items():
        print(f"\n## issue 15: {name} N={len(X)} (DeepDPM: {ISSUE15_TARGETS[name][2]})", flush=True)
        for route in routes:
            rs = seeds if route != "deep" or name not in ("mnist", "mnist-imb") else seeds[: args.deep_seeds]
            rows = []
            for s in rs:
                rows.append(run_ours(X, y, route, s, iters[route]))
                print(fmt(rows[-1]), flush=True)
            print(f"  summary {name} {route}: NMI {np.mean([r['nmi'] for r in rows]):.4f} ACC "
                  f"{np.mean([r['acc'] for r in rows]):.4f} K {[r['K'] for r in rows]} "
                  f"time {np.mean([r['time_s'] for r in rows]):.1f}s | {issue15_verdict(name, rows)}",
                  flush=True)


def _iteration_times(fit) -> list[float]:
    """Seconds of every engine iteration of ``fit(callback)`` (a callback stamps each one)."""
    stamps = [time.perf_counter()]
    fit(lambda *a: stamps.append(time.perf_counter()) and False)
    return list(np.diff(stamps))[1:]  # the first interval also holds the set-up


def sweep_vs_em(n: int, d: int, k: int, sweeps: int, em_iters: int) -> None:
    """Split/merge sweep time beside one GMM-EM iteration on the same data (issue 17): the sweeps
    counted are those with K within 2 of the true K; EM with that K, feature cache built as a fit does."""
    from bayesclust import GaussianMixture

    X, _ = synthetic(n, d, k, seed=0)
    X = X.astype(np.float32)
    print(f"\n## split/merge sweep beside an EM iteration: N={n} D={d} K={k} float32")
    dp = DPGMM(random_state=0, max_iter=sweeps)
    sweep = _iteration_times(lambda cb: dp.set_params(callbacks=[cb]).fit(X))
    near = [t for t, kk in zip(sweep, dp.k_trace_raw_[1:]) if abs(kk - k) <= 2]
    em = _iteration_times(lambda cb: GaussianMixture(k, max_iter=em_iters, tol=0, random_state=0,
                                                     callbacks=[cb]).fit(X))
    s, e = float(np.median(near)) if near else float("nan"), float(np.median(em))
    lo, hi = min(near, default=np.nan), max(near, default=np.nan)
    trace = " ".join(f"{kk}:{t:.2f}" for t, kk in zip(sweep, dp.k_trace_raw_[1:]))
    print(f"every sweep (K:seconds): {trace}")
    print(f"sweeps with K in {k - 2}..{k + 2}: {len(near)} of {len(sweep)}, median {s:.3f} s (range "
          f"{lo:.3f}-{hi:.3f}); EM iteration median {e:.3f} s (range {min(em):.3f}-{max(em):.3f}); "
          f"sweep / EM = {s / e:.2f} (target <= 3)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="synth,mnist,usps,imbalanced,faithful,galaxies,big")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--max-iter", type=int, default=100, help="split/merge sweeps")
    ap.add_argument("--vi-max-iter", type=int, default=200)
    ap.add_argument("--sklearn-max-iter", type=int, default=100, help="cap on sklearn's VI iterations")
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--deep-max-iter", type=int, default=0,
                    help="also run inference='deep' on MNIST/USPS with this many iterations (0: skip)")
    ap.add_argument("--synth-n", type=int, default=100_000)
    ap.add_argument("--big-n", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--psi-scale", type=float, default=1.0, help="DPGMM psi_scale on MNIST/USPS")
    ap.add_argument("--routes", default="splitmerge,deep,vi", help="issue15: the routes to run")
    ap.add_argument("--deep-seeds", type=int, default=5, help="issue15: deep-route seeds on the MNIST rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(
        f"# bench_dpgmm {stamp} | {platform.processor() or platform.machine()}"
        f" | torch {torch.__version__} | threads {torch.get_num_threads()} | cores {os.cpu_count()}"
    )
    print(f"# args: {vars(args)}")

    if "issue15" in only:  # not in the default --only
        run_issue15(args, seeds)

    if "sweep" in only:  # not in the default --only
        sweep_vs_em(args.big_n, 32, 20, args.max_iter, 10)

    if "synth" in only:
        X, y = synthetic(args.synth_n, 10, 10, seed=0)
        print(f"\n## synthetic N={len(X)} D=10 true K=10")
        ours = run_ours(X, y, "splitmerge", 0, args.max_iter)
        print(fmt(ours), flush=True)
        print(fmt(run_ours(X, y, "vi", 0, args.vi_max_iter, truncation=30)), flush=True)
        if not args.no_sklearn:
            sk = run_sklearn(X, y, 30, 0, args.sklearn_max_iter)
            print(fmt(sk), flush=True)
            print(f"  splitmerge vs sklearn: {sk['time_s'] / ours['time_s']:.1f}x faster "
                  f"(target >= 20x), ARI {ours['ari']:.4f} vs {sk['ari']:.4f}, K {ours['K']} vs {sk['K']} "
                  f"(true 10)", flush=True)

    for name, fname in (("mnist", "mnist70k_ae_umap10.npz"), ("usps", "usps9298_ae_umap10.npz")):
        if name not in only:
            continue
        X, y = load_npz(fname)
        print(f"\n## {name} UMAP-10 N={len(X)}")
        rows = []
        for s in seeds:
            r = run_ours(X, y, "splitmerge", s, args.max_iter, psi_scale=args.psi_scale)
            rows.append(r)
            print(fmt(r), flush=True)
        print(
            f"  summary splitmerge: NMI {np.mean([r['nmi'] for r in rows]):.4f} ACC "
            f"{np.mean([r['acc'] for r in rows]):.4f} K {[r['K'] for r in rows]} "
            f"K_big {[r['K_big'] for r in rows]} "
            f"time {np.mean([r['time_s'] for r in rows]):.1f}s"
        )
        print(fmt(run_ours(X, y, "vi", seeds[0], args.vi_max_iter)), flush=True)
        if args.deep_max_iter:  # the DeepDPM-style route, every seed
            deep = [run_ours(X, y, "deep", s, args.deep_max_iter) for s in seeds]
            for r in deep:
                print(fmt(r), flush=True)
            print(f"  summary deep: NMI {np.mean([r['nmi'] for r in deep]):.4f} ACC "
                  f"{np.mean([r['acc'] for r in deep]):.4f} K {[r['K'] for r in deep]} "
                  f"K_big {[r['K_big'] for r in deep]} time {np.mean([r['time_s'] for r in deep]):.1f}s")

    if "prior-grid" in only:  # not in the default --only: does any prior default fit both sets?
        print("\n## prior grid (psi_scale x nu0) on MNIST / USPS UMAP-10, seeds 0, 1")
        sets = {n: load_npz(f) for n, f in (("mnist", "mnist70k_ae_umap10.npz"),
                                              ("usps", "usps9298_ae_umap10.npz"))}
        for ps in (0.3, 1.0, 3.0):
            for nu in (None, 20.0, 50.0):
                for name, (X, y) in sets.items():
                    for s in (0, 1):
                        kw = {"psi_scale": ps, "degrees_of_freedom_prior": nu}
                        r = run_ours(X, y, "splitmerge", s, args.max_iter, **kw)
                        r["route"] = f"{name} psi_scale={ps} nu0={nu}"
                        r.pop("posterior_k", None)
                        print(fmt(r), flush=True)

    if "island" in only:  # not in the default --only: why the deep route's MNIST K is 11
        island_merge_ratios(args.deep_max_iter or 100)

    if "imbalanced" in only:
        X, y = imbalanced_mnist()
        print(f"\n## imbalanced MNIST UMAP-10 (8:10%, 2:5%, 5:20%, 9:30%) N={len(X)}")
        for s in seeds[:3]:
            print(fmt(run_ours(X, y, "splitmerge", s, args.max_iter)), flush=True)

    if "faithful" in only:
        import pandas as pd

        X = pd.read_csv(DATA / "tabular" / "datasets_faithful.csv")[["eruptions", "waiting"]].to_numpy()
        print("\n## Old Faithful N=272")
        for s in seeds[:3]:
            print(fmt(run_ours(X, None, "splitmerge", s, 400, burn_in=100)), flush=True)

    if "galaxies" in only:
        import pandas as pd

        X = pd.read_csv(DATA / "tabular" / "MASS_galaxies.csv")[["dat"]].to_numpy() / 1000.0
        print("\n## galaxies N=82 (velocity / 1000 km/s), default priors, 2000 sweeps, burn-in 500")
        for s in seeds[:3]:
            print(fmt(run_ours(X, None, "splitmerge", s, 2000, burn_in=500)), flush=True)

    if "big" in only:
        X, y = synthetic(args.big_n, 32, 20, seed=1, sep=4.0)
        print(f"\n## big synthetic N={len(X)} D=32 true K=20")
        print(fmt(run_ours(X, y, "splitmerge", 0, args.max_iter)), flush=True)


if __name__ == "__main__":
    main()
