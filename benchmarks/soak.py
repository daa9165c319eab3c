"""Soak test: many random fits across every estimator and route, counting what must never happen.

Each trial draws an estimator x route, N, D, K, a unit change (scale and offset), a dtype, a seed and
sometimes an interrupt at a random iteration, then fits and checks:

- crash: an exception that is not a ValueError / TypeError with a message (bad draws are allowed to
  be refused, never to crash);
- nan: non-finite labels, probabilities or scores;
- roundtrip: save / load changes ``predict`` or ``predict_proba``;
- units: the labels on the unit-changed data differ from the labels on the data itself (well
  separated blobs, float64);
- interrupt: an interrupted fit does not give a usable model.

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/soak.py --trials 1000
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import bayesclust as bc
from bayesclust.inference import engine as engine_module

ROUTES = [
    ("GaussianMixture", "em"), ("GaussianMixture", "svi"), ("GaussianMixture", "nuts"),
    ("DPGMM", "splitmerge"), ("DPGMM", "vi"), ("DPGMM", "deep"),
    ("DTIKMeans", "-"), ("DTIGMM", "-"), ("EntropyClustering", "mi"), ("EntropyClustering", "collision"),
]


def _make(name: str, route: str, k: int, seed: int):
    if name == "GaussianMixture":
        kw = {"max_iter": 30} if route != "nuts" else {"num_samples": 8, "warmup_steps": 8, "num_chains": 1}
        cov = ["full", "diag", "tied", "spherical"][seed % 4]
        return bc.GaussianMixture(k, covariance_type=cov, inference=route, random_state=seed, **kw)
    if name == "DPGMM":
        return bc.DPGMM(inference=route, max_iter=15, random_state=seed)
    if name.startswith("DTI"):
        cls = getattr(bc, name)
        return cls(k, transforms=("affine",), max_iter=6, batch_size=16, encoder_width=8, feature_dim=8,
                   head_hidden=8, random_state=seed)
    return bc.EntropyClustering(max(k, 2), loss=route, max_iter=3, warmup=1, random_state=seed)


def _data(name: str, n: int, d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if name.startswith("DTI"):
        protos = rng.uniform(0, 1, size=(k, 8, 8)) > 0.6
        return protos[rng.integers(0, k, n)] + 0.05 * rng.normal(size=(n, 8, 8))
    centres = rng.normal(0, 10, size=(k, d))
    return centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))


def _interrupt_at(call: int):
    original = engine_module.Engine._iteration
    calls = {"n": 0}

    def iteration(self, schedule, state, it, result):
        calls["n"] += 1
        if calls["n"] == call + 1:
            raise KeyboardInterrupt
        return original(self, schedule, state, it, result)

    engine_module.Engine._iteration = iteration
    return original


def _predictions(est, X) -> tuple[np.ndarray, np.ndarray | None]:
    proba = est.predict_proba(X) if hasattr(est, "predict_proba") else None
    return est.predict(X), proba


def trial(i: int, rng: np.random.Generator, counts: Counter, log: list[str]) -> None:
    name, route = ROUTES[rng.integers(len(ROUTES))]
    k, seed = int(rng.integers(1, 5)), int(rng.integers(0, 10_000))
    n, d = int(rng.integers(max(2 * k, 8), 120)), int(rng.integers(1, 6))
    X = _data(name, n, d, k, rng)
    scale, offset = 10.0 ** rng.uniform(-6, 6), float(rng.choice([0.0, 1e3, -1e6]))
    dtype = "float64" if rng.uniform() < 0.3 else "float32"
    interrupt = int(rng.integers(0, 3)) if rng.uniform() < 0.2 else None
    tag = f"{i} {name}[{route}] n={n} d={d} k={k} seed={seed} scale={scale:.3g} offset={offset:g}"
    try:
        est = _make(name, route, k, seed).set_params(dtype=dtype)
        original = _interrupt_at(interrupt) if interrupt is not None else None
        try:
            est.fit(X * scale + offset)
        finally:
            if original is not None:
                engine_module.Engine._iteration = original
        labels, proba = _predictions(est, X * scale + offset)
        if not np.all(np.isfinite(labels)) or (proba is not None and not np.all(np.isfinite(proba))):
            counts["nan"] += 1
            log.append(f"nan: {tag}")
        with tempfile.TemporaryDirectory() as tmp:
            est.save(Path(tmp) / "m.pt")
            back = type(est).load(Path(tmp) / "m.pt")
        l2, p2 = _predictions(back, X * scale + offset)
        if not np.array_equal(labels, l2) or (proba is not None and not np.allclose(proba, p2)):
            counts["roundtrip"] += 1
            log.append(f"roundtrip: {tag}")
        if interrupt is None:
            ref = _make(name, route, k, seed).set_params(dtype="float64").fit(X)
            again = _make(name, route, k, seed).set_params(dtype="float64").fit(X * scale + offset)
            if not np.array_equal(ref.labels_, again.labels_):
                counts["units"] += 1
                log.append(f"units: {tag}")
        counts["ok"] += 1
    except (ValueError, TypeError) as exc:
        counts["refused"] += 1
        if not str(exc):
            counts["crash"] += 1
            log.append(f"empty message: {tag}")
    except Exception:  # noqa: BLE001 - counting what escapes is the point
        counts["crash"] += 1
        log.append(f"crash: {tag}\n{traceback.format_exc(limit=3)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    counts: Counter = Counter()
    log: list[str] = []
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(args.trials):
            trial(i, rng, counts, log)
    print(f"# soak {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC | {platform.machine()} | "
          f"torch {torch.__version__} | {args.trials} trials, seed {args.seed}, {time.time() - start:.0f} s")
    for key in ("ok", "refused", "crash", "nan", "roundtrip", "units"):
        print(f"{key}: {counts[key]}")
    for line in log[:40]:
        print(line)


if __name__ == "__main__":
    main()
