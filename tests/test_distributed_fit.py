"""Distributed fitting: 2 processes on localhost (gloo) give the fit of one process on the whole data.

One launch of 2 ranks runs every case (GMM-EM, DPGMM split/merge, mean-field VI, a trained head, the
deep DP route, DTIKMeans) on its half of the data; each test compares one case with a single-process
fit with the same seed.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bayesclust as bc
from bayesclust.inference import distributed, streaming
from bayesclust.models import gaussian

WORLD = 2
TIMEOUT_S = 300  # generous: a slow or loaded CI machine must not fail a correct run


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0, 0, 0], [8, 0, 0, 0], [0, 8, 0, 0]])
    X = np.concatenate([rng.normal(size=(200, 4)) + c for c in centres]).astype(np.float32)
    return X[rng.permutation(len(X))]


TIGHT_CENTRE = np.array([16.0, 16.0, 0.0, 0.0])
TIGHT_INIT = np.array([[0.0, 0, 0, 0], [8, 0, 0, 0], [0, 8, 0, 0], TIGHT_CENTRE])  # the same on every rank


def _tight_data() -> np.ndarray:
    """_data() and a fourth cluster of 60 points, 100 times tighter, away from the centre: in float32
    its feature-map sums would cancel, so its statistics are taken centred on its mean (fitted without
    a prior, whose scale would widen it)."""
    rng = np.random.default_rng(1)
    tight = (rng.normal(size=(60, 4)) * 0.01 + TIGHT_CENTRE).astype(np.float32)
    X = np.concatenate([_data(), tight])
    return X[rng.permutation(len(X))]


def _glyphs() -> np.ndarray:
    """120 tiny images (8 x 8) of 3 glyphs (bars and a diagonal), shifted by up to one pixel, noisy.
    Every shard holds pixels at 0 and at 1: DTI's unit-range input frame is computed per process."""
    rng = np.random.default_rng(0)
    protos = np.zeros((3, 8, 8), np.float32)
    protos[0, 3:5, 1:7] = protos[1, 1:7, 3:5] = 1.0
    protos[2][np.eye(8, dtype=bool)] = 1.0
    labels = np.arange(120) % 3
    X = np.stack([np.roll(protos[y], rng.integers(-1, 2, size=2), axis=(0, 1)) for y in labels])
    X = np.clip(X + 0.05 * rng.normal(size=X.shape), 0, 1).astype(np.float32)
    X[:, 0, 0], X[:, 7, 7] = 0.0, 1.0
    return X[rng.permutation(len(X))]


def _glyph_init() -> np.ndarray:
    """Initial prototypes (3, 8, 8) given explicitly: k-means++ on a shard differs from k-means++
    on the whole data (in a distributed fit every rank starts from rank 0's network)."""
    X = _glyphs()
    return np.stack([X[i] for i in (0, 1, 2)])


def _models(world: int) -> dict[str, object]:
    """The cases; the neural routes train full-batch, i.e. on ``1 / world`` of the data per process
    (DistributedDataParallel's per-process batch size), so every step sees the same gradient."""
    n, n_img = len(_data()), len(_glyphs())
    return {
        "gmm": bc.GaussianMixture(3, random_state=0, tol=1e-7, max_iter=300),
        "gmm-cholesky": bc.GaussianMixture(3, random_state=0, tol=1e-7, max_iter=300, formulation="cholesky"),
        "gmm-tight": bc.GaussianMixture(4, init=TIGHT_INIT, prior=None, tol=1e-7, max_iter=300,
                                        dtype="float32", formulation="features"),
        "dpgmm": bc.DPGMM(random_state=0, max_iter=40),
        "vi": bc.DPGMM(inference="vi", truncation=4, random_state=0, max_iter=300, tol=1e-6),
        "head": bc.EntropyClustering(3, head="linear", max_iter=60, batch_size=None, random_state=0, tol=0),
        "deep": bc.DPGMM(inference="deep", random_state=0, max_iter=8, batch_size=n // world, split_delay=2),
        "dti": bc.DTIKMeans(3, transforms=("affine",), init=_glyph_init(), max_iter=30,
                            batch_size=n_img // world, encoder_width=8, feature_dim=8, head_hidden=8,
                            random_state=0),
    }


def _data_for(name: str) -> np.ndarray:
    return {"dti": _glyphs, "gmm-tight": _tight_data}.get(name, _data)()


def _summary(name: str, model) -> dict[str, np.ndarray]:
    out = {"labels": np.asarray(model.labels_)}
    if name == "head":
        out["proba"] = model.predict_proba(_data())
    elif name == "dti":
        out["prototypes"] = np.asarray(model.prototypes_)
    else:
        out["means"], out["weights"] = np.asarray(model.means_), np.asarray(model.weights_)
        out["covariances"] = np.asarray(model.covariances_)
    return out


def _far_rows() -> np.ndarray:
    """Rows far from the origin against their spread: raw second moments would lose the variance."""
    return np.random.default_rng(3).normal(size=(700, 3)) * 1e-3 + 1e6


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=TIMEOUT_S),
    )
    try:
        results = {
            name: _summary(name, model.fit(np.array_split(_data_for(name), WORLD)[rank]))
            for name, model in _models(WORLD).items()
        }
        results["reduce_after"] = streaming.is_reducing()  # the all-reduce is uninstalled after fit
        with distributed.fit_context():  # unequal shards, one of them empty on rank 1
            results["moments"] = streaming.global_moments(torch.from_numpy(_far_rows()[:700 * (1 - rank)]))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    _leave()


def _leave() -> None:
    """End a worker whose results are on disk without the interpreter's finalisation: torch's C++
    teardown at exit (seen here: gloo with its thread pools) aborts a finished worker now and then
    ("terminate called without an active exception", SIGABRT after ``destroy_process_group``), and
    the exit code would fail a run whose results are complete. An error before this point still
    propagates (torch.multiprocessing reports it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fits(tmp_path_factory) -> tuple[list[dict], dict]:
    """Every case fitted by 2 gloo processes, each on its half of the data, and (meanwhile, in this
    process) by one process on the whole data."""
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        single = {name: _summary(name, model.fit(_data_for(name))) for name, model in _models(1).items()}
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish in {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], single


@pytest.fixture(scope="module")
def ranks(fits) -> list[dict]:
    return fits[0]


@pytest.fixture(scope="module")
def single(fits) -> dict:
    return fits[1]


def _match(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """The permutation of got's components that are nearest to ref's (K, D) means."""
    from scipy.optimize import linear_sum_assignment

    cost = ((ref[:, None] - got[None]) ** 2).sum(-1)
    return linear_sum_assignment(cost)[1]


def _check_mixture(name: str, ranks: list[dict], single: dict, atol: float, w_atol: float = 1e-3) -> None:
    ref = single[name]
    for r in ranks:  # every rank holds the same (global) parameters
        np.testing.assert_allclose(r[name]["means"], ranks[0][name]["means"], atol=1e-6)
    got = ranks[0][name]
    assert got["means"].shape == ref["means"].shape
    perm = _match(ref["means"], got["means"])
    np.testing.assert_allclose(got["means"][perm], ref["means"], atol=atol)
    np.testing.assert_allclose(got["weights"][perm], ref["weights"], atol=w_atol)
    np.testing.assert_allclose(got["covariances"][perm], ref["covariances"], atol=10 * atol)
    labels = np.concatenate([r[name]["labels"] for r in ranks])
    inverse = np.argsort(perm)
    np.testing.assert_array_equal(inverse[labels], ref["labels"])


def test_distributed_gmm_em_matches_one_process(ranks, single):
    _check_mixture("gmm", ranks, single, atol=1e-3)


def test_distributed_gmm_cholesky_formulation_matches_one_process(ranks, single):
    _check_mixture("gmm-cholesky", ranks, single, atol=1e-3)


def test_distributed_gmm_centred_components_match_one_process(ranks, single):
    # the tight cluster qualifies: u |b|^2 past the limit in the working frame (mean 0, one scale)
    X = _tight_data().astype(np.float64)
    frame_scale = np.sqrt(X.var(0).mean())
    i = int(np.argmin(single["gmm-tight"]["covariances"].trace(axis1=1, axis2=2)))
    mu = (single["gmm-tight"]["means"][i] - X.mean(0)) / frame_scale
    cov = single["gmm-tight"]["covariances"][i] / frame_scale ** 2
    assert mu @ np.linalg.solve(cov, mu) * 2.0 ** -24 > gaussian.CANCELLATION_LIMIT
    _check_mixture("gmm-tight", ranks, single, atol=1e-3)


def test_distributed_dpgmm_splitmerge_matches_one_process(ranks, single):
    _check_mixture("dpgmm", ranks, single, atol=1e-3)


def test_distributed_meanfield_vi_matches_one_process(ranks, single):
    # stick-breaking weights depend on the components' order, which k-means on rank 0's shard and on
    # the whole data may give differently: the weights agree to 1e-2, the rest to 1e-3
    _check_mixture("vi", ranks, single, atol=1e-3, w_atol=1e-2)


def test_distributed_head_matches_one_process(ranks, single):
    from sklearn.metrics import adjusted_rand_score

    labels = np.concatenate([r["head"]["labels"] for r in ranks])
    assert adjusted_rand_score(labels, single["head"]["labels"]) == 1.0
    np.testing.assert_allclose(ranks[0]["head"]["proba"], ranks[1]["head"]["proba"], atol=1e-5)
    # same clustering; the probabilities agree up to the label order
    got, ref = ranks[0]["head"]["proba"], single["head"]["proba"]
    perm = _match(ref.T, got.T)
    np.testing.assert_allclose(got[:, perm], ref, atol=0.05)


def test_distributed_deep_route_matches_one_process(ranks, single):
    # full-batch Adam steps on the gradient averaged over ranks equal the one-process steps up to the
    # summation order of the loss (~1e-7 relative); the Gaussians are the MAP of the nets' soft
    # assignments, so the means agree to 1e-3 and the labels exactly; split decisions come from the
    # shared random stream (8 epochs: two splits, K = 3 when measured)
    assert single["deep"]["means"].shape[0] >= 2
    _check_mixture("deep", ranks, single, atol=1e-3)


def test_distributed_dti_matches_one_process(ranks, single):
    # every rank holds rank 0's network and applies the same averaged gradient: identical prototypes
    # on both ranks; against one process the full-batch gradients differ only in summation order
    # (~1e-7 relative), which 30 Adam steps keep below 1e-4 on pixels in [0, 1]
    np.testing.assert_allclose(ranks[0]["dti"]["prototypes"], ranks[1]["dti"]["prototypes"], atol=1e-6)
    np.testing.assert_allclose(ranks[0]["dti"]["prototypes"], single["dti"]["prototypes"], atol=1e-4)
    labels = np.concatenate([r["dti"]["labels"] for r in ranks])
    np.testing.assert_array_equal(labels, single["dti"]["labels"])


def test_distributed_global_moments_merge_per_process_moments(ranks):
    # each process's own mean and variance, merged across processes (Chan et al.); rank 1 has no rows
    X = _far_rows()
    for r in ranks:
        n, mean, var = r["moments"]
        assert n == len(X)
        np.testing.assert_allclose(mean.numpy(), X.mean(0), rtol=0, atol=1e-8)  # 1e-5 of the spread
        np.testing.assert_allclose(var.numpy(), X.var(0), rtol=1e-8)  # raw moments: 1e-4 / 1e-6 off


def test_distributed_reduce_is_removed_after_fit(ranks):
    assert not any(r["reduce_after"] for r in ranks)
    assert not distributed.is_distributed() and not streaming.is_reducing()


def test_distributed_unequal_shards_rejected_for_neural_training():
    calls = []

    def fake_sum(t: torch.Tensor) -> torch.Tensor:  # two ranks holding 3 and 5 rows
        calls.append(t)
        return torch.tensor([8.0, 34.0, 2.0], dtype=torch.float64)

    previous = streaming.set_reduce(fake_sum)
    try:
        with pytest.raises(ValueError, match="shards of equal size"):
            distributed.check_equal_shards(3)
    finally:
        streaming.set_reduce(previous)
    assert calls


def test_distributed_neural_routes_refuse_unequal_shards():
    """DTI (its first step) and the deep route (its initialisation) check the shard sizes: with
    unequal shards the ranks would run different numbers of gradient all-reduces."""
    from bayesclust.inference import deepdpm, dti_steps

    previous = streaming.set_reduce(lambda t: torch.tensor([8.0, 34.0, 2.0], dtype=torch.float64))
    try:
        with pytest.raises(ValueError, match="shards of equal size"):
            dti_steps.sync_step({"X": torch.zeros(3, 1, 4, 4), "net": None}, 0)
        feats = streaming.Features(torch.zeros(3, 2), lambda x, out=None: x)
        with pytest.raises(ValueError, match="shards of equal size"):
            deepdpm.init_deep(feats, None, 1.0, torch.Generator())
    finally:
        streaming.set_reduce(previous)


def test_distributed_shard_rows_split_like_array_split(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(np.arange(10)[distributed.shard_rows(10)])
    for got, ref in zip(parts, np.array_split(np.arange(10), 3)):
        np.testing.assert_array_equal(got, ref)
