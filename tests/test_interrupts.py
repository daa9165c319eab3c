"""Interrupts at any instant: every estimator x route returns a usable model, torch's grad mode is
restored, later stages stop, and compiled kernels raise KeyboardInterrupt (not SystemError)."""

from __future__ import annotations

import signal
import warnings

import numpy as np
import pytest
import torch

from bayesclust.inference import engine as engine_module
from bayesclust.inference.engine import Engine, Step, deferred_interrupt
from tests.test_contract import CASES


def _interrupt_at(monkeypatch, call: int) -> None:
    """Raise KeyboardInterrupt inside the ``call``-th iteration (0: the first one) of every engine run,
    with grad mode switched off at that instant, as a Ctrl-C inside a no-grad block would leave it."""
    original = Engine._iteration
    calls = {"n": 0}

    def iteration(self, schedule, state, it, result):
        calls["n"] += 1
        if calls["n"] == call + 1:
            torch.set_grad_enabled(False)
            raise KeyboardInterrupt
        return original(self, schedule, state, it, result)

    monkeypatch.setattr(engine_module.Engine, "_iteration", iteration)


@pytest.mark.parametrize("call", [0, 1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_interrupt_returns_a_usable_model(monkeypatch, case, call):
    X = case.data()
    _interrupt_at(monkeypatch, call)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = case.make().fit(X)
    assert torch.is_grad_enabled()
    assert any("interrupted" in str(w.message) for w in caught)
    labels = est.predict(X)
    assert labels.shape == (len(X),) and est.labels_.shape == (len(X),)
    assert est.n_iter_ == call and len(est.history_) == call
    assert est.converged_ is False


def test_interrupted_warm_start_skips_the_route_stage(monkeypatch):
    import bayesclust as bc

    X = np.random.default_rng(0).normal(size=(60, 2))
    _interrupt_at(monkeypatch, 1)
    with pytest.warns(RuntimeWarning, match="EM warm start was interrupted; the svi stage did not run"):
        est = bc.GaussianMixture(2, inference="svi", max_iter=20, random_state=0).fit(X)
    assert est.n_iter_ == 1 and not hasattr(est, "_svi_result")


def test_engine_restores_grad_mode_after_an_interrupt():
    def step(state, it):
        torch.set_grad_enabled(False)
        raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted at iteration 0"):
        res = Engine(max_iter=3, random_state=0).run([Step("s", step)], {"x": torch.zeros(1)})
    assert res.interrupted and res.n_iter == 0 and torch.is_grad_enabled()


def test_deferred_interrupt_raises_after_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
            done.append(True)  # the block (a compiled kernel call) completes first
    assert done == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_em_kernel_interrupt_is_a_keyboard_interrupt(monkeypatch):
    from bayesclust.inference import _em_kernels

    original = _em_kernels._collision_pass

    def kernel(*args):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while the compiled pass runs
        return original(*args)

    monkeypatch.setattr(_em_kernels, "_collision_pass", kernel)
    p = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), 1)
    q = p.clone()
    with pytest.raises(KeyboardInterrupt):
        _em_kernels.em_iteration(p, q, torch.ones(4), "collision", 1e-12)
