"""Where the Cholesky E/M-step overtakes the quadratic feature map (issue 17): the measurement behind
``models.gaussian.choose_formulation``.

For each D, K and dtype, one EM step (E-step, statistics, M-step; the feature cache built beforehand,
as a fit does) of both formulations on the same data and parameters, interleaved, median of
``--repeats``; prints seconds per step, the ratio features / cholesky (above 1: Cholesky faster) and the
relative difference of the two log-likelihoods, then the smallest D from which Cholesky is faster at
every K, per dtype.

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_formulation.py [--no-cache]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gmm import make_data  # noqa: E402

from bayesclust.inference import em  # noqa: E402
from bayesclust.inference.streaming import Features  # noqa: E402
from bayesclust.models import gaussian  # noqa: E402


def _params(X: torch.Tensor, k: int) -> gaussian.GMMParams:
    """Means at k data points, every covariance the data's (a first EM step's starting point)."""
    g = torch.Generator().manual_seed(1)
    means = X[torch.randperm(X.shape[0], generator=g)[:k]].clone()
    cov = torch.cov(X.T.double()).to(X.dtype) + 1e-3 * torch.eye(X.shape[1], dtype=X.dtype)
    return gaussian.GMMParams(torch.full((k,), 1.0 / k, dtype=X.dtype), means, cov.expand(k, -1, -1).clone())


def step_time(X: torch.Tensor, k: int, formulation: str, cache: bool = True) -> tuple[float, float]:
    """(seconds of one EM step, its log-likelihood per point); ``cache=False``: the feature map is
    recomputed block by block, as it is when phi(X) exceeds the cache (large N)."""
    family = gaussian.GaussianFamily("full", formulation=formulation)
    feats = Features(X, family.feature_map, 65536, cache_bytes=float("inf") if cache else 0)
    step = em.em_step(family, feats)
    state = {"params": _params(X, k)}
    t = time.perf_counter()
    ll = step(state, 0)
    return time.perf_counter() - t, ll


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dims", default="8,16,32,48,64,96,128")
    ap.add_argument("--ks", default="4,16,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--no-cache", action="store_true", help="the feature map recomputed every step")
    a = ap.parse_args()
    print(f"# bench_formulation {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC | "
          f"{platform.machine()} | torch {torch.__version__} | threads {torch.get_num_threads()} | N={a.n} | "
          f"feature cache {'off' if a.no_cache else 'on'}")
    print("| dtype | D | K | features s/step | cholesky s/step | features / cholesky | loglik rel diff |")
    print("|---|---|---|---|---|---|---|")
    wins: dict[str, dict[int, list[bool]]] = {}
    for dtype in [getattr(torch, v) for v in a.dtypes.split(",")]:
        for d in [int(v) for v in a.dims.split(",")]:
            for k in [int(v) for v in a.ks.split(",")]:
                X = torch.from_numpy(make_data(a.n, d, k, dtype=np.float64)).to(dtype)
                X = (X - X.mean(0)) / X.std(0).mean()  # the estimator's working frame
                times: dict[str, list[float]] = {"features": [], "cholesky": []}
                lls = {}
                for f in times:  # untimed: first-call set-up (compiled kernels, lane threads)
                    step_time(X[:4096], k, f, cache=not a.no_cache)
                for _ in range(a.repeats):
                    for f in times:
                        s, lls[f] = step_time(X, k, f, cache=not a.no_cache)
                        times[f].append(s)
                med = {f: statistics.median(v) for f, v in times.items()}
                ratio = med["features"] / med["cholesky"]
                rel = abs(lls["features"] - lls["cholesky"]) / abs(lls["cholesky"])
                name = str(dtype).split(".")[-1]
                wins.setdefault(name, {}).setdefault(d, []).append(ratio > 1)
                print(f"| {name} | {d} | {k} | {med['features']:.4f} | {med['cholesky']:.4f} | "
                      f"{ratio:.2f} | {rel:.1e} |", flush=True)
    for name, by_d in wins.items():
        faster = [d for d in sorted(by_d) if all(all(by_d[e]) for e in by_d if e >= d)]
        print(f"{name}: Cholesky faster at every K from D = {faster[0] if faster else 'none'}")


if __name__ == "__main__":
    main()
