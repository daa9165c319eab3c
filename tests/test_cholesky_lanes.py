"""The float64 Cholesky passes in lanes: fused kernels (inference._cholesky_kernels), lanes.hold, shared
block queues and the lane threads kept for the process."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesclust.inference import _cholesky_kernels as kernels
from bayesclust.inference import em_cholesky, lanes
from bayesclust.inference.responsibilities import EXP_FLOOR, exp_normalise_
from bayesclust.inference.streaming import ChunkSource, Features, SourceFeatures
from bayesclust.models import gaussian


def _identity(x, out=None):
    return x


def _problem(n=3000, d=5, k=3, seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4
    X = torch.from_numpy(centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).to(dtype)
    A = torch.from_numpy(rng.normal(size=(k, d, d))) * 0.3
    covs = A @ A.transpose(1, 2) + torch.eye(d, dtype=torch.float64)
    params = gaussian.GMMParams(torch.from_numpy(rng.dirichlet(np.ones(k))).to(dtype),
                                torch.from_numpy(centres).to(dtype), covs.to(dtype))
    coef, c = gaussian.cholesky_coefficients(params, "full")
    return X, params, coef, c


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1000.0, 0.0), min_size=1, max_size=300), st.sampled_from([-700.0, -80.0, -5.0]))
def test_exp_rows_is_exp_of_the_floored_values_to_two_ulps(values, floor):
    x = np.array(values)
    out = x.copy()
    kernels._exp_rows(out, floor, np.empty(len(x), dtype=np.int64))
    ref = np.exp(np.maximum(x, floor))
    assert np.all(np.abs(out - ref) <= 2 * np.spacing(ref))


def test_e_block_equals_the_torch_block():
    X, _, coef, c = _problem()
    P = em_cholesky.factors(coef)
    u = torch.matmul(X[:200], P)
    y = u - coef.b.unsqueeze(1)
    logits = em_cholesky._log_prob(y, c[:, None])
    resp, norm, loglik = exp_normalise_(logits.clone(), 0)
    r = resp / norm
    k, d = coef.means.shape
    n, s1 = np.zeros(k), np.zeros((k, d))
    out, work, bits = np.empty((k, 200)), np.empty((2, 256)), np.empty(256, dtype=np.int64)
    w = u.numpy().copy()
    total = kernels.e_block(w, coef.b.numpy(), c.numpy(), EXP_FLOOR[8], out, work, bits, n, s1, True)
    assert total == pytest.approx(float(loglik), rel=1e-13)
    np.testing.assert_allclose(out, r.numpy(), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(w, (r.sqrt().unsqueeze(-1) * y).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(n, r.sum(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(s1, (r.unsqueeze(-1) * y).sum(1).numpy(), rtol=1e-10, atol=1e-12)
    # without weighing: responsibilities and total only, u and the sums untouched
    w2, n2, s2 = u.numpy().copy(), np.zeros(k), np.zeros((k, d))
    total2 = kernels.e_block(w2, coef.b.numpy(), c.numpy(), EXP_FLOOR[8], out, work, bits, n2, s2, False)
    assert total2 == total and np.array_equal(w2, u.numpy()) and not n2.any() and not s2.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_centre_is_the_rows_minus_each_mean(dtype):
    rng = np.random.default_rng(3)
    x, mu = rng.normal(size=(203, 7)).astype(dtype), rng.normal(size=(3, 7)).astype(dtype)
    z = np.empty((3, 203, 7), dtype=dtype)
    kernels.centre(x, mu, z)
    np.testing.assert_array_equal(z, x[None] - mu[:, None])


def test_e_block_centred_equals_the_torch_float32_block():
    X, params, _, _ = _problem(dtype=torch.float32)
    coef, c = gaussian.cholesky_coefficients(params, "full")
    P = em_cholesky.factors(coef)
    z = X[:203].unsqueeze(0) - coef.means.unsqueeze(1)
    y = torch.bmm(z, P)
    logits = (c.double()[:, None] - 0.5 * y.double().square().sum(-1))
    r = torch.softmax(logits, 0)
    k, d = coef.means.shape
    n, s1 = np.zeros(k), np.zeros((k, d))
    out, work, bits = np.empty((k, 203)), np.empty((2, 203)), np.empty(203, dtype=np.int64)
    w = y.numpy().copy()
    total = kernels.e_block_centred(w, z.numpy(), c.double().numpy(), EXP_FLOOR[4], out, work, bits, n, s1,
                                    True)
    assert total == pytest.approx(float(torch.logsumexp(logits, 0).sum()), rel=1e-12)
    np.testing.assert_allclose(out, r.numpy(), rtol=1e-10, atol=1e-30)
    np.testing.assert_allclose(w, (r.unsqueeze(-1) * z.double()).float().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(n, r.sum(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(s1, (r.unsqueeze(-1) * z.double()).sum(1).numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("blas", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("accumulate", [True, False])
def test_fused_e_step_and_labels_equal_the_torch_passes(two_threads, monkeypatch, accumulate, dtype, blas):
    # float32: the kernel takes the responsibilities and first moments in float64, the torch path in
    # float32, so the two agree to float32 rounding. ``blas``: the lanes' products in torch's or numpy's
    # BLAS (_device.host_blas), d = 9 so that float64 takes its split sums with torch, whole with numpy
    monkeypatch.setenv("BAYESCLUST_HOST_BLAS", blas)
    X, _, coef, c = _problem(n=6000, d=9, k=4, seed=1, dtype=dtype)
    tol = dict(rel=1e-13) if dtype == torch.float64 else dict(rel=1e-6)
    feats = Features(X, _identity, chunk_size=512)
    assert em_cholesky._lane_pass(feats, coef) is not None
    ll, G = em_cholesky.e_step(feats, coef, c, accumulate=accumulate)
    labels = em_cholesky.argmax_chunks(feats, coef, c)
    monkeypatch.setattr(em_cholesky, "LANE_MIN_ELEMENTS", float("inf"))
    assert em_cholesky._lane_pass(feats, coef) is None
    ll_t, G_t = em_cholesky.e_step(feats, coef, c, accumulate=accumulate)
    assert ll == pytest.approx(ll_t, **tol)
    if accumulate and dtype == torch.float64:
        torch.testing.assert_close(G, G_t, rtol=1e-11, atol=1e-9)
    elif accumulate:
        torch.testing.assert_close(G, G_t, rtol=1e-5, atol=1e-6 * float(G_t.abs().max()))
    else:
        assert G is None and G_t is None
    assert torch.equal(labels, em_cholesky.argmax_chunks(feats, coef, c))


def test_fused_passes_take_float64_full_covariances_in_memory_above_the_threshold(two_threads, monkeypatch):
    X, params, coef, c = _problem(n=4000)
    feats = Features(X, _identity, chunk_size=256)
    assert em_cholesky._lane_pass(feats, coef) is not None
    p32 = gaussian.GMMParams(params.weights.float(), params.means.float(), params.covariances.float())
    feats32 = Features(X.float(), _identity, chunk_size=256)
    assert em_cholesky._lane_pass(feats32, gaussian.cholesky_coefficients(p32, "full")[0]) is not None
    exact32 = gaussian.cholesky_coefficients(p32, "full", exact=True)[0]  # float64 sums: the torch path
    assert em_cholesky._lane_pass(feats32, exact32) is None
    tied = gaussian.GMMParams(params.weights, params.means, params.covariances[0])
    assert em_cholesky._lane_pass(feats, gaussian.cholesky_coefficients(tied, "tied")[0]) is None
    source = SourceFeatures(ChunkSource(X.numpy()), _identity, torch.zeros(5, dtype=torch.float64))
    assert em_cholesky._lane_pass(source, coef) is None  # out of core: blocks share a buffer
    monkeypatch.setattr(em_cholesky, "LANE_MIN_ELEMENTS", 4000 * 3 * 5 + 1.0)  # N K D
    assert em_cholesky._lane_pass(feats, coef) is None
    monkeypatch.setattr(em_cholesky, "LANE_MIN_ELEMENTS", 4000 * 3 * 5)
    assert em_cholesky._lane_pass(feats, coef) is not None
    coef32 = gaussian.cholesky_coefficients(p32, "full")[0]
    assert em_cholesky._lane_pass(feats32, coef32) is None  # a float32 element counts as half
    monkeypatch.setattr(em_cholesky, "LANE_MIN_ELEMENTS", 4000 * 3 * 5 / 2)
    assert em_cholesky._lane_pass(feats32, coef32) is not None


@pytest.mark.parametrize("blas", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_fit_with_fused_passes_equals_the_torch_fit(two_threads, monkeypatch, dtype, blas):
    import bayesclust as bc

    monkeypatch.setenv("BAYESCLUST_HOST_BLAS", blas)
    X = _problem(n=5000, d=6, k=3, seed=2)[0].numpy()
    runs = []
    for name in ("_fused_e_step", "_fused_centred_e_step"):
        inner = getattr(em_cholesky, name)
        monkeypatch.setattr(em_cholesky, name, lambda *a, _f=inner, **kw: runs.append(1) or _f(*a, **kw))

    def fit():
        return bc.GaussianMixture(3, covariance_type="full", formulation="cholesky", chunk_size=512,
                                  max_iter=8, tol=0, random_state=0, dtype=dtype).fit(X)

    fused = fit()
    assert len(runs) == 8  # every E-step took the fused path
    monkeypatch.setattr(em_cholesky, "LANE_MIN_ELEMENTS", float("inf"))
    plain = fit()
    assert len(runs) == 8
    rel = 1e-12 if dtype == "float64" else 1e-6
    assert fused.lower_bound_ == pytest.approx(plain.lower_bound_, rel=rel)
    np.testing.assert_allclose(fused.covariances_, plain.covariances_, rtol=1e3 * rel, atol=1e-12)
    assert (fused.labels_ == plain.labels_).all()
    assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()


def test_a_hold_keeps_one_thread_from_a_threaded_pass_to_its_end(two_threads):
    feats = Features(torch.zeros(1000, 2), _identity)
    blocks = [slice(s, s + 100) for s in range(0, 1000, 100)]
    with lanes.hold():
        lanes.run(feats, blocks, lambda i, b: None, work=1.0, min_work=2.0)  # in turn: nothing changes
        assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()
        lanes.run(feats, blocks, lambda i, b: None)
        assert torch.get_num_threads() == 1 and lanes._SWITCH.locked()  # the M-step's small work
        assert lanes.threaded(feats, len(blocks))  # the next pass in the hold still threads
        seen = []
        lanes.run(feats, blocks, lambda i, b: seen.append(threading.get_ident()))
        assert len(set(seen)) == 2
    assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()


def test_release_ends_a_hold_early_and_the_next_threaded_pass_takes_it_again(two_threads):
    feats = Features(torch.zeros(1000, 2), _identity)
    blocks = [slice(s, s + 100) for s in range(0, 1000, 100)]
    with lanes.hold():
        lanes.run(feats, blocks, lambda i, b: None)
        assert torch.get_num_threads() == 1 and lanes._SWITCH.locked()
        lanes.release()  # a fallback pass on torch's own threads gets both
        assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()
        lanes.release()  # nothing held: nothing to do
        assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()
        lanes.run(feats, blocks, lambda i, b: None)
        assert torch.get_num_threads() == 1 and lanes._SWITCH.locked()
    assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()


def test_an_em_step_s_fallback_pass_runs_on_both_torch_threads(two_threads, monkeypatch):
    """A fallback inside a held iteration (a covariance broke in the M-step) redoes the E-step on
    torch's own threads (here the exact float32 sums, which take no lanes), not on the one thread
    the hold kept after the threaded pass."""
    from bayesclust.inference import em

    X, params, _, _ = _problem(n=4000, dtype=torch.float32)
    fam = gaussian.GaussianFamily("full", formulation="cholesky")
    feats = Features(X, _identity, chunk_size=256)
    m_step, broke, seen = gaussian.GaussianFamily.m_step, [], []

    def breaks_once(self, G, p):
        if not broke:
            broke.append(True)
            raise gaussian.NotPositiveDefiniteError("a covariance broke")
        return m_step(self, G, p)

    inner = em.e_step

    def spy(*args, **kw):
        seen.append((torch.get_num_threads(), kw.get("exact")))
        return inner(*args, **kw)

    monkeypatch.setattr(gaussian.GaussianFamily, "m_step", breaks_once)
    monkeypatch.setattr(em, "e_step", spy)
    state = {"params": params}
    em.em_step(fam, feats)(state, 0)
    assert seen == [(2, False), (2, True)]  # the threaded pass, then the fallback's exact sums
    assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()


def test_a_hold_restores_the_thread_count_when_its_block_raises(two_threads):
    feats = Features(torch.zeros(1000, 2), _identity)
    with pytest.raises(RuntimeError, match="M-step failed"):
        with lanes.hold():
            lanes.run(feats, [slice(s, s + 100) for s in range(0, 1000, 100)], lambda i, b: None)
            raise RuntimeError("M-step failed")
    assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()


def test_another_threads_pass_runs_in_turn_while_a_hold_keeps_the_switch(two_threads):
    feats = Features(torch.zeros(1000, 2), _identity)
    blocks = [slice(s, s + 100) for s in range(0, 1000, 100)]
    other = []
    with lanes.hold():
        lanes.run(feats, blocks, lambda i, b: None)

        def elsewhere():
            lanes.run(feats, blocks, lambda i, b: other.append(threading.get_ident()))

        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
    assert len(other) == 2 and len(set(other)) == 1  # both lanes on that thread, one after the other


@pytest.mark.parametrize("threads", [True, False])
def test_a_shared_queue_hands_each_block_to_exactly_one_lane(two_threads, threads):
    feats = Features(torch.zeros(1000, 2), _identity)
    blocks = [slice(s, s + 10) for s in range(0, 1000, 10)]
    taken: dict[int, list[slice]] = {0: [], 1: []}

    def lane(i, queue):
        for sl in queue:
            taken[i].append(sl)

    lanes.run(feats, blocks, lane, work=1.0, min_work=0.0 if threads else 2.0, shared=True)
    got = taken[0] + taken[1]
    assert sorted(got, key=lambda s: s.start) == blocks
    if not threads:
        assert taken[0] == blocks and taken[1] == []  # in turn, lane 0 drains the queue


def test_lane_threads_are_kept_and_started_again_in_a_forked_child(two_threads, monkeypatch):
    feats = Features(torch.zeros(1000, 2), _identity)
    blocks = [slice(s, s + 100) for s in range(0, 1000, 100)]
    idents = []

    def lane(i, b):
        if i:
            idents.append(threading.get_ident())

    lanes.run(feats, blocks, lane)
    lanes.run(feats, blocks, lane)
    assert len(idents) == 2 and idents[0] == idents[1]  # one lane thread, kept
    pool = lanes._workers()
    monkeypatch.setattr(lanes.os, "getpid", lambda: -1)  # as a forked child sees itself
    assert lanes._workers() is not pool


def test_auto_takes_the_fused_cholesky_form_only_where_its_passes_would_run_fused(two_threads, monkeypatch):
    import bayesclust as bc

    monkeypatch.setattr(em_cholesky, "LANE_MIN_ELEMENTS", 2.5e6)
    X = np.random.default_rng(4).normal(size=(5000, 32))  # N K D = 2.56e6 >= LANE_MIN_ELEMENTS at K = 16

    def form(**kw):
        return bc.GaussianMixture(16, max_iter=1, tol=0, random_state=0, **kw).fit(X).formulation_

    assert em_cholesky.fused_passes(5000, 16, 32, torch.device("cpu"), torch.float64)
    assert form(dtype="float64") == "cholesky"  # K = D / 2: fused passes, no feature cache to build
    assert form(dtype="float32") == "features"  # float32 fused up to K = D / 4
    assert not em_cholesky.fused_passes(5000, 16, 32, torch.device("cpu"), torch.float32)  # counts half
    assert em_cholesky.fused_passes(10_000, 16, 32, torch.device("cpu"), torch.float32)
    assert not em_cholesky.fused_passes(10_000, 16, 32, torch.device("cpu"), torch.float16)
    X16 = np.random.default_rng(5).normal(size=(80_000, 16))  # N K D / 2 = 2.56e6 at K = 4
    f32 = dict(max_iter=1, tol=0, random_state=0, dtype="float32")
    assert bc.GaussianMixture(4, **f32).fit(X16).formulation_ == "cholesky"  # K = D / 4, fused
    assert bc.GaussianMixture(4, **f32).fit(X16[:40_000]).formulation_ == "features"  # not fused
    X8 = np.random.default_rng(6).normal(size=(80_000, 8))  # N K D = 2.56e6 at K = 4
    f64 = dict(max_iter=1, tol=0, random_state=0, dtype="float64")
    assert bc.GaussianMixture(4, **f64).fit(X8).formulation_ == "cholesky"  # K = D / 2, fused, from D = 4
    assert bc.GaussianMixture(5, **f64).fit(X8).formulation_ == "features"  # K > D / 2
    assert bc.GaussianMixture(4, **f64).fit(X8[:40_000]).formulation_ == "features"  # not fused
    torch.set_num_threads(1)
    assert not em_cholesky.fused_passes(5000, 16, 32, torch.device("cpu"), torch.float64)
    assert form(dtype="float64") == "features"
    torch.set_num_threads(2)
    assert not em_cholesky.fused_passes(4000, 16, 32, torch.device("cpu"), torch.float64)  # below it


def test_lanes_run_in_turn_when_no_lane_thread_can_start(two_threads, monkeypatch):
    # ThreadPoolExecutor.submit raises RuntimeError once the interpreter is shutting down
    class Closed:
        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(lanes, "_workers", lambda: Closed())
    feats = Features(torch.zeros(1000, 2), _identity)
    callers = []
    out = lanes.run(feats, [slice(s, s + 100) for s in range(0, 1000, 100)],
                    lambda i, b: callers.append(threading.get_ident()) or i)
    assert out == [0, 1] and callers == [threading.get_ident()] * 2
    assert torch.get_num_threads() == 2 and not lanes._SWITCH.locked()


def test_lanes_that_call_numpy_s_blas_hold_it_at_one_thread_and_restore_it(two_threads, monkeypatch):
    from bayesclust._device import numpy_blas_controllers

    controllers = numpy_blas_controllers()
    if not controllers:
        pytest.skip("no OpenBLAS is loaded here (numpy's BLAS is another)")
    before = [get() for get, _ in controllers]
    feats = Features(torch.zeros(4096, 2, dtype=torch.float64), _identity, chunk_size=256)
    seen = []

    def lane(i, blocks):
        seen.append([get() for get, _ in controllers])
        return list(blocks)

    slices = list(feats.slices(256))
    for blas, inside in (("numpy", [1] * len(controllers)), ("torch", before)):
        monkeypatch.setenv("BAYESCLUST_HOST_BLAS", blas)
        seen.clear()
        assert sum(len(p) for p in lanes.run(feats, slices, lane)) == len(slices)
        assert seen == [inside] * lanes.LANES
        assert [get() for get, _ in controllers] == before

    def fails(i, blocks):
        raise RuntimeError("a lane failed")

    monkeypatch.setenv("BAYESCLUST_HOST_BLAS", "numpy")
    with pytest.raises(RuntimeError, match="a lane failed"):
        lanes.run(feats, slices, fails)
    assert [get() for get, _ in controllers] == before
