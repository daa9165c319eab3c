"""Scaling in N: time and peak memory of GMM-EM and DPGMM (split/merge) against N (D = 32), in one
process, in two processes (torch.distributed, gloo, on this machine) and out of core (a numpy
memmap on disk, read chunk by chunk).

Each (model, mode, N) runs in a fresh Python process with one torch thread (on a machine shared with
other jobs, multi-threaded regions stall when a core is taken; one thread per process is steadier),
which reports the fit's wall time, the
median time of one iteration (engine callbacks) and the peak anonymous resident memory during the
fit (``RssAnon`` sampled every 20 ms: the process's own memory; pages of a memmapped file are page
cache and are not counted) next to the peak resident set (``ru_maxrss``, which counts them).

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --sizes 1e4,1e5 --iters 3     # a quick run
    python benchmarks/bench_scale.py --models dpgmm --dpgmm-max 1e7 --keep   # DPGMM only, GMM rows kept

Writes ``benchmarks/results/scale.md`` (table, fitted log-log slopes, machine, date, command) and
``benchmarks/results/scale.png`` (log-log time and memory against N).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
D, K_TRUE = 32, 8


# ---------------------------------------------------------------------------- one measurement
class PeakMemory:
    """Peak ``RssAnon`` (MiB) of this process, sampled by a thread while ``running``."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def anon_mib() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.anon_mib())
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self.peak = self.anon_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.anon_mib())


def make_data(n: int, seed: int, out: np.ndarray | None = None, block: int = 1_000_000) -> np.ndarray:
    """n points (n, D) float32 of K_TRUE Gaussian blobs, generated block by block into ``out``."""
    centres = np.random.default_rng(12345).normal(size=(K_TRUE, D)) * 4
    X = np.empty((n, D), np.float32) if out is None else out
    rng = np.random.default_rng(seed)
    for start in range(0, n, block):
        m = min(block, n - start)
        X[start : start + m] = centres[rng.integers(K_TRUE, size=m)] + rng.normal(size=(m, D))
    return X


def build_model(model: str, iters: int):
    import bayesclust as bc

    if model == "gmm":
        return bc.GaussianMixture(
            K_TRUE, covariance_type="diag", init="kmeans++", max_iter=iters, tol=0.0, random_state=0
        )
    return bc.DPGMM(max_iter=iters, random_state=0)


def timed_fit(model: str, X, iters: int) -> dict:
    """Fit, with the time of every iteration (engine callbacks) and the peak memory."""
    stamps: list[float] = []
    est = build_model(model, iters)
    est.set_params(callbacks=[lambda *a: stamps.append(time.perf_counter())])
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        est.fit(X)
        total = time.perf_counter() - t0
    per_iter = float(np.median(np.diff(stamps))) if len(stamps) > 1 else float("nan")
    return {"fit_s": total, "iter_s": per_iter, "n_iter": len(stamps), "anon_mib": mem.peak,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "k": int(est.n_components_)}


def _rank_main(rank: int, world: int, port: int, model: str, n: int, iters: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    X = make_data(n // world, seed=1 + rank)
    dist.barrier()
    res = timed_fit(model, X, iters)
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()
    # torch's C++ teardown at interpreter exit now and then aborts a finished gloo worker (SIGABRT,
    # "terminate called without an active exception"); the result is written, so skip finalisation
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def child(model: str, mode: str, n: int, iters: int) -> dict:
    """One measurement in this (fresh) process; printed as JSON by ``--child``."""
    import torch

    torch.set_num_threads(1)  # one thread per process in every mode (a shared machine: see the module doc)
    if mode == "1proc":
        return timed_fit(model, make_data(n, seed=1), iters)
    if mode == "ooc":
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            path = Path(tmp) / "x.npy"
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, D))
            make_data(n, seed=1, out=mm)
            mm.flush()
            del mm
            return timed_fit(model, np.load(path, mmap_mode="r"), iters)
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank_main, args=(2, port, model, n, iters, tmp), nprocs=2, start_method="spawn")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    out = dict(ranks[0])
    out["fit_s"] = max(r["fit_s"] for r in ranks)
    out["anon_mib"] = max(r["anon_mib"] for r in ranks)  # per process
    out["maxrss_mib"] = max(r["maxrss_mib"] for r in ranks)
    return out


# ---------------------------------------------------------------------------- the sweep
def run_one(model: str, mode: str, n: int, iters: int, timeout: float, repeat: int = 1) -> dict:
    """The measurement with the smallest time per iteration of ``repeat`` fresh runs."""
    runs = [_run_once(model, mode, n, iters, timeout) for _ in range(max(1, repeat))]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    best = min(ok, key=lambda r: r["iter_s"] if np.isfinite(r["iter_s"]) else r["fit_s"])
    return {**best, "repeats": len(ok)}


def _run_once(model: str, mode: str, n: int, iters: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", model, mode, str(n), str(iters)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    res = json.loads(lines[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def slope(ns: list[int], ys: list[float]) -> float:
    """Least-squares slope of log y against log N (1: linear in N; 0: flat)."""
    ok = [(n, y) for n, y in zip(ns, ys) if y and np.isfinite(y) and y > 0]
    if len(ok) < 2:
        return float("nan")
    a = np.log10(np.array(ok, dtype=float))
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in sorted({(r["model"], r["mode"]) for r in rows}):
        sel = [r for r in rows if (r["model"], r["mode"]) == key and "error" not in r]
        if not sel:
            continue
        ns = [r["n"] for r in sel]
        label = f"{key[0]} {key[1]}"
        axes[0].loglog(ns, [r["iter_s"] for r in sel], "o-", label=label)
        axes[1].loglog(ns, [r["anon_mib"] for r in sel], "o-", label=label)
    xs = np.array([min(r["n"] for r in rows), max(r["n"] for r in rows)], dtype=float)
    ref = [r for r in rows if "error" not in r and r["n"] == xs[0]]
    if ref:
        y0 = min(r["iter_s"] for r in ref)
        axes[0].loglog(xs, y0 * xs / xs[0], "k:", label="slope 1 (linear)")
    axes[0].set(xlabel="N (D = 32)", ylabel="seconds per iteration", title="time per EM iteration / sweep")
    axes[1].set(xlabel="N (D = 32)", ylabel="peak RssAnon per process (MiB)", title="peak memory")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, {gpu}; torch {torch.__version__}"


_FIELDS = ("model", "mode", "n", "fit_s", "iter_s", "n_iter", "k", "anon_mib", "maxrss_mib")
NOTES = "\n## What the curves say"


def keep_rows(path: Path, measured: list[dict]) -> list[dict]:
    """Rows of ``path``'s table whose (model, mode) is not in ``measured`` (an earlier run's)."""
    if not path.exists():
        return []
    done = {(r["model"], r["mode"]) for r in measured}
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(_FIELDS) or cells[0] not in ("gmm", "dpgmm") or (cells[0], cells[1]) in done:
            continue
        try:
            nums = [float(c) for c in cells[2:]]
        except ValueError:  # an error row
            continue
        row = dict(zip(_FIELDS, cells[:2] + nums))
        row.update(n=int(row["n"]), n_iter=int(row["n_iter"]), k=int(row["k"]), kept=True)
        rows.append(row)
    return rows


def previous_date(path: Path) -> str:
    """The ``- date:`` line of an existing file (when its kept rows were measured)."""
    for line in path.read_text().splitlines():
        if line.startswith("- date:"):
            return line.split(":", 1)[1].strip()
    return "an earlier date"


def read_notes(path: Path) -> str:
    """The hand-written commentary (from ``## What the curves say`` on) of an existing file."""
    if not path.exists():
        return ""
    text = path.read_text()
    return text[text.index(NOTES):] if NOTES in text else ""


def write_markdown(
    rows: list[dict],
    args: argparse.Namespace,
    loads: tuple[str, str],
    path: Path,
    notes: str = "",
    kept: list[dict] | None = None,
) -> None:
    head = "| model | mode | N | fit s | s / iter | iters | K | peak RssAnon MiB | peak RSS MiB |\n"
    head += "|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    body = ""
    for r in rows:
        if "error" in r:
            body += f"| {r['model']} | {r['mode']} | {r['n']:.0e} | {r['error']} | | | | | |\n"
            continue
        body += (f"| {r['model']} | {r['mode']} | {r['n']:.0e} | {r['fit_s']:.2f} | {r['iter_s']:.3f} | "
                 f"{r['n_iter']} | {r['k']} | {r['anon_mib']:.0f} | {r['maxrss_mib']:.0f} |\n")
    slopes = "| model | mode | slope of s/iter vs N | slope of peak RssAnon vs N |\n|---|---|---:|---:|\n"
    for key in sorted({(r["model"], r["mode"]) for r in rows}):
        sel = [r for r in rows if (r["model"], r["mode"]) == key and "error" not in r and r["n"] >= 1e5]
        ns = [r["n"] for r in sel]
        slopes += (f"| {key[0]} | {key[1]} | {slope(ns, [r['iter_s'] for r in sel]):.2f} | "
                   f"{slope(ns, [r['anon_mib'] for r in sel]):.2f} |\n")
    prefix = "flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_scale.py"
    cmd = " ".join([prefix, *sys.argv[1:]])
    text = f"""# Scaling in N (`benchmarks/bench_scale.py`)

- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}
- machine: {machine()}
- command: `{cmd}`
- load average before / after: {loads[0]} / {loads[1]} (a shared machine: other jobs ran meanwhile)
- data: {K_TRUE} Gaussian blobs in D = {D}, float32. GMM-EM: `GaussianMixture({K_TRUE},
  covariance_type="diag", init="kmeans++", tol=0, max_iter={args.iters})`; DPGMM:
  `DPGMM(max_iter={args.dpgmm_iters})` (split/merge), N up to {args.dpgmm_max:.0e}.
  Every process runs one torch thread. Modes: `1proc` (one process), `2proc` (two processes on this
  machine, torch.distributed gloo, each generating and fitting half of the data), `ooc` (one process,
  the data in a numpy memmap on disk read chunk by chunk; GMM-EM initialises on a sample of 100,000
  rows, DPGMM split/merge starts from one cluster and reads every pass from the memmap).{_kept_line(kept)}
- each measurement is the fastest of {args.repeat} fresh runs for N < {args.repeat_below:.0e} (one run above).
- columns: `fit s` the whole fit (initialisation included; for 2proc the slower rank); `s / iter` the median
  time of one EM iteration or sampler sweep; peak `RssAnon` the process's own memory during the fit (per
  process for 2proc); peak RSS also counts memmapped file pages (page cache).

{head}{body}
Log-log slopes over N >= 1e5 (1 = linear in N, 0 = flat):

{slopes}
![time and memory against N](scale.png)
{notes}"""
    path.write_text(text)


def _kept_line(kept: list[dict] | None) -> str:
    if not kept:
        return ""
    pairs = ", ".join(sorted({f"{r['model']} {r['mode']}" for r in kept}))
    return (f"\n- rows of {pairs} are kept from the run of {kept[0].get('date', 'an earlier date')} "
            "recorded in this file (`--keep`, same machine and command without it); the date and load "
            "above are this command's.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    p.add_argument("--iters", type=int, default=5, help="GMM-EM iterations per fit")
    p.add_argument("--dpgmm-iters", type=int, default=4, help="DPGMM sweeps per fit")
    p.add_argument("--dpgmm-max", type=float, default=1e6, help="largest N for DPGMM")
    p.add_argument("--modes", default="1proc,2proc,ooc")
    p.add_argument("--models", default="gmm,dpgmm")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--repeat", type=int, default=2, help="runs below --repeat-below (the fastest kept)")
    p.add_argument("--repeat-below", type=float, default=5e6)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--keep", action="store_true",
                   help="keep the rows of (model, mode) pairs this command does not measure from the "
                        "existing scale.md (e.g. to rerun DPGMM only)")
    p.add_argument("--child", nargs=4, metavar=("MODEL", "MODE", "N", "ITERS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        model, mode, n, iters = args.child
        print(json.dumps(child(model, mode, int(n), int(iters))), flush=True)
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            for n in sizes:
                if model == "dpgmm" and n > args.dpgmm_max:
                    continue
                iters = args.iters if model == "gmm" else args.dpgmm_iters
                repeat = args.repeat if n < args.repeat_below else 1
                res = {"model": model, "mode": mode, "n": n,
                       **run_one(model, mode, n, iters, args.timeout, repeat)}
                rows.append(res)
                print(json.dumps(res), flush=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kept = keep_rows(out / "scale.md", rows) if args.keep else []
    for r in kept:
        r["date"] = previous_date(out / "scale.md")
    notes = read_notes(out / "scale.md")
    plot(kept + rows, out / "scale.png")
    write_markdown(kept + rows, args, (load_before, load_after), out / "scale.md", notes, kept)
    print(f"wrote {out / 'scale.md'} and {out / 'scale.png'}")


if __name__ == "__main__":
    main()
