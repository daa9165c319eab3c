"""How far float32 fits drift from the float64 fit of the same start (issue 17's 1e-4 log-likelihood target).

On one case of the grid (``gmm_grid.py``'s data, initialisation and reg_covar convention), fits ours in
float64, in float32 with each formulation ("features": the quadratic map, uncentred; "cholesky": centred
whitening) and scikit-learn in float32, for each iteration count, and prints each fit's mean
log-likelihood (scored in float64 by ``gmm_grid.mean_loglik``), its relative distance to our float64 fit
and the time of the fit::

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/gmm_float32_drift.py --n 1e5 --d 32 --k 64
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gmm import make_data, same_init  # noqa: E402
from gmm_grid import REG, mean_loglik  # noqa: E402


def _ours(X, init, iters: int, dtype: str, formulation: str):
    import bayesclust as bc

    means, weights, covs, _ = init
    reg = REG / float(X.astype(np.float64).var(0).mean())  # ours is relative to the mean feature variance
    m = bc.GaussianMixture(means.shape[0], covariance_type="full", prior=None, tol=0, max_iter=iters,
                           init=means, weights_init=weights, covariances_init=covs, dtype=dtype,
                           reg_covar=reg, formulation=formulation).fit(X.astype(dtype))
    return m.weights_, m.means_, m.covariances_


def _sklearn(X, init, iters: int):
    from sklearn.mixture import GaussianMixture

    means, weights, _, precs = init
    m = GaussianMixture(means.shape[0], covariance_type="full", tol=0, max_iter=iters, reg_covar=REG,
                        means_init=means, weights_init=weights, precisions_init=precs).fit(X)
    return m.weights_, m.means_, m.covariances_


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e5)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--iters", default="10,20,50")
    a = ap.parse_args(argv)
    X = make_data(int(a.n), a.d, a.k)  # float32, as the grid's data
    X64 = X.astype(np.float64)
    init = same_init(X, a.k)
    fits = {
        "ours float64": lambda it: _ours(X, init, it, "float64", "auto"),
        "ours float32, features": lambda it: _ours(X, init, it, "float32", "features"),
        "ours float32, cholesky": lambda it: _ours(X, init, it, "float32", "cholesky"),
        "scikit-learn float32": lambda it: _sklearn(X, init, it),
    }
    print(f"# gmm_float32_drift {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC | N={int(a.n)} "
          f"D={a.d} K={a.k}")
    print("| iters | fit | mean loglik | rel. diff to ours float64 | s |")
    print("|---|---|---|---|---|")
    for iters in (int(v) for v in a.iters.split(",")):
        ref = None
        for name, fit in fits.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                params = fit(iters)
                seconds = time.perf_counter() - t0
            ll = mean_loglik(X64, *(np.asarray(p, dtype=np.float64) for p in params))
            ref = ll if ref is None else ref
            print(f"| {iters} | {name} | {ll:.6f} | {abs(ll - ref) / abs(ref):.1e} | {seconds:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
