"""The inference engine: convergence, history, callbacks, checkpoints, interrupts, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from bayesclust import ConvergenceWarning, Engine, NonFiniteError, Step
from bayesclust._device import make_generator, resolve_device, resolve_dtype


def _halving_step(state, it):
    state["x"] = state["x"] / 2
    return float(state["x"])


def test_converges_on_tol_and_records_history():
    eng = Engine(device="cpu", max_iter=100, tol=1e-3, maximize=False)
    res = eng.run([Step("halve", _halving_step)], {"x": torch.tensor(1.0)})
    assert res.converged
    assert res.history == pytest.approx([0.5**i for i in range(1, res.n_iter + 1)])
    assert abs(res.history[-1] - res.history[-2]) < 1e-3 <= abs(res.history[-2] - res.history[-3])


def test_tol_zero_runs_all_iterations_and_warns():
    eng = Engine(device="cpu", max_iter=7, tol=0.0)
    res = eng.run([Step("halve", _halving_step)], {"x": torch.tensor(1.0)})
    assert res.n_iter == 7 and not res.converged
    eng = Engine(device="cpu", max_iter=3, tol=1e-12)
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=3"):
        eng.run([Step("halve", _halving_step)], {"x": torch.tensor(1.0)})


def test_step_every_and_start():
    calls = []
    eng = Engine(device="cpu", max_iter=10, tol=0)
    eng.run([Step("a", lambda s, i: calls.append(i), every=3, start=2)], {})
    assert calls == [2, 5, 8]


def test_callback_stops():
    eng = Engine(device="cpu", max_iter=50, tol=0, callbacks=[lambda e, it, obj, st: it == 4])
    res = eng.run([Step("halve", _halving_step)], {"x": torch.tensor(1.0)})
    assert res.n_iter == 5


def test_non_finite_objective_raises_with_iteration():
    def bad(state, it):
        return float("nan") if it == 3 else 1.0

    with pytest.raises(NonFiniteError, match="step 'bad' produced a non-finite objective .* iteration 3"):
        Engine(device="cpu", max_iter=10, tol=0).run([Step("bad", bad)], {})


def test_keyboard_interrupt_keeps_best_state():
    def step(state, it):
        if it == 5:
            raise KeyboardInterrupt
        state["x"] = torch.tensor(float([1, 5, 3, 2, 4][it]))
        return float(state["x"])

    state = {"x": torch.tensor(0.0)}
    with pytest.warns(RuntimeWarning, match="interrupted at iteration 5; kept the best state"):
        res = Engine(device="cpu", max_iter=10, tol=0, maximize=True).run([Step("s", step)], state)
    assert res.interrupted
    assert float(state["x"]) == 5.0


def test_checkpoint_and_resume(tmp_path):
    path = tmp_path / "ck.pt"
    module = torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(module.weight)

    def step(state, it):
        with torch.no_grad():
            state["net"].weight += 1.0
        state["count"] = state["count"] + 1
        return float(state["net"].weight.detach().sum())

    eng = Engine(device="cpu", max_iter=4, tol=0, checkpoint_path=path, checkpoint_every=2)
    eng.run([Step("s", step)], {"net": module, "count": 0})
    assert path.exists()
    fresh = torch.nn.Linear(2, 1)
    state = {"net": fresh, "count": 0}
    eng2 = Engine(device="cpu", max_iter=6, tol=0, checkpoint_path=path, resume=True)
    res = eng2.run([Step("s", step)], state)
    assert state["count"] == 6 and res.n_iter == 6
    assert torch.allclose(fresh.weight, torch.full_like(fresh.weight, 6.0))
    assert len(res.history) == 6


class _Pair:  # not a dataclass: a checkpoint holding it cannot be loaded safely
    def __init__(self, a):
        self.a = a


def test_checkpoint_with_a_dataclass_state_resumes(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Params:
        w: torch.Tensor
        n: int

    def step(state, it):
        state["p"] = Params(state["p"].w + 1.0, state["p"].n + 1)
        return float(state["p"].w.sum())

    path = tmp_path / "ck.pt"
    Engine(device="cpu", max_iter=3, tol=0, checkpoint_path=path, checkpoint_every=1).run(
        [Step("s", step)], {"p": Params(torch.zeros(2), 0)})
    state = {"p": Params(torch.zeros(2), 0)}
    eng = Engine(device="cpu", max_iter=5, tol=0, checkpoint_path=path, resume=True)
    res = eng.run([Step("s", step)], state)
    assert isinstance(state["p"], Params) and state["p"].n == 5 and res.n_iter == 5
    assert torch.equal(state["p"].w, torch.full((2,), 5.0))


def test_checkpoint_crafted_to_run_code_is_refused_without_running_it(tmp_path):
    import pickle

    ran = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (ran.write_text, ("pwned",))

    path = tmp_path / "ck.pt"
    torch.save({"iteration": 1, "state": {"x": Evil()}, "history": [], "step_history": {},
                "generator": torch.Generator().get_state()}, path, pickle_module=pickle)
    eng = Engine(device="cpu", max_iter=2, tol=0, checkpoint_path=path, resume=True)
    with pytest.raises(ValueError, match="is not a checkpoint this engine can resume from safely"):
        eng.run([Step("s", lambda st, it: 0.0)], {"x": torch.zeros(1)})
    assert not ran.exists()


def test_checkpoint_of_a_plain_object_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "ck.pt"
    Engine(device="cpu", max_iter=1, tol=0, checkpoint_path=path).run(
        [Step("s", lambda st, it: 0.0)], {"obj": _Pair(1)})
    eng = Engine(device="cpu", max_iter=2, tol=0, checkpoint_path=path, resume=True)
    with pytest.raises(ValueError, match=f"{path.name} is not a checkpoint .* pass resume=False"):
        eng.run([Step("s", lambda st, it: 0.0)], {"obj": _Pair(1)})


def test_batches_cover_all_indices_and_are_seeded():
    a = Engine(device="cpu", random_state=0)
    b = Engine(device="cpu", random_state=0)
    ba = torch.cat(list(a.batches(103, 10)))
    bb = torch.cat(list(b.batches(103, 10)))
    assert torch.equal(ba, bb)
    assert torch.equal(ba.sort().values, torch.arange(103))
    assert [s.stop - s.start for s in Engine.chunks(10, 4)] == [4, 4, 2]


def test_device_and_dtype_resolution_errors():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_dtype("float64") is torch.float64
    with pytest.raises(ValueError, match="dtype='float16' is not supported"):
        resolve_dtype("float16")
    with pytest.raises(ValueError, match="not a valid device"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(TypeError, match="random_state must be an int or None"):
        make_generator("seed")


def test_host_blas_follows_the_environment_and_picks_numpy_only_off_intel_with_mkl(monkeypatch):
    from bayesclust import _device

    for choice in ("torch", "numpy"):
        monkeypatch.setenv("BAYESCLUST_HOST_BLAS", choice)
        assert _device.host_blas() == choice
    monkeypatch.setenv("BAYESCLUST_HOST_BLAS", "openblas")
    with pytest.raises(ValueError, match="BAYESCLUST_HOST_BLAS='openblas' is not supported; use one of auto"):
        _device.host_blas()
    monkeypatch.setenv("BAYESCLUST_HOST_BLAS", "auto")
    cases = [("GenuineIntel", True, ("lib",), "torch"), ("", True, ("lib",), "torch"),
             ("AuthenticAMD", False, ("lib",), "torch"), ("AuthenticAMD", True, (), "torch"),
             ("AuthenticAMD", True, ("lib",), "numpy"), ("HygonGenuine", True, ("lib",), "numpy")]
    for vendor, mkl, controllers, expected in cases:
        _device._auto_host_blas.cache_clear()
        monkeypatch.setattr(_device, "cpu_vendor", lambda v=vendor: v)
        monkeypatch.setattr(_device.torch.backends.mkl, "is_available", lambda m=mkl: m)
        monkeypatch.setattr(_device, "numpy_blas_controllers", lambda c=controllers: c)
        assert _device.host_blas() == expected, (vendor, mkl, controllers)
    _device._auto_host_blas.cache_clear()


def test_no_warning_when_converged():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Engine(device="cpu", max_iter=100, tol=1e-2, maximize=False).run(
            [Step("halve", _halving_step)], {"x": torch.tensor(1.0)}
        )


def test_run_in_stages_equals_one_run():
    """stop_at ends a call early; passing its result back continues with the same history."""
    calls = []

    def step(state, it):
        calls.append(it)
        return _halving_step(state, it)

    whole = Engine(device="cpu", max_iter=8, tol=0).run(
        [Step("halve", _halving_step)], {"x": torch.tensor(1.0)}
    )
    eng = Engine(device="cpu", max_iter=8, tol=0)
    state = {"x": torch.tensor(1.0)}
    first = eng.run([Step("halve", step)], state, stop_at=3)
    assert first.n_iter == 3 and calls == [0, 1, 2] and not first.stopped
    assert eng.run([Step("halve", step)], state, stop_at=50, result=first) is first  # capped at max_iter
    assert calls == list(range(8))
    assert first.n_iter == 8 and first.history == whole.history


def test_callback_stop_is_recorded():
    eng = Engine(device="cpu", max_iter=50, tol=0, callbacks=[lambda e, it, obj, st: it == 2])
    res = eng.run([Step("halve", _halving_step)], {"x": torch.tensor(1.0)})
    assert res.stopped and res.n_iter == 3
    plain = Engine(device="cpu", max_iter=3, tol=0)
    assert not plain.run([Step("h", _halving_step)], {"x": torch.tensor(1.0)}).stopped


def test_keep_best_keys_snapshot_only_those():
    """keep_best=(keys): only those keys are copied at each new best and restored on interrupt;
    keep_best=False keeps the interrupted state as it is."""

    def step(state, it):
        if it == 5:
            raise KeyboardInterrupt
        state["x"] = torch.tensor(float([1, 5, 3, 2, 4][it]))
        state["buf"] = torch.full((3,), float(it))
        return float(state["x"])

    for keep, want_x in ((("x",), 5.0), (False, 4.0)):
        state = {"x": torch.tensor(0.0), "buf": torch.zeros(3)}
        with pytest.warns(RuntimeWarning, match="interrupted at iteration 5"):
            Engine(device="cpu", max_iter=10, tol=0, keep_best=keep).run([Step("s", step)], state)
        assert float(state["x"]) == want_x
        assert torch.equal(state["buf"], torch.full((3,), 4.0))  # never snapshotted: left as is
    with pytest.raises(TypeError, match="keep_best must be True, False or a sequence of state keys"):
        Engine(device="cpu", keep_best="x")
    with pytest.raises(TypeError, match="keep_best must be True, False or a sequence of state keys"):
        Engine(device="cpu", keep_best=("x", 3))
    with pytest.raises(TypeError, match="keep_best must be True, False or a sequence of state keys"):
        Engine(device="cpu", keep_best=3)
    eng = Engine(device="cpu", max_iter=2, keep_best=("x", "y"))
    with pytest.raises(ValueError, match=r"keep_best names keys that are not in the state: \['y'\]"):
        eng.run([Step("s", step)], {"x": torch.tensor(0.0)})
