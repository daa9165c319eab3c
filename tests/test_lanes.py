"""inference.lanes: a pass's blocks dealt over lanes run by threads of single-threaded torch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesclust.inference import _cholesky_kernels as kernels
from bayesclust.inference import _feature_kernels as feature_kernels
from bayesclust.inference import em, em_cholesky, lanes
from bayesclust.inference.streaming import ChunkSource, Features, SourceFeatures
from bayesclust.models import gaussian


def _identity(x, out=None):
    return x


def _blocks(n, step):
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


def test_blocks_are_dealt_round_robin_and_results_come_in_lane_order(two_threads):
    feats = Features(torch.zeros(1000, 2), _identity)
    seen = {}

    def lane(i, blocks):
        seen[i] = (blocks, threading.get_ident(), torch.get_num_threads())
        return i * 10

    slices = _blocks(1000, 100)
    assert lanes.threaded(feats, len(slices))
    assert lanes.run(feats, slices, lane) == [0, 10]
    assert seen[0][0] == slices[0::2] and seen[1][0] == slices[1::2]
    assert seen[0][1] != seen[1][1]  # two threads
    assert seen[0][2] == seen[1][2] == 1  # one intra-op thread each
    assert torch.get_num_threads() == 2  # restored


def test_lanes_run_in_order_on_the_callers_thread_where_blocks_could_share_a_buffer(two_threads):
    X = torch.zeros(1000, 2)
    uncached = Features(X, lambda x, out=None: torch.cat([x, x], 1), cache_bytes=0)
    source = SourceFeatures(ChunkSource(X.numpy()), _identity, torch.zeros(2))
    slices = _blocks(1000, 100)
    for feats in (uncached, source):
        assert not lanes.threaded(feats, len(slices))
    cached = Features(X, _identity)
    assert not lanes.threaded(cached, lanes.MIN_BLOCKS - 1)
    lanes.MIN_WORK = 1e9
    assert not lanes.threaded(cached, len(slices), work=5e8) and lanes.threaded(cached, len(slices), work=1e9)
    for threads in (1, 3):  # only the case measured: exactly two torch threads
        torch.set_num_threads(threads)
        assert not lanes.threaded(cached, len(slices))
    order = []
    lanes.run(uncached, slices, lambda i, blocks: order.append((i, threading.get_ident())))
    assert order == [(0, threading.get_ident()), (1, threading.get_ident())]


def test_an_error_in_a_lane_is_raised_on_the_caller_and_the_thread_count_restored(two_threads):
    feats = Features(torch.zeros(1000, 2), _identity)

    def lane(i, blocks):
        if i == 1:
            raise ValueError("lane 1 failed")
        return i

    with pytest.raises(ValueError, match="lane 1 failed"):
        lanes.run(feats, _blocks(1000, 100), lane)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threaded_e_step_equals_the_lanes_run_in_turn(two_threads, monkeypatch, dtype):
    # the same blocks summed in the same order: equal to rounding inside the blocks' operations
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(5000, 6))).to(dtype)
    fam = gaussian.GaussianFamily("full", formulation="features")
    params = gaussian.GMMParams(torch.full((3,), 1 / 3, dtype=dtype), X[:3].clone(),
                                torch.eye(6, dtype=torch.float64).repeat(3, 1, 1))
    A, c = fam.log_prob_coefficients(params)
    feats = Features(X, fam.feature_map, chunk_size=256)
    assert lanes.threaded(feats, 20, em._work(feats, A, 2))
    ll, G = em.e_step(feats, A, c)
    labels = em.argmax_chunks(feats, A, c)
    monkeypatch.setattr(lanes, "threaded", lambda *args: False)
    ll_seq, G_seq = em.e_step(feats, A, c)
    assert ll == pytest.approx(ll_seq, rel=1e-12 if dtype == torch.float64 else 1e-6)
    torch.testing.assert_close(G, G_seq, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-8)
    assert torch.equal(labels, em.argmax_chunks(feats, A, c))


def test_absorbed_centred_sums_equal_one_pass():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(600, 4)))
    r = torch.softmax(torch.from_numpy(rng.normal(size=(600, 3))), 1)
    params = gaussian.GMMParams(torch.full((3,), 1 / 3, dtype=torch.float64), x[:3].clone(),
                                torch.eye(4, dtype=torch.float64).repeat(3, 1, 1))
    coef, _ = gaussian.cholesky_coefficients(params, "full")
    one, a, b = (em_cholesky.CentredSums(coef.means) for _ in range(3))
    one.add(x, r)
    a.add(x[:250], r[:250])
    b.add(x[250:], r[250:])
    torch.testing.assert_close(a.absorb(b).total(), one.total(), rtol=1e-12, atol=1e-10)


def test_threaded_e_step_with_centred_components_equals_the_lanes_run_in_turn(two_threads, monkeypatch):
    # float32, a tight far cluster taken centred (em.Centred): each lane keeps its own centred sums
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(size=(4000, 3)), rng.normal(size=(400, 3)) * 1e-3 + 30.0])
    fam = gaussian.GaussianFamily("full", formulation="features")
    p32 = gaussian.GMMParams(torch.tensor([0.9, 0.1]), torch.tensor([[0.0] * 3, [30.0] * 3]),
                             torch.stack([torch.eye(3), torch.eye(3) * 1e-6]).double())
    A, c = fam.log_prob_coefficients(p32)
    centred = em.centred_set(fam, p32)
    assert centred is not None
    feats = Features(torch.from_numpy(X.astype(np.float32)), fam.feature_map, chunk_size=256)
    ll, G = em.e_step(feats, A, c, centred=centred)
    monkeypatch.setattr(lanes, "threaded", lambda *args: False)
    ll_seq, G_seq = em.e_step(feats, A, c, centred=centred)
    assert ll == pytest.approx(ll_seq, rel=1e-6)
    torch.testing.assert_close(G, G_seq, rtol=1e-5, atol=1e-4)


def test_pass_work_counts_float32_flops_as_half():
    feats = Features(torch.zeros(1000, 4, dtype=torch.float64), _identity)
    A64 = torch.zeros(14, 3, dtype=torch.float64)
    assert em._work(feats, A64, 2) == 2 * 2 * 1000 * 14 * 3
    assert em._work(feats, A64.float(), 1) == 1000 * 14 * 3


def test_a_pass_runs_its_lanes_in_turn_while_another_pass_has_switched_the_thread_count(two_threads):
    # the thread count is global: a second threaded pass at the same time (a fit in another thread)
    # must not switch it, or it could restore one thread for good
    feats = Features(torch.zeros(1000, 2), _identity)
    callers = []
    with lanes._SWITCH:
        lanes.run(feats, _blocks(1000, 100), lambda i, blocks: callers.append(threading.get_ident()))
        assert torch.get_num_threads() == 2
    assert callers == [threading.get_ident()] * 2
    callers.clear()
    lanes.run(feats, _blocks(1000, 100), lambda i, blocks: callers.append(threading.get_ident()))
    assert len(set(callers)) == 2 and not lanes._SWITCH.locked()


def test_fits_in_two_user_threads_leave_the_thread_count_as_it_was(two_threads):
    import bayesclust as bc

    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(3000, 6)), rng.normal(size=(3000, 6)) + 5.0])

    def fit():
        return bc.GaussianMixture(2, covariance_type="full", formulation="features", chunk_size=256,
                                  max_iter=5, tol=0, random_state=0).fit(X)

    alone = fit().labels_
    results = []
    workers = [threading.Thread(target=lambda: results.append(fit().labels_)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert torch.get_num_threads() == 2
    assert len(results) == 2 and all((r == alone).all() for r in results)


@settings(max_examples=40, deadline=None)  # m past several of _normalise's 512-row tiles
@given(st.integers(1, 70), st.integers(1, 1300), st.floats(0.1, 500.0), st.integers(0, 2**31 - 1))
def test_normalise_counts_is_the_softmax_its_log_likelihood_and_the_counts(k, m, scale, seed):
    logits = np.random.default_rng(seed).normal(size=(k, m)) * scale
    ref = torch.from_numpy(logits)
    r, n = logits.copy(), np.full(k, 2.0)
    total = kernels.normalise_counts(r, -700.0, np.empty((2, m)), np.empty(m, dtype=np.int64), n, True)
    assert total == pytest.approx(float(torch.logsumexp(ref, 0).sum()), rel=1e-13, abs=1e-10)
    expected = torch.softmax(ref, 0).clamp(min=0).numpy()
    np.testing.assert_allclose(r, expected, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(n, 2.0 + expected.sum(1), rtol=1e-12)
    unchanged = np.zeros(k)
    work, bits = np.empty((2, m)), np.empty(m, dtype=np.int64)
    kernels.normalise_counts(logits.copy(), -700.0, work, bits, unchanged, False)
    assert not unchanged.any()


def _feature_problem(n=6000, d=3, k=3, seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    X = torch.from_numpy(rng.normal(size=(n, d)) + rng.integers(0, k, n)[:, None] * 3.0).to(dtype)
    fam = gaussian.GaussianFamily("full", formulation="features")
    params = gaussian.GMMParams(torch.full((k,), 1 / k, dtype=dtype), X[:k].clone(),
                                torch.eye(d, dtype=torch.float64).repeat(k, 1, 1))
    A, c = fam.log_prob_coefficients(params)
    return Features(X, fam.feature_map, chunk_size=512), A, c, fam, params


# mode: what _fused_slices takes; (K, settings): "threads" below FUSED_DIRECT_MIN_K copies (m, K) logits
_MODES = {"rows": (3, {}), "threads": (3, {"FUSED_ROWS_MAX_Q": 0}), "threads direct": (9, {}),
          "turn": (3, {"FUSED_ROWS_MAX_Q": 0, "FUSED_MIN_ELEMENTS": float("inf")})}


def _patch(monkeypatch, settings):
    for name, value in settings.items():
        monkeypatch.setattr(lanes if name.startswith("lanes.") else em, name.split(".")[-1], value)


@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("mode", list(_MODES))
def test_fused_feature_e_step_equals_the_torch_lane(two_threads, monkeypatch, accumulate, mode):
    k, settings = _MODES[mode]
    feats, A, c, _, _ = _feature_problem(k=k)
    _patch(monkeypatch, settings)
    assert em._fused_slices(feats, A, False, None)[2] == mode.split()[0]
    ll, G = em.e_step(feats, A, c, accumulate=accumulate)
    monkeypatch.setattr(em, "_fused_slices", lambda *args: None)
    ll_t, G_t = em.e_step(feats, A, c, accumulate=accumulate)
    assert ll == pytest.approx(ll_t, rel=1e-12)
    if accumulate:
        torch.testing.assert_close(G, G_t, rtol=1e-10, atol=1e-8)
    else:
        assert G is None and G_t is None


@pytest.mark.parametrize("accumulate", [True, False])
def test_float32_rows_take_the_rows_mode_in_float64(two_threads, monkeypatch, accumulate):
    feats, A, c, _, _ = _feature_problem(k=3, dtype=torch.float32)
    assert em._fused_slices(feats, A, False, None)[2] == "rows"
    assert em._fused_slices(feats, A, True, None)[2] == "rows"  # exact: float64 products, as here
    ll, G = em.e_step(feats, A, c, accumulate=accumulate)
    logits = feats.cache.double() @ A.double() + c.double()  # the float32 rows' own log densities
    assert ll == pytest.approx(float(torch.logsumexp(logits, 1).sum()), rel=1e-12)
    if accumulate:
        r = torch.softmax(logits, 1)
        expected = torch.cat([r.T @ feats.cache.double(), r.sum(0)[:, None]], 1)
        torch.testing.assert_close(G, expected, rtol=1e-10, atol=1e-8)
    monkeypatch.setattr(em, "_fused_slices", lambda *args: None)  # the float32 torch lane
    ll_t, G_t = em.e_step(feats, A, c, accumulate=accumulate)
    assert ll == pytest.approx(ll_t, rel=1e-5)
    if accumulate:
        torch.testing.assert_close(G, G_t, rtol=1e-4, atol=1e-3)


def test_rows_passes_sum_their_blocks_in_one_order_whichever_lane_took_them(two_threads, monkeypatch):
    feats, A, c, _, _ = _feature_problem(n=9000, k=4, seed=2)
    blocks, _, mode = em._fused_slices(feats, A, False, None)
    assert mode == "rows" and lanes.threaded(feats, len(blocks))
    (sums,) = em._rows_pass(feats, A, c, True, blocks)
    monkeypatch.setattr(lanes, "MIN_BLOCKS", 10**9)  # one lane on the caller's thread takes them all
    (alone,) = em._rows_pass(feats, A, c, True, blocks)
    assert sums.total == alone.total
    assert torch.equal(sums.GT, alone.GT) and torch.equal(sums.counts, alone.counts)


def test_fused_feature_passes_take_float64_in_memory_without_centred_components(two_threads, monkeypatch):
    feats, A, c, fam, params = _feature_problem(k=3)
    rows = em._fused_slices(feats, A, False, None)
    assert rows is not None and rows[1:] == (6000 * 3, "rows")  # Q = 10 <= FUSED_ROWS_MAX_Q, K <= 4
    assert len(rows[0]) == 6000 // 512 + 1  # blocks of _ROWS_BLOCK rows, capped at chunk_size
    monkeypatch.setattr(em, "FUSED_ROWS_MAX_Q", 0)
    threaded = em._fused_slices(feats, A, False, None)
    assert threaded is not None and threaded[1:] == (6000 * 3, "threads")
    assert len(threaded[0]) == 6000 // 512 + 1  # (K, m) blocks of 256 KiB, capped at chunk_size rows
    assert em._fused_slices(feats, A, True, None) is None  # float64 products of float32 blocks
    centred = em.Centred(torch.tensor([0]), *([None] * 3))
    assert em._fused_slices(feats, A, False, centred) is None
    f32, A32, _, _, _ = _feature_problem(k=3, dtype=torch.float32)
    assert em._fused_slices(f32, A32, False, None) is None  # outside the rows mode float32 keeps torch
    source = SourceFeatures(ChunkSource(feats.X.numpy()), fam.feature_map, torch.zeros(3, dtype=A.dtype))
    assert em._fused_slices(source, A, False, None) is None  # out of core
    monkeypatch.setattr(em, "FUSED_MIN_ELEMENTS", 6000 * 9 + 1.0)  # below it: in turn, K = 3 <= 4
    in_turn = em._fused_slices(feats, A, False, None)
    assert in_turn is not None and in_turn[2] == "turn"
    assert len(in_turn[0]) == len(threaded[0])  # chunk_size caps both
    wide, A9, _, _, _ = _feature_problem(k=9)
    assert em._fused_slices(wide, A9, False, None) is None  # in turn only up to FUSED_TURN_MAX_K
    monkeypatch.setattr(em, "FUSED_MIN_ELEMENTS", 0.0)
    monkeypatch.setattr(em, "FUSED_MAX_Q", A.shape[0] - 1)  # Q = 10 columns at D = 3
    assert em._fused_slices(feats, A, False, None) is None


def test_rows_mode_takes_few_columns_and_components_in_threads(two_threads, monkeypatch):
    wide, A4, _, _, _ = _feature_problem(d=4, k=4)  # Q = 15
    assert em._fused_slices(wide, A4, False, None)[2] == "rows"
    monkeypatch.setattr(lanes, "MIN_BLOCKS", 10**9)  # lanes in turn: the in-turn form
    assert em._fused_slices(wide, A4, False, None)[2] == "turn"
    monkeypatch.setattr(lanes, "MIN_BLOCKS", 4)
    monkeypatch.setattr(em, "FUSED_MIN_ELEMENTS", 6000 * 4 + 1.0)  # below it: the in-turn form
    assert em._fused_slices(wide, A4, False, None)[2] == "turn"
    monkeypatch.setattr(em, "FUSED_MIN_ELEMENTS", 0.0)
    five, A5, _, _, _ = _feature_problem(d=3, k=5)  # K above FUSED_ROWS_MAX_K
    assert em._fused_slices(five, A5, False, None)[2] == "threads"
    big, A6, _, _, _ = _feature_problem(d=6, k=2)  # Q = 28 above FUSED_ROWS_MAX_Q
    assert em._fused_slices(big, A6, False, None)[2] == "threads"


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 21), st.integers(1, 700), st.floats(0.01, 30.0),
       st.integers(0, 2**31 - 1))
def test_feature_rows_is_the_softmax_its_statistics_and_log_likelihood(k, q, m, scale, seed):
    rng = np.random.default_rng(seed)
    phi, A, c = rng.normal(size=(m, q)), rng.normal(size=(q, k)) * scale, rng.normal(size=k) * scale
    tile = feature_kernels.TILE
    n, G = np.full(k, 1.0), np.full((k, q), 1.0)
    args = (np.empty(k * tile), np.empty(q * tile), np.empty((2, tile)), np.empty(tile, dtype=np.int64))
    total = feature_kernels.feature_rows(phi, A, c, -700.0, *args, n, G, True)
    logits = torch.from_numpy(phi @ A + c)
    assert total == pytest.approx(float(torch.logsumexp(logits, 1).sum()), rel=1e-12, abs=1e-9)
    r = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose(n, 1.0 + r.sum(0), rtol=1e-12)
    np.testing.assert_allclose(G, 1.0 + r.T @ phi, rtol=1e-10, atol=1e-9)
    unchanged = np.zeros((k, q))
    feature_kernels.feature_rows(phi, A, c, -700.0, *args, n, unchanged, False)
    assert not unchanged.any()
    labels = np.empty(m, dtype=np.int64)
    feature_kernels.feature_argmax(phi, A, c, args[0], args[1], labels)
    np.testing.assert_array_equal(labels, np.argmax(phi @ A + c, 1))


def test_labels_pass_takes_the_rows_kernel_for_few_columns_and_equals_torch(two_threads, monkeypatch):
    feats, A, c, _, _ = _feature_problem(k=7)
    assert em._rows_labels(feats, A, None) is not None
    labels = em.argmax_chunks(feats, A, c)
    monkeypatch.setattr(em, "FUSED_MIN_ELEMENTS", float("inf"))  # the kernel on the caller's thread
    torch.testing.assert_close(labels, em.argmax_chunks(feats, A, c), rtol=0, atol=0)
    assert em._rows_labels(feats, A, em.Centred(torch.tensor([0]), *([None] * 3))) is None
    f32, A32, c32, _, _ = _feature_problem(k=7, dtype=torch.float32)
    assert em._rows_labels(f32, A32, None) is not None  # float32 rows, taken in float64
    logits = f32.cache.double() @ A32.double() + c32.double()
    torch.testing.assert_close(em.argmax_chunks(f32, A32, c32), torch.max(logits, 1).indices, rtol=0, atol=0)
    wide, A4, _, _, _ = _feature_problem(d=4, k=2)  # Q = 15
    assert em._rows_labels(wide, A4, None) is None
    monkeypatch.setattr(em, "FUSED_LABELS_MAX_K", 6)
    assert em._rows_labels(feats, A, None) is None
    torch.testing.assert_close(labels, em.argmax_chunks(feats, A, c), rtol=0, atol=0)


def test_a_fit_with_fused_feature_passes_equals_the_torch_fit(two_threads, monkeypatch):
    import bayesclust as bc

    X = _feature_problem(n=5000, d=2, k=3, seed=3)[0].X.numpy()
    kw = dict(max_iter=8, tol=0, random_state=0, dtype="float64", formulation="features")
    fused = bc.GaussianMixture(3, **kw).fit(X)
    monkeypatch.setattr(em, "_fused_slices", lambda *args: None)
    monkeypatch.setattr(em, "_rows_labels", lambda *args: None)
    plain = bc.GaussianMixture(3, **kw).fit(X)
    assert fused.lower_bound_ == pytest.approx(plain.lower_bound_, rel=1e-12)
    np.testing.assert_allclose(fused.means_, plain.means_, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(fused.labels_, plain.labels_)
