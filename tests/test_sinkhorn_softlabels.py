"""Pseudo-label solvers: Sinkhorn variants and marginals, SeLa balance, SwAV codes, EM monotonicity."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bayesclust.inference.sinkhorn import (
    SinkhornProblem,
    sela_labels,
    sinkhorn,
    sinkhorn_kernel,
    sinkhorn_log,
    sinkhorn_overrelaxed,
    swav_codes,
)
from bayesclust.inference.softlabels import em_soft_labels, one_hot_into, soft_label_objective

SETTINGS = settings(max_examples=25, deadline=None)


def _logits(n, k, seed, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=dtype) * scale


@SETTINGS
@given(
    st.integers(2, 60), st.integers(2, 8), st.integers(0, 10_000), st.floats(0.1, 10.0), st.integers(1, 50)
)
@example(n=11, k=5, seed=80, lam=3.0, chunk=1)  # near-block-sparse kernel: 7,358 iterations to 1e-9
def test_sinkhorn_marginals_match(n, k, seed, lam, chunk):
    lk = lam * _logits(n, k, seed).log_softmax(1)
    g = torch.Generator().manual_seed(seed + 1)
    r = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    c = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    # Sinkhorn converges linearly at a rate set by the kernel; over 3,000 draws from this strategy
    # 0.13% needed more than 5,000 iterations to reach 1e-9 (the most: 9,376), none more than 50,000.
    res = sinkhorn(lk, r, c, max_iter=50_000, tol=1e-9, dtype="float64", chunk_size=chunk)
    assert res.converged and res.error <= 1e-9 and res.n_iter == len(res.errors)
    plan = res.log_plan(lk).exp()
    assert torch.allclose(plan.sum(1), r / r.sum(), atol=1e-9)
    assert torch.allclose(plan.sum(0), c / c.sum(), atol=1e-8)


def test_sinkhorn_float64_option_and_stopping_rule():
    lk = 5 * _logits(300, 10, 0, dtype=torch.float32).log_softmax(1)
    loose = sinkhorn(lk, max_iter=1000, tol=1e-2)
    tight = sinkhorn(lk, max_iter=5000, tol=1e-10, dtype="float64")
    assert loose.converged and loose.error <= 1e-2 and loose.n_iter < tight.n_iter
    assert tight.log_v.dtype == torch.float64 and tight.error <= 1e-10
    few = sinkhorn(lk, max_iter=2, tol=1e-12)
    assert few.n_iter == 2 and not few.converged and few.error > 1e-12
    # errors are those of the iterates: the stopping value is the last one
    assert few.errors[-1] == few.error


def test_sinkhorn_chunking_is_exact():
    lk = _logits(101, 7, 3).log_softmax(1) * 5
    a = sinkhorn(lk, max_iter=50, tol=0.0)
    b = sinkhorn(lk, max_iter=50, tol=0.0, chunk_size=17)
    assert torch.allclose(a.log_v, b.log_v, atol=1e-10) and torch.allclose(a.log_u, b.log_u, atol=1e-10)


def test_sela_labels_are_balanced_and_follow_predictions():
    z = _logits(1000, 10, 1)
    z[:, 0] += 4.0  # most points would pick cluster 0 by argmax
    labels, res = sela_labels(z.log_softmax(1), lam=10.0, tol=1e-6, max_iter=500, dtype="float64")
    counts = torch.bincount(labels, minlength=10)
    assert torch.bincount(z.argmax(1), minlength=10)[0] > 300  # argmax is far from balanced
    assert counts.max() - counts.min() <= 0.1 * 100 and res.converged
    # large lambda with balanced predictions: labels equal the argmax
    zb = _logits(1000, 10, 2, scale=10.0)
    lb, _ = sela_labels(zb.log_softmax(1), lam=50.0, max_iter=500)
    assert (lb == zb.argmax(1)).float().mean() > 0.9  # argmax counts are only roughly balanced


def test_swav_codes_rows_and_queue():
    z = _logits(32, 5, 4)
    z[:, 0] += 3.0
    codes = swav_codes(z, epsilon=0.5, n_iter=50)
    assert torch.allclose(codes.sum(1), torch.ones(32, dtype=z.dtype), atol=1e-10)
    assert torch.allclose(codes.sum(0), torch.full((5,), 32 / 5, dtype=z.dtype), atol=1e-3)
    q = _logits(200, 5, 5)
    with_q = swav_codes(z, epsilon=0.5, n_iter=50, queue=q)
    assert with_q.shape == (32, 5) and not torch.allclose(with_q, codes)
    with pytest.raises(ValueError, match="queue must have shape"):
        swav_codes(z, queue=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        swav_codes(z, epsilon=0.0)


@SETTINGS
@given(
    st.integers(2, 40),
    st.integers(2, 6),
    st.integers(0, 10_000),
    st.floats(0.01, 20.0),
    st.sampled_from(["collision", "reverse"]),
    st.integers(1, 13),
    st.sampled_from(["fused", "torch"]),
)
def test_em_objective_is_monotone(n, k, seed, lam, loss, chunk, backend):
    p = _logits(n, k, seed).softmax(1)
    res = em_soft_labels(p, lam, loss=loss, max_iter=30, tol=0.0, chunk_size=chunk, backend=backend)
    h = res.objective
    assert all(b <= a + 1e-12 * max(1.0, abs(a)) for a, b in zip(h, h[1:]))
    assert torch.allclose(res.y.sum(1), torch.ones(n, dtype=p.dtype), atol=1e-10)
    # history[i] is F at the i-th iterate: the first is F at the initial y (sigma floored)
    y0 = p.clamp_min(1e-6)
    y0 = y0 / y0.sum(1, keepdim=True)
    assert math.isclose(h[0], soft_label_objective(p, y0, lam, loss), rel_tol=1e-9, abs_tol=1e-12)


def test_em_reaches_the_convex_minimum():
    p = _logits(30, 4, 7, scale=1.0).softmax(1)
    for loss in ("collision", "reverse"):
        res = em_soft_labels(p, 2.0, loss=loss, max_iter=3000, tol=1e-13)
        best = soft_label_objective(p, res.y, 2.0, loss)
        g = torch.Generator().manual_seed(0)
        for _ in range(50):  # no nearby feasible point is better (convex: local = global)
            y = (res.y.log() + 0.05 * torch.randn(res.y.shape, generator=g, dtype=p.dtype)).softmax(1)
            assert soft_label_objective(p, y, 2.0, loss) >= best - 1e-9


def test_em_small_lambda_gives_argmax():
    p = _logits(200, 6, 8).softmax(1)
    res = em_soft_labels(p, 1e-4, max_iter=400, tol=0.0)
    assert torch.equal(res.y.argmax(1), p.argmax(1))
    exact = em_soft_labels(p, 0.0)
    assert torch.equal(exact.y, torch.nn.functional.one_hot(p.argmax(1), 6).double())


def test_em_large_lambda_balances():
    p = _logits(600, 3, 9).softmax(1)
    p[:, 0] += 2.0
    p = p / p.sum(1, keepdim=True)
    res = em_soft_labels(p, 20.0, max_iter=300, tol=1e-12)
    assert (res.y.mean(0) - 1 / 3).abs().max() < 0.05
    assert (p.mean(0) - 1 / 3).abs().max() > 0.2


def test_errors():
    p = torch.rand(5, 3)
    with pytest.raises(ValueError, match="2-D tensor"):
        sinkhorn(torch.rand(5))
    with pytest.raises(ValueError, match="col_marginal must be a positive"):
        sinkhorn(p, col_marginal=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="loss='kl' is not supported"):
        em_soft_labels(p, loss="kl")
    with pytest.raises(ValueError, match="lam must be >= 0"):
        em_soft_labels(p, -1.0)
    with pytest.raises(ValueError, match="lam must be > 0"):
        sela_labels(p.log(), lam=0.0)
    with pytest.raises(FloatingPointError, match="non-finite potentials"):
        sinkhorn(torch.tensor([[0.0, -math.inf], [0.0, -math.inf]]))


def test_kernel_path_matches_log_domain():
    lk = 8 * _logits(500, 20, 11, dtype=torch.float32).log_softmax(1)
    fast = sinkhorn(lk, max_iter=30, tol=0.0, method="kernel")
    slow = sinkhorn(lk, max_iter=30, tol=0.0, method="log")
    assert fast.method == "kernel" and slow.method == "log" and fast.n_iter == slow.n_iter == 30
    assert torch.allclose(fast.log_plan(lk).exp(), slow.log_plan(lk).exp(), rtol=1e-4, atol=1e-9)
    assert all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6) for a, b in zip(fast.errors, slow.errors))
    # float64 kernel path at a tight tolerance
    t = sinkhorn(lk.double(), max_iter=5000, tol=1e-12)
    assert t.method == "kernel" and t.converged and t.log_v.dtype == torch.float64


def test_underflowing_kernel_is_rescued_in_the_log_domain():
    # column 1 is >= e^-756 below the rest of its row: exp underflows even in float64
    lk = torch.tensor([[0.0, -300.0, -1.0], [0.0, -301.0, -2.0], [-1.0, -302.0, 0.0]]).repeat(20, 1)
    auto = sinkhorn(lk, max_iter=300, tol=1e-4, dtype="float64", scale=2.7, prescale=0)
    ref = sinkhorn(lk, max_iter=300, tol=1e-4, dtype="float64", scale=2.7, method="log")
    assert auto.method == "kernel+log" and auto.converged  # rescued by exact log iterations
    # the max-plus prescaling shifts that column back into range: the fast path then suffices
    pre = sinkhorn(lk, max_iter=300, tol=1e-4, dtype="float64", scale=2.7)
    assert pre.method == "kernel" and pre.converged
    want = ref.log_plan(2.7 * lk.double()).exp()
    assert torch.allclose(pre.log_plan(2.7 * lk.double()).exp(), want, atol=1e-5)
    plan = auto.log_plan(2.7 * lk.double()).exp()
    assert torch.allclose(plan.sum(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(plan, ref.log_plan(2.7 * lk.double()).exp(), atol=1e-5)
    with pytest.raises(FloatingPointError, match="kernel Sinkhorn under/overflowed after 0 iterations"):
        sinkhorn(lk, method="kernel", dtype="float64", scale=2.7, prescale=0)
    with pytest.raises(FloatingPointError, match="overwrite=True destroyed the log-kernel"):
        sinkhorn(lk.clone(), overwrite=True, scale=2.7, prescale=0)
    with pytest.raises(ValueError, match="prescale must be >= 0"):
        sinkhorn(lk, prescale=-1)


def test_sela_overwrite_gives_the_same_labels():
    z = _logits(400, 8, 12, dtype=torch.float32)
    lp = z.log_softmax(1)
    a, ra = sela_labels(lp, lam=5.0, tol=1e-4)
    buf = lp.clone()
    b, rb = sela_labels(buf, lam=5.0, tol=1e-4, overwrite=True)
    assert torch.equal(a, b) and ra.n_iter == rb.n_iter and rb.method == "kernel"
    assert not torch.equal(buf, lp) and float(buf.max()) == 1.0  # buf now holds the kernel
    with pytest.raises(ValueError, match="overwrite=True needs dtype equal"):
        sela_labels(lp, overwrite=True, dtype="float64")
    with pytest.raises(ValueError, match="method='exp' is not supported"):
        sinkhorn(lp, method="exp")


def test_em_in_place_buffer_and_shape_errors():
    p = _logits(50, 4, 13).softmax(1)
    ref = em_soft_labels(p, 1.0, max_iter=7, tol=0.0)
    buf = p.clone()
    got = em_soft_labels(p, 1.0, max_iter=7, tol=0.0, init=buf, out=buf, chunk_size=8)
    assert got.y is buf and torch.allclose(got.y, ref.y, atol=1e-12)
    with pytest.raises(ValueError, match="init has shape"):
        em_soft_labels(p, init=p[:3])
    with pytest.raises(ValueError, match="out must be a torch.float64 tensor of shape"):
        em_soft_labels(p, out=torch.empty(50, 4))


@SETTINGS
@given(
    st.integers(1, 300),
    st.integers(2, 40),
    st.integers(0, 10_000),
    st.floats(0.01, 10.0),
    st.sampled_from(["collision", "reverse"]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_fused_em_iteration_matches_torch_ops(n, k, seed, lam, loss, dtype):
    """One compiled one-pass iteration = one iteration of the chunked torch ops, in either dtype."""
    from bayesclust.inference import _em_kernels
    from bayesclust.inference.softlabels import _em_iteration_torch

    p = _logits(n, k, seed, dtype=dtype).softmax(1)
    q0 = _logits(n, k, seed + 1, dtype=dtype).softmax(1)
    b = lam / k / q0.sum(0)
    tiny = torch.finfo(dtype).tiny * 1e6
    q1, q2 = q0.clone(), q0.clone()
    col1, data1 = _em_iteration_torch(p, q1, b, loss, tiny, chunk_size=7)
    col2, data2 = _em_kernels.em_iteration(p, q2, b, loss, tiny)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(q1, q2, atol=tol, rtol=tol)
    assert torch.allclose(col1, col2, atol=tol * n, rtol=tol)
    assert math.isclose(-data1, data2, rel_tol=tol, abs_tol=tol * n)


@SETTINGS
@given(st.integers(1, 200), st.integers(2, 30), st.integers(0, 10_000), st.floats(0.0, 10.0),
       st.sampled_from(["collision", "reverse"]), st.booleans())
def test_fused_em_solver_matches_torch_ops(n, k, seed, lam, loss, warm):
    p = _logits(n, k, seed).softmax(1)
    init = _logits(n, k, seed + 1).softmax(1) if warm else None
    kw = dict(loss=loss, max_iter=12, tol=1e-12, init=init)
    a = em_soft_labels(p, lam, backend="torch", **kw)
    b = em_soft_labels(p, lam, backend="fused", **kw)
    assert a.n_iter == b.n_iter and torch.allclose(a.y, b.y, atol=1e-10, rtol=0)
    assert all(math.isclose(u, v, rel_tol=1e-10, abs_tol=1e-12) for u, v in zip(a.objective, b.objective))


def test_fused_em_does_not_depend_on_the_thread_count():
    p = _logits(1000, 17, 3, dtype=torch.float32).softmax(1)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = em_soft_labels(p, 1.0, max_iter=5, tol=0.0, backend="fused")
        torch.set_num_threads(2)
        two = em_soft_labels(p, 1.0, max_iter=5, tol=0.0, backend="fused")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one.y, two.y) and one.objective == two.objective


def test_em_backend_errors():
    p = _logits(20, 3, 1).softmax(1)
    with pytest.raises(ValueError, match="backend='numba' is not supported"):
        em_soft_labels(p, backend="numba")
    with pytest.raises(ValueError, match="backend='fused' needs contiguous CPU float32/float64 tensors"):
        em_soft_labels(p.T.contiguous().T, backend="fused")  # a transposed (non-contiguous) view
    with pytest.raises(ValueError, match="backend='fused' needs contiguous CPU float32/float64 tensors"):
        em_soft_labels(p, init=p.float(), backend="fused")  # mixed dtypes
    # "auto" falls back to the torch ops for such inputs and agrees with them
    auto = em_soft_labels(p.T.contiguous().T, max_iter=4, tol=0.0)
    ref = em_soft_labels(p, max_iter=4, tol=0.0, backend="torch")
    assert torch.allclose(auto.y, ref.y, atol=1e-12)


def test_objective_without_fairness_is_finite_for_unused_classes():
    p = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]], dtype=torch.float64)
    res = em_soft_labels(p, 0.0)  # lam = 0: one-hot argmax labels, class 2 unused
    assert res.objective == [pytest.approx(-math.log(0.9 * 0.8) / 2)]


@SETTINGS
@given(
    st.integers(30, 120), st.integers(2, 8), st.integers(0, 10_000), st.floats(1.0, 10.0),
    st.floats(1.0, 1.95),
)
def test_over_relaxed_sinkhorn_marginals_match(n, k, seed, lam, omega):
    """Over-relaxation changes the path, not the fixed point: the relaxed iterates converge to a
    scaling diag(u) G diag(v) with the requested marginals, which is unique (Sinkhorn, 1967), so it is
    the plain algorithm's plan (compared directly in the next test). 2,000 scratch draws from this
    strategy needed at most 15,030 iterations."""
    lk = _logits(n, k, seed).log_softmax(1)
    fast = sinkhorn(lk, max_iter=200_000, tol=1e-10, scale=lam, relax=omega)
    assert fast.converged and fast.method == "kernel"
    plan = fast.log_plan(lam * lk).exp()
    assert torch.allclose(plan.sum(1), torch.full((n,), 1 / n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(plan.sum(0), torch.full((k,), 1 / k, dtype=torch.float64), atol=1e-9)


def test_over_relaxation_cuts_iterations_on_a_peaked_kernel():
    """SeLa's sigma^25 on imbalanced predictions: omega = 1.9 needs far fewer iterations."""
    g = torch.Generator().manual_seed(0)
    n, k = 4000, 50
    z = 2.0 * torch.randn(n, k, generator=g)
    z[torch.arange(n), torch.randint(0, k, (n,), generator=g)] += 4.0
    lp = (z + torch.linspace(0, 2, k)).log_softmax(1)
    a, plain = sela_labels(lp, 25.0, max_iter=2000, tol=1e-3, relax=1.0)
    b, fast = sela_labels(lp, 25.0, max_iter=2000, tol=1e-3)  # relax=1.9 by default
    assert plain.converged and fast.converged
    assert fast.n_iter < 0.7 * plain.n_iter
    assert (a == b).float().mean() > 0.99  # the same labels up to near-ties
    # the same plan, to a tight tolerance, in float64
    lp64 = lp.double()
    p1 = sinkhorn(lp64, max_iter=20_000, tol=1e-11, scale=25.0)
    p2 = sinkhorn(lp64, max_iter=20_000, tol=1e-11, scale=25.0, relax=1.9)
    assert p1.converged and p2.converged and p2.n_iter < p1.n_iter
    assert torch.allclose(p1.log_plan(25.0 * lp64).exp(), p2.log_plan(25.0 * lp64).exp(), atol=1e-10)
    with pytest.raises(ValueError, match="relax must be < 2"):
        sinkhorn(lp, relax=2.0)
    with pytest.raises(ValueError, match="relax must be >= 1"):
        sinkhorn(lp, relax=0.5)


def _problem(lk: torch.Tensor, scale: float, max_iter: int, tol: float) -> SinkhornProblem:
    n, k = lk.shape
    return SinkhornProblem(
        lk, torch.full((n,), -math.log(n), dtype=lk.dtype), torch.full((k,), -math.log(k), dtype=lk.dtype),
        torch.zeros(k, dtype=lk.dtype), scale, max_iter, tol, chunk_size=64, dtype=lk.dtype,
    )


def test_dispatcher_runs_the_named_variant():
    """sinkhorn(method=...) is the variant it names, on the same problem: log, kernel (relax 1) or
    over-relaxed (relax > 1); "kernel" raises where "auto" rescues (rescue=False / True)."""
    lk = _logits(200, 6, 21).log_softmax(1)
    kw = dict(max_iter=400, tol=1e-9, chunk_size=64)
    pairs = [
        (sinkhorn(lk, method="log", scale=4.0, **kw), sinkhorn_log(_problem(lk, 4.0, 400, 1e-9))),
        (sinkhorn(lk, method="kernel", scale=4.0, **kw),
         sinkhorn_kernel(_problem(lk, 4.0, 400, 1e-9), rescue=False)),
        (sinkhorn(lk, scale=4.0, relax=1.7, **kw), sinkhorn_overrelaxed(_problem(lk, 4.0, 400, 1e-9), 1.7)),
    ]
    for via, direct in pairs:
        assert via.method == direct.method and via.errors == direct.errors
        assert torch.equal(via.log_u, direct.log_u) and torch.equal(via.log_v, direct.log_v)
    assert [p[0].method for p in pairs] == ["log", "kernel", "kernel"]
    assert pairs[2][0].n_iter < pairs[1][0].n_iter  # the over-relaxed path is the faster one here
    # relax=1 through the over-relaxed variant is plain Sinkhorn
    plain = sinkhorn_overrelaxed(_problem(lk, 4.0, 400, 1e-9), 1.0, rescue=False)
    assert plain.errors == pairs[1][0].errors


def test_one_hot_into_writes_in_place():
    out = torch.full((4, 3), 7.0)
    got = one_hot_into(out, torch.tensor([2, 0, 1, 2]))
    assert got is out and torch.equal(out, torch.eye(3)[[2, 0, 1, 2]])
