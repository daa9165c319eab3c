"""Where two EM runs from the same start part ways: bayesclust and scikit-learn stepped one iteration at
a time on one case of the grid (``gmm_grid.py``'s data, initialisation and reg_covar).

Each step is one ``fit(max_iter=1)`` of each library from its own previous parameters (scikit-learn by
``warm_start``, ours by passing the fitted weights, means and covariances back as the start). After
every step it prints both mean log-likelihoods (scored by ``gmm_grid.mean_loglik``), the smallest
component mass N w_k of each, and the largest differences of weights and means. At the end it
describes, in both fits, the component whose weights differ most: its mass, the eigenvalues of its
covariance at the reg_covar floor (below 10 reg_covar), and the log-likelihood the fit owes it. A
component whose expected count underflows to zero is where the libraries differ by design: scikit-learn
divides its zero sums by 10 eps, ours keeps the component's last parameters (models/gaussian.m_step).

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/gmm_trajectory.py --n 1e6 --d 128 --k 16
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gmm import make_data, same_init  # noqa: E402
from gmm_grid import REG, mean_loglik  # noqa: E402


def _steps(X: np.ndarray, k: int, iters: int):
    """Yield (iteration, scikit-learn's (w, m, c), ours (w, m, c), seconds of each)."""
    from sklearn.mixture import GaussianMixture

    import bayesclust as bc

    means, weights, covs, precs = same_init(X, k)
    reg = REG / float(X.var(0).mean())  # ours is relative to the mean feature variance (as gmm_grid)
    sk = GaussianMixture(k, covariance_type="full", tol=0, max_iter=1, reg_covar=REG, warm_start=True,
                         means_init=means, weights_init=weights, precisions_init=precs)
    ours = (weights, means, covs)
    for it in range(1, iters + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter=1 does not converge, by design
            t0 = time.perf_counter()
            sk.fit(X)
            t_sk = time.perf_counter() - t0
        model = bc.GaussianMixture(k, covariance_type="full", prior=None, tol=0, max_iter=1, init=ours[1],
                                   weights_init=ours[0], covariances_init=ours[2], dtype="float64",
                                   device="cpu", reg_covar=reg)
        t0 = time.perf_counter()
        model.fit(X)
        t_ours = time.perf_counter() - t0
        ours = (model.weights_, model.means_, model.covariances_)
        yield it, (sk.weights_, sk.means_, sk.covariances_), ours, (t_sk, t_ours)


def _describe(X: np.ndarray, j: int, name: str, w: np.ndarray, m: np.ndarray, c: np.ndarray) -> None:
    """Component j: mass, covariance eigenvalues at the reg_covar floor, and the mean log-likelihood
    the fit would lose without it (weights renormalised)."""
    n, d = X.shape
    floor = int((np.linalg.eigvalsh(c[j]) < 10 * REG).sum())
    keep = np.arange(len(w)) != j
    gain = mean_loglik(X, w, m, c) - mean_loglik(X, w[keep] / w[keep].sum(), m[keep], c[keep])
    print(f"{name}: component {j} holds N w = {n * w[j]:.3g} points; {floor} of its {d} covariance "
          f"eigenvalues lie below 10 reg_covar; removing it lowers the mean log-likelihood by {gain:.6f} "
          f"({gain * n:.0f} nats in all; 0.5 ln(1 / reg_covar) = {0.5 * math.log(1 / REG):.2f} nats per "
          "point per floored direction)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args(argv)
    n = int(a.n)
    X = make_data(n, a.d, a.k, dtype=np.float64)
    print(f"# gmm_trajectory {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC | N={n} D={a.d} K={a.k} "
          f"float64 | reg_covar {REG} (X's units)")
    print("| it. | loglik sklearn | loglik ours | rel. diff | min N w sklearn | min N w ours | "
          "max abs d weight | max abs d mean | s sklearn | s ours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for it, s, o, (t_sk, t_ours) in _steps(X, a.k, a.iters):
        ll_s, ll_o = mean_loglik(X, *s), mean_loglik(X, *o)
        dw = float(np.abs(s[0] - o[0]).max())  # the components keep the start's order in both
        dm = float(np.abs(s[1] - o[1]).max())
        rel = abs(ll_s - ll_o) / abs(ll_s)
        print(f"| {it} | {ll_s:.9f} | {ll_o:.9f} | {rel:.1e} | {n * s[0].min():.3g} | {n * o[0].min():.3g} | "
              f"{dw:.2e} | {dm:.2e} | {t_sk:.1f} | {t_ours:.1f} |", flush=True)
    j = int(np.argmax(np.abs(s[0] - o[0])))  # the component on which the two fits differ most
    _describe(X, j, "sklearn", *s)
    _describe(X, j, "bayesclust", *o)


if __name__ == "__main__":
    main()
