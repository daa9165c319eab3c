"""GMM-EM over a grid of shapes (issue 17): whole ``fit`` time and final mean log-likelihood of
bayesclust, scikit-learn, pomegranate and tgmm from the same initialisation (``bench_gmm.py --grid``).

Every fit runs in its own subprocess, so a peer that runs out of memory, fails or passes ``--cap``
seconds is reported as such and the grid goes on; for a peer stopped at the cap, the cap over our
median is printed as a lower bound on its time over ours ("> x"). Fits of the libraries are
interleaved (repeat 1 of every library, then repeat 2, ...); a library that fails or times out on a
case is not repeated on it and is skipped on the larger N of the same (D, K, dtype, iterations). Each
worker warms its library up on max(2,000, 4 K D) rows before the timed fit; pomegranate and tgmm get
X as a torch tensor made before the clock starts (their native input), scikit-learn and bayesclust
the numpy array. Log-likelihoods are computed here, in float64, from each library's fitted weights,
means and covariances, so every library is scored by the same code.

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_gmm.py --grid [--ns 1e4,1e5 ...]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LIBS = ("bayesclust", "sklearn", "pomegranate", "tgmm")
REG = 1e-6  # scikit-learn's reg_covar default, in X's units
MEMORY_LIMIT = 20 << 30  # address-space limit of a worker (the VM has 24 GiB)


# ---------------------------------------------------------------------------- one fit per library
def _fit_bayesclust(X, init, iters, dtype):
    import bayesclust as bc

    def make(n_iter):
        return bc.GaussianMixture(
            init["means"].shape[0], covariance_type="full", prior=None, tol=0, max_iter=n_iter,
            init=init["means"], weights_init=init["weights"], covariances_init=init["covs"], dtype=dtype,
            device="cpu", reg_covar=reg,
        )
    reg = REG / float(X.var(0).mean())  # ours is relative to the mean variance; computed off the clock
    return make, lambda m: (m.weights_, m.means_, m.covariances_), lambda a: a


def _fit_sklearn(X, init, iters, dtype):
    from sklearn.mixture import GaussianMixture

    def make(n_iter):
        return GaussianMixture(
            init["means"].shape[0], covariance_type="full", tol=0, max_iter=n_iter, reg_covar=REG,
            means_init=init["means"], weights_init=init["weights"], precisions_init=init["precs"],
        )
    return make, lambda m: (m.weights_, m.means_, m.covariances_), lambda a: a


def _fit_pomegranate(X, init, iters, dtype):
    import torch
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    t = getattr(torch, dtype)

    def make(n_iter):
        dists = [Normal(means=torch.tensor(m, dtype=t), covs=torch.tensor(c, dtype=t), covariance_type="full")
                 for m, c in zip(init["means"], init["covs"], strict=True)]
        return GeneralMixtureModel(dists, priors=torch.tensor(init["weights"], dtype=t), max_iter=n_iter,
                                   tol=-math.inf)

    def params(m):
        d = m.distributions
        return (m.priors.detach().numpy(), np.stack([x.means.detach().numpy() for x in d]),
                np.stack([x.covs.detach().numpy() for x in d]))
    return make, params, lambda a: torch.from_numpy(a)


def _fit_tgmm(X, init, iters, dtype):
    import tgmm
    import torch

    t = getattr(torch, dtype)

    def make(n_iter):
        k, d = init["means"].shape
        start = {f"init_{name}": torch.tensor(init[name], dtype=t) for name in ("means", "weights")}
        return tgmm.GaussianMixture(  # tgmm refuses tol=0: the smallest positive tolerance instead
            n_components=k, n_features=d, covariance_type="full", max_iter=n_iter, tol=1e-300, reg_covar=REG,
            init_covariances=torch.tensor(init["covs"], dtype=t), device="cpu", **start,
        )

    def params(m):
        fitted = (m.weights_, m.means_, m.covariances_)
        return tuple(torch.as_tensor(v).detach().cpu().numpy() for v in fitted)
    return make, params, lambda a: torch.from_numpy(a)


FITS = {"bayesclust": _fit_bayesclust, "sklearn": _fit_sklearn, "pomegranate": _fit_pomegranate,
        "tgmm": _fit_tgmm}


def worker(lib: str, data: str, init_path: str, iters: int, dtype: str, out: str) -> None:
    """Fit ``lib`` on the saved data (warm-up on 2,000 rows first) and save time and parameters."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    X = np.load(data).astype(dtype)
    init = dict(np.load(init_path))
    make, params, native = FITS[lib](X, init, iters, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # enough rows that every component can hold a full-rank covariance (K D), at least 2,000
        warm = max(2000, min(X.shape[0], 4 * init["means"].shape[0] * X.shape[1]))
        make(1).fit(native(np.ascontiguousarray(X[:warm])))
        Xn = native(X)
        t0 = time.perf_counter()
        model = make(iters).fit(Xn)
        seconds = time.perf_counter() - t0
    w, m, c = (np.asarray(v, dtype=np.float64) for v in params(model))
    np.savez(out, seconds=seconds, weights=w, means=m, covs=c)


# ---------------------------------------------------------------------------- the parent
def mean_loglik(X: np.ndarray, w: np.ndarray, m: np.ndarray, c: np.ndarray) -> float:
    """Mean log-likelihood per point in float64 (blocked Cholesky solves)."""
    import torch

    X = torch.from_numpy(X).double()
    L = torch.linalg.cholesky(torch.from_numpy(c).double())  # (K, D, D)
    eye = torch.eye(L.shape[-1], dtype=torch.float64).expand_as(L)
    P = torch.linalg.solve_triangular(L, eye, upper=False)  # L^-1, so |L^-1 (x - mu)|^2 is the distance
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    const = torch.log(torch.from_numpy(w).double()) - 0.5 * (logdet + X.shape[1] * math.log(2 * math.pi))
    total, step = 0.0, max(1, (1 << 27) // (L.shape[0] * L.shape[1] * 8))  # (step, K, D) ~ 128 MiB
    for s in range(0, X.shape[0], step):
        diff = X[s:s + step, None, :] - torch.from_numpy(m).double()[None]  # (b, K, D)
        z = torch.einsum("bkd,ked->bke", diff, P)
        total += torch.logsumexp(const - 0.5 * (z * z).sum(-1), dim=1).sum().item()
    return total / X.shape[0]


def run_fit(lib: str, paths: dict, iters: int, dtype: str, cap: float) -> dict:
    """One timed fit in a subprocess: {'seconds', 'params'} or {'status'}."""
    out = paths["dir"] / f"{lib}.npz"
    cmd = [sys.executable, __file__, "--worker", lib, str(paths["X"]), str(paths["init"]), str(iters), dtype,
           str(out)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {cap:.0f} s"}
    if r.returncode != 0 or not out.exists():
        last = (r.stderr.strip().splitlines() or ["killed"])[-1][:90]
        return {"status": "failed: " + ("out of memory" if "MemoryError" in r.stderr else last)}
    z = np.load(out)
    out.unlink()
    return {"seconds": float(z["seconds"]), "params": (z["weights"], z["means"], z["covs"])}


def run_case(n: int, d: int, k: int, dtype: str, iters: int, a, skip: set, tmp: Path) -> list[dict]:
    from bench_gmm import make_data, same_init

    X = make_data(n, d, k, dtype=np.float64)
    means, weights, covs, precs = same_init(X, k)
    paths = {"dir": tmp, "X": tmp / "X.npy", "init": tmp / "init.npz"}
    np.save(paths["X"], X)
    np.savez(paths["init"], means=means, weights=weights, covs=covs, precs=precs)
    libs = [lib for lib in a.libs.split(",") if (lib, d, k, dtype, iters) not in skip]
    res = {lib: {"times": [], "status": "ok"} for lib in libs}
    for _ in range(a.repeats):
        for lib in libs:
            if res[lib]["status"] != "ok":
                continue
            r = run_fit(lib, paths, iters, dtype, a.cap)
            if "status" in r:
                res[lib]["status"] = r["status"]
                skip.add((lib, d, k, dtype, iters))
                continue
            res[lib]["times"].append(r["seconds"])
            res[lib]["params"] = r["params"]
    rows = []
    for lib, r in res.items():
        if r["times"] and r["status"] == "ok":
            r["ll"] = mean_loglik(X, *r["params"])
        rows.append({"n": n, "d": d, "k": k, "dtype": dtype, "iters": iters, "lib": lib, **r})
    for lib in a.libs.split(","):
        if lib not in res:
            rows.append({"n": n, "d": d, "k": k, "dtype": dtype, "iters": iters, "lib": lib, "times": [],
                         "status": "skipped (failed or timed out at a smaller N)"})
    return rows


def _past_cap(r: dict, ours: dict) -> str:
    """A peer stopped at the cap: its time over ours is at least the cap over our median ("> x")."""
    if not r["status"].startswith("timeout > ") or not ours.get("times") or ours["status"] != "ok":
        return "-"
    cap = float(r["status"].split()[2])
    return f"> {cap / float(np.median(ours['times'])):.2f}"


def print_rows(rows: list[dict]) -> None:
    by = {r["lib"]: r for r in rows}
    ours, sk = by.get("bayesclust", {}), by.get("sklearn", {})
    for r in rows:
        t = r["times"]
        case = f"| {r['n']:.0e} | {r['d']} | {r['k']} | {r['dtype']} | {r['iters']} | {r['lib']} |"
        if not t or r["status"] != "ok":
            print(f"{case} - | {_past_cap(r, ours)} | - | - | {r['status']} |", flush=True)
            continue
        med = float(np.median(t))
        ratio = "-"
        if r["lib"] != "bayesclust" and ours.get("times") and ours["status"] == "ok":
            ratio = f"{med / float(np.median(ours['times'])):.2f}"
        rel = "-"
        if "ll" in sk and "ll" in r:
            rel = f"{abs(r['ll'] - sk['ll']) / abs(sk['ll']):.1e}"
        print(f"{case} {med:.3f} ({min(t):.3f}-{max(t):.3f}) | {ratio} | {r['ll']:.6f} | {rel} | ok |",
              flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--ns", default="1e4,1e5,1e6")
    ap.add_argument("--ds", default="2,8,32,128")
    ap.add_argument("--ks", default="4,16,64")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--iters", default="5,50")
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cap", type=float, default=300.0, help="seconds a fit may take")
    a = ap.parse_args(argv)
    import torch

    print(f"# bench_gmm --grid {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC | {platform.machine()} | "
          f"torch {torch.__version__} | cores {os.cpu_count()} | args {vars(a)}")
    print("| N | D | K | dtype | iters | library | whole fit s, median (range) | time / bayesclust | "
          "mean loglik | rel. diff to sklearn | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    skip: set = set()
    with tempfile.TemporaryDirectory(prefix="gmm_grid_") as tmp:
        for n in sorted(int(float(v)) for v in a.ns.split(",")):
            for d in (int(v) for v in a.ds.split(",")):
                for k in (int(v) for v in a.ks.split(",")):
                    for dtype in a.dtypes.split(","):
                        for iters in (int(v) for v in a.iters.split(",")):
                            print_rows(run_case(n, d, k, dtype, iters, a, skip, Path(tmp)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(HERE.parent))
        lib, data, init, iters, dtype, out = sys.argv[2:8]
        worker(lib, data, init, int(iters), dtype, out)
    else:
        sys.path.insert(0, str(HERE))
        main()
