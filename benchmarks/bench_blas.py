"""This machine's matrix-product rates for the shapes GMM-EM runs, torch (its BLAS: MKL in the CPU
wheel) beside numpy (OpenBLAS in its wheel), interleaved, median of ``--repeats``.

The rates bound the roofline of issue 17 (``benchmarks/results/speed.md``); the two libraries are
timed in the same run because their ratio depends on the CPU (vector width, vendor).

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_blas.py [--n 100000]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

# (rows, inner, cols): square (the peak), the feature map's E-step and M-step at D = 32 (Q = 561)
# with K = 4 / 16, and the Cholesky form's whitening (x @ W, K D columns) at D = 32
SHAPES = [(2000, 2000, 2000), (-1, 561, 16), (-1, 561, 4), (-1, 32, 128), (-1, 32, 512), (-1, 32, 32)]


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _rows(dt: torch.dtype, m: int, q: int, k: int, repeats: int) -> list[str]:
    """Table rows for ``A @ B`` (m x q)(q x k) and, when skinny, ``R^T @ A`` (k x m)(m x q)."""
    g = torch.Generator().manual_seed(0)
    A, B, R = (torch.randn(*s, generator=g, dtype=dt) for s in ((m, q), (q, k), (m, k)))
    An, Bn, Rn = A.numpy(), B.numpy(), R.numpy()
    cases = [(f"A @ B ({m} x {q}) x ({q} x {k})", lambda: A @ B, lambda: An @ Bn)]
    if not m == q == k:
        cases.append((f"R^T @ A ({k} x {m}) x ({m} x {q})", lambda: R.T @ A, lambda: Rn.T @ An))
    out, flops = [], 2.0 * m * q * k
    for label, ft, fn in cases:
        tt = tn = 0.0
        for _ in range(2):  # interleaved halves
            tt += _median_ms(ft, repeats) / 2
            tn += _median_ms(fn, repeats) / 2
        out.append(f"| {str(dt).split('.')[-1]} | {label} | {tt:.1f} | {flops / tt / 1e6:.1f} | {tn:.1f} | "
                   f"{flops / tn / 1e6:.1f} | {tt / tn:.2f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="rows of the skinny products")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    simd = "avx512f" if " avx512f" in flags else "avx2" if " avx2" in flags else "other"
    print(f"# bench_blas {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {platform.machine()} | "
          f"{simd} | torch {torch.__version__} threads {torch.get_num_threads()} | numpy {np.__version__}")
    print("| dtype | product | torch ms | torch GFLOP/s | numpy ms | numpy GFLOP/s | numpy / torch speed |")
    print("|---|---|---|---|---|---|---|")
    for dt in (torch.float32, torch.float64):
        for m, q, k in SHAPES:
            for row in _rows(dt, a.n if m < 0 else m, q, k, a.repeats):
                print(row, flush=True)


if __name__ == "__main__":
    main()
