"""The machine's roofline beside GMM-EM's measured time (issue 17).

Measures this machine's matmul rate (float32 and float64, square 4096 products in torch's BLAS and in
numpy's, the best of 5 of either) and memory
bandwidth (a 512 MiB tensor copy, best of 5), then, for the bayesclust rows of a ``bench_gmm --grid``
output at the given D, the FLOPs and bytes one EM iteration needs in the formulation
``models.gaussian.choose_formulation`` picks, the roofline time max(FLOPs / rate, bytes / bandwidth)
and the share of it the measured whole fit reached (measured seconds / iterations, so fixed costs of
a short fit count against it). The square-product rate is not what products of this shape reach:
each shape's block products (their sizes as the fit takes them, run in lanes as the fit runs them)
are timed too, and the share of the roofline at that rate is printed beside.

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/roofline.py grid_output.txt --ds 32,128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayesclust._device import host_blas  # noqa: E402
from bayesclust.inference import em, em_cholesky, lanes  # noqa: E402
from bayesclust.inference.streaming import Features, cache_fits  # noqa: E402
from bayesclust.models import gaussian  # noqa: E402


def matmul_rate(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Best GFLOP/s of an (n x n) @ (n x n) product, in torch's BLAS or numpy's, whichever is faster."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    an, bn = a.numpy(), b.numpy()
    best = float("inf")
    for product in (lambda: a @ b, lambda: an @ bn):
        product()
        best = min(best, *(_timed(product) for _ in range(repeats)))
    return 2 * n ** 3 / best / 1e9


def bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Best GB/s of copying ``mib`` MiB (read + write counted)."""
    src = torch.ones(mib << 18, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def block_rate(form: str, d: int, k: int, itemsize: int, repeats: int = 5, per_lane: int = 8) -> float:
    """GFLOP/s of one iteration's block products at the shapes the fit gives them, run as the fit runs
    them: ``lanes.run`` over blocks, each lane a thread of single-threaded torch with buffers of its
    own. Features: phi (m, Q) @ A (Q, K) and r^T phi; Cholesky: x P_k, then the scatter (float64:
    over column halves, as ``em_cholesky._Whitened``)."""
    dtype = torch.float64 if itemsize == 8 else torch.float32
    if form == "features":
        q = gaussian.feature_dim(d, "full")
        m = em.block_rows(q, itemsize, 1 << 16)
        shapes = [(m, q), (q, k), (k, m), (m, k), (k, q)]
        flops = 4.0 * m * q * k

        def products(a: list[torch.Tensor]) -> None:
            torch.mm(a[0], a[1], out=a[3])
            torch.mm(a[2], a[0], out=a[4])
    elif host_blas() == "numpy":  # the lanes' products in numpy (em_cholesky._Block)
        m = em_cholesky.block_rows(k, d, 8, 1 << 16, em_cholesky._LANE_BLOCK_BYTES)
        h, symmetric = _scatter(d, itemsize)  # float64: w^T w, one symmetric product; float32: y^T z
        shapes = [(m, d), (k, d, d), (k, m, d), (k, m, d), (k, d, d)]
        flops = _cholesky_flops(m, d, k, h, symmetric)

        def products(a: list[torch.Tensor]) -> None:
            x, P, w, z, S = (t.numpy() for t in a)
            np.matmul(x[None], P, out=w)
            np.matmul(w.transpose(0, 2, 1), w if symmetric else z, out=S)
    else:
        m = em_cholesky.block_rows(k, d, 8, 1 << 16, em_cholesky._LANE_BLOCK_BYTES)
        h = _scatter(d, itemsize)[0]
        shapes = [(m, d), (k, d, d), (k, m, d), (k, h, h), (k, d, d - h)]
        flops = _cholesky_flops(m, d, k, h)

        def products(a: list[torch.Tensor]) -> None:
            x, P, w, Sa, Sb = a
            torch.matmul(x, P, out=w)
            if h:
                torch.bmm(w[:, :, :h].transpose(1, 2), w[:, :, :h], out=Sa)
            torch.bmm(w.transpose(1, 2), w[:, :, h:], out=Sb)

    arrays = [[torch.randn(*s, dtype=dtype) for s in shapes] for _ in range(lanes.LANES)]
    blocks = [slice(i, i + 1) for i in range(lanes.LANES * per_lane)]
    feats = Features(torch.zeros(len(blocks), 1), lambda x, out=None: x)

    def lane(i: int, mine: list[slice]) -> None:
        for _ in mine:
            products(arrays[i])

    lanes.run(feats, blocks, lane)
    best = min(_timed(lambda: lanes.run(feats, blocks, lane)) for _ in range(repeats))
    return flops * len(blocks) / best / 1e9


def _scatter(d: int, itemsize: int) -> tuple[int, bool]:
    """How the fit takes the scatter: (h, symmetric). h is the first column half of the float64 scatter
    over column halves (``em_cholesky._Whitened``; 0: one product); ``symmetric``: one symmetric
    ``w^T w``, as float64 takes it where the lanes' products run in numpy (``_device.host_blas``)."""
    if itemsize != 8:
        return 0, False
    if host_blas() == "numpy":
        return 0, True
    return (d // 2 if d >= em_cholesky.SPLIT_MIN_D else 0), False


def _cholesky_flops(rows: int, d: int, k: int, h: int, symmetric: bool = False) -> float:
    """FLOPs of the Cholesky form's products over ``rows`` rows: x P_k, 2 rows K D^2, and the scatter
    over column halves, 2 rows K (h^2 + D (D - h)) (3/4 of 2 rows K D^2 at h = D / 2), or where
    ``symmetric`` (numpy's ``w^T w``) its D (D + 1) / 2 entries, rows K D (D + 1)."""
    scatter = d * (d + 1) / 2 if symmetric else h * h + d * (d - h)
    return 2.0 * rows * k * (d * d + scatter)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def iteration_cost(n: int, d: int, k: int, itemsize: int) -> tuple[str, float, float]:
    """(formulation, FLOPs, bytes) of one EM iteration on full covariances.

    Features: the E-step's (n x Q) @ (Q x K) and the statistics' (K x n) @ (n x Q) products, 4 n Q K
    FLOPs. Cholesky: the E-step's (n x D) @ (D x K D) (2 n K D^2 FLOPs) and the per-component scatter
    (2 n K D^2 in float32; 1.5 n K D^2 in float64, whose symmetric sums skip a quarter). Bytes: what
    must come from memory, the data (phi(X) where it is cached, else X) read once: both products of a
    block, and the arrays between them, take the block while it is in cache (1-4 MiB blocks; this
    script counted a (n, K D) array written and read, and X read three times, before 2026-12-07
    19:45 UTC, a roofline bound by memory that the cached blocks never meet)."""
    q = gaussian.feature_dim(d, "full")
    cached = cache_fits(n, q, itemsize)
    dtype = torch.float64 if itemsize == 8 else torch.float32
    fused = em_cholesky.fused_passes(n, k, d, torch.device("cpu"), dtype)  # as the estimator decides
    form = gaussian.choose_formulation("full", d, k, itemsize, cached, fused)
    if form == "features":
        return form, 4.0 * n * q * k, n * (q if cached else d) * itemsize
    return form, _cholesky_flops(n, d, k, *_scatter(d, itemsize)), n * d * itemsize


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
          "measured s / iter | share of roofline | block-product GFLOP/s | share at that rate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    shape_rates: dict[tuple[str, int, int, int], float] = {}
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
        key = (form, d, k, size)
        if key not in shape_rates:
            shape_rates[key] = block_rate(form, d, k, size)
        shaped = max(flops / (shape_rates[key] * 1e9), nbytes / (bw * 1e9))
        print(f"| {n:.0e} | {d} | {k} | {dtype} | {iters} | {form} | {flops / 1e9:.2f} | "
              f"{nbytes / 1e9:.2f} | {roof:.4f} | {measured:.4f} | {roof / measured:.0%} | "
              f"{shape_rates[key]:.0f} | {shaped / measured:.0%} |")


if __name__ == "__main__":
    main()
