"""The machine's roofline beside GMM-EM's measured time (issue 17).

Measures this machine's matmul rate (float32 and float64, square 4096 products, best of 5) and memory
bandwidth (a 512 MiB tensor copy, best of 5), then, for the bayesclust rows of a ``bench_gmm --grid``
output at the given D, the FLOPs and bytes one EM iteration needs in the formulation
``models.gaussian.choose_formulation`` picks, the roofline time max(FLOPs / rate, bytes / bandwidth)
and the share of it the measured whole fit reached (measured seconds / iterations, so fixed costs of
a short fit count against it).

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/roofline.py grid_output.txt --ds 32,128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayesclust.inference import em_cholesky  # noqa: E402
from bayesclust.inference.streaming import cache_fits  # noqa: E402
from bayesclust.models import gaussian  # noqa: E402


def matmul_rate(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Best GFLOP/s of an (n x n) @ (n x n) product."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Best GB/s of copying ``mib`` MiB (read + write counted)."""
    src = torch.ones(mib << 18, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def iteration_cost(n: int, d: int, k: int, itemsize: int) -> tuple[str, float, float]:
    """(formulation, FLOPs, bytes) of one EM iteration on full covariances.

    Features: the E-step's (n x Q) @ (Q x K) and the statistics' (K x n) @ (n x Q) products, 4 n Q K
    FLOPs; phi(X) read by both (plus written once an iteration when it is not cached). Cholesky: the
    E-step's (n x D) @ (D x K D) (2 n K D^2 FLOPs) and the per-component scatter (2 n K D^2 in
    float32; 1.5 n K D^2 in float64, whose symmetric sums skip a quarter); the (n, K D) product written
    and read, X read three times."""
    q = gaussian.feature_dim(d, "full")
    cached = cache_fits(n, q, itemsize)
    dtype = torch.float64 if itemsize == 8 else torch.float32
    fused = em_cholesky.fused_passes(n, k, d, torch.device("cpu"), dtype)  # as the estimator decides
    form = gaussian.choose_formulation("full", d, k, itemsize, cached, fused)
    if form == "features":
        return form, 4.0 * n * q * k, (2 + (0 if cached else 1)) * n * q * itemsize
    scatter = 1.5 if itemsize == 8 and d >= em_cholesky.SPLIT_MIN_D else 2.0
    return form, (2.0 + scatter) * n * k * d * d, (3 * n * d + 2 * n * k * d) * itemsize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("grid", help="the output of bench_gmm.py --grid")
    ap.add_argument("--ds", default="32,128")
    a = ap.parse_args()
    rates = {4: matmul_rate(torch.float32), 8: matmul_rate(torch.float64)}
    bw = bandwidth()
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    print(f"# roofline {stamp} UTC | threads {torch.get_num_threads()} | "
          f"sgemm {rates[4]:.0f} GFLOP/s | dgemm {rates[8]:.0f} GFLOP/s | copy bandwidth {bw:.1f} GB/s")
    print("| N | D | K | dtype | iters | formulation | GFLOP / iter | GB / iter | roofline s / iter | "
          "measured s / iter | share of roofline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ds = {int(v) for v in a.ds.split(",")}
    for line in Path(a.grid).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 11 or cells[5] != "bayesclust" or cells[10] != "ok" or int(cells[1]) not in ds:
            continue
        n, d, k, dtype, iters = int(float(cells[0])), int(cells[1]), int(cells[2]), cells[3], int(cells[4])
        size = 4 if dtype == "float32" else 8
        form, flops, nbytes = iteration_cost(n, d, k, size)
        roof = max(flops / (rates[size] * 1e9), nbytes / (bw * 1e9))
        measured = float(cells[6].split()[0]) / iters
        print(f"| {n:.0e} | {d} | {k} | {dtype} | {iters} | {form} | {flops / 1e9:.2f} | "
              f"{nbytes / 1e9:.2f} | {roof:.4f} | {measured:.4f} | {roof / measured:.0%} |")


if __name__ == "__main__":
    main()
