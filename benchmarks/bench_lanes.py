"""Whole GMM-EM fits with their passes in lanes (threads) against the same lanes run in turn on torch's
threads (issue 17): the measurement behind ``inference.lanes.MIN_WORK`` (feature form) and
``inference.em_cholesky.LANE_MIN_ELEMENTS`` (fused float64 Cholesky passes).

Each case is ``N,D,K,iterations,dtype`` (``formulation="auto"``). Per repeat, one fit in turn and one in
threads, interleaved in one process; prints both medians and the median and range of the per-repeat
ratios (in turn / threads: above 1, lanes faster) and the two fits' log-likelihood difference. By
default the thresholds stand (cases below them run in turn both times, ratio about 1); ``--force`` sets
them to 0, to measure the cases below.

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_lanes.py [--force] \\
        1e5,32,16,5,float64 ...
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gmm import make_data, same_init  # noqa: E402

import bayesclust as bc  # noqa: E402
from bayesclust.inference import em_cholesky, lanes  # noqa: E402


def _fit(X, k: int, iters: int, dtype: str, init: tuple, threads: bool) -> tuple[float, float, str]:
    """(seconds, lower bound, formulation) of one fit, its passes in threads or in turn."""
    means, weights, covs, _ = init
    model = bc.GaussianMixture(k, covariance_type="full", prior=None, tol=0, max_iter=iters, init=means,
                               weights_init=weights, covariances_init=covs, dtype=dtype, device="cpu",
                               reg_covar=1e-6 / float(X.var(0).mean()))
    saved = lanes.threaded
    if not threads:
        lanes.threaded = lambda *args, **kw: False
    try:
        t = time.perf_counter()
        model.fit(X)
        return time.perf_counter() - t, float(model.lower_bound_), model.formulation_
    finally:
        lanes.threaded = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="+", help="N,D,K,iterations,dtype")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--force", action="store_true", help="thresholds at 0: every pass in threads")
    a = ap.parse_args()
    if a.force:
        lanes.MIN_WORK = 0.0
        em_cholesky.LANE_MIN_ELEMENTS = 0.0
    limits = f"MIN_WORK={lanes.MIN_WORK:g}, LANE_MIN_ELEMENTS={em_cholesky.LANE_MIN_ELEMENTS:g}"
    print(f"# bench_lanes {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC | {platform.machine()} | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()} | thresholds "
          f"{'0 (--force)' if a.force else limits}")
    print("| N | D | K | iters | dtype | formulation | in turn s | threads s | in turn / threads (range) | "
          "loglik diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in a.cases:
        n, d, k, iters, dtype = case.split(",")
        n, d, k, iters = int(float(n)), int(d), int(k), int(iters)
        X = make_data(n, d, k).astype(dtype)
        init = same_init(X, k)
        _fit(X[: min(n, 4000)], k, 1, dtype, init, True)  # untimed: compiled kernels, the lane thread
        turn, thr, ratios = [], [], []
        for _ in range(a.repeats):
            t0, ll0, form = _fit(X, k, iters, dtype, init, False)
            t1, ll1, _ = _fit(X, k, iters, dtype, init, True)
            turn.append(t0)
            thr.append(t1)
            ratios.append(t0 / t1)
        print(f"| {n:.0e} | {d} | {k} | {iters} | {dtype} | {form} | {statistics.median(turn):.4f} | "
              f"{statistics.median(thr):.4f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-"
              f"{max(ratios):.2f}) | {abs(ll0 - ll1):.1e} |", flush=True)


if __name__ == "__main__":
    main()
