"""build_inference_data: the generic (chain, draw, ...) -> arviz.InferenceData converter."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bayesclust.posterior import _arviz, build_inference_data

az = _arviz()


def _draws(rng, chains=2, draws=40):
    return {
        "mu": rng.normal(size=(chains, draws, 3)),
        "w": torch.from_numpy(rng.dirichlet(np.ones(2), size=(chains, draws))),
    }


def test_groups_shapes_and_values():
    rng = np.random.default_rng(0)
    post = _draws(rng)
    div = np.zeros((2, 40), dtype=bool)
    div[1, 3] = True
    X = rng.normal(size=(10, 3))
    ll = rng.normal(size=(2, 40, 10)) - 3.0
    idata = build_inference_data(
        post,
        sample_stats={"diverging": div},
        observed_data={"X": X},
        log_likelihood={"X": ll},
        dims={"mu": ["feature"], "w": ["component"], "X": ["obs", "feature"]},
        attrs={"inference": "test"},
    )
    assert set(idata.groups()) == {"posterior", "sample_stats", "observed_data", "log_likelihood"}
    np.testing.assert_array_equal(idata.posterior["mu"].values, post["mu"])
    np.testing.assert_array_equal(idata.posterior["w"].values, post["w"].numpy())
    assert idata.posterior["mu"].dims == ("chain", "draw", "feature")
    assert int(idata.sample_stats["diverging"].sum()) == 1
    np.testing.assert_array_equal(idata.observed_data["X"].values, X)
    assert idata.posterior.attrs["inference"] == "test"
    summary = az.summary(idata, var_names=["mu"])
    assert summary.shape[0] == 3
    np.testing.assert_allclose(summary["mean"].to_numpy(), post["mu"].mean((0, 1)), atol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


def test_posterior_only():
    idata = build_inference_data({"a": np.arange(12.0).reshape(1, 12)})
    assert list(idata.groups()) == ["posterior"]
    assert idata.posterior["a"].shape == (1, 12)


def test_errors():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="at least one variable"):
        build_inference_data({})
    with pytest.raises(ValueError, match=r"\(chain, draw, \.\.\.\)"):
        build_inference_data({"a": np.zeros(5)})
    with pytest.raises(ValueError, match="share the chain and draw axes"):
        build_inference_data({"a": np.zeros((2, 5)), "b": np.zeros((2, 6))})
    with pytest.raises(ValueError, match="sample_stats has \\(chain, draw\\)"):
        build_inference_data({"a": np.zeros((2, 5))}, sample_stats={"diverging": np.zeros((1, 5))})
    with pytest.raises(TypeError, match="posterior must be a dict"):
        build_inference_data(rng.normal(size=(2, 5)))
    with pytest.raises(TypeError, match="numeric array"):
        build_inference_data({"a": np.array([[object()]])})
    with pytest.raises(TypeError, match="observed_data must be a dict"):
        build_inference_data({"a": np.zeros((2, 5))}, observed_data=np.zeros(3))
