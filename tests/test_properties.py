"""Property tests over every estimator x route: random shapes, input dtypes, units and fit dtypes.

Each fit must give labels (N,) in [0, n_components_), probabilities (where the estimator has them)
that are finite and sum to one, ``predict`` labels (N,) in range, and parameters without NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayesclust as bc

pytestmark = pytest.mark.usefixtures("one_thread")

TABULAR = {
    "gmm-em": lambda k, rs: bc.GaussianMixture(k, max_iter=10, random_state=rs),
    "gmm-em-diag-ml": lambda k, rs: bc.GaussianMixture(k, covariance_type="diag", prior=None, max_iter=10,
                                                       random_state=rs, reg_covar=1e-3),
    "gmm-svi": lambda k, rs: bc.GaussianMixture(k, inference="svi", max_iter=5, random_state=rs),
    "gmm-nuts": lambda k, rs: bc.GaussianMixture(k, inference="nuts", covariance_type="diag", num_samples=4,
                                                 warmup_steps=4, num_chains=1, random_state=rs),
    "dpgmm-splitmerge": lambda k, rs: bc.DPGMM(max_iter=6, random_state=rs),
    "dpgmm-vi": lambda k, rs: bc.DPGMM(inference="vi", max_iter=10, random_state=rs),
    "dpgmm-deep": lambda k, rs: bc.DPGMM(inference="deep", max_iter=2, random_state=rs),
    "entropy-defaults": lambda k, rs: bc.EntropyClustering(k, max_iter=3, random_state=rs),
    "entropy-mlp-collision": lambda k, rs: bc.EntropyClustering(k, head="mlp", hidden=8, loss="collision",
                                                                max_iter=3, random_state=rs),
    "entropy-sela": lambda k, rs: bc.EntropyClustering(k, loss="sela", max_iter=3, random_state=rs),
}
IMAGES = {
    "dti-kmeans": lambda k, rs: bc.DTIKMeans(k, transforms=("affine",), max_iter=4, batch_size=16, n_init=1,
                                            encoder_width=8, feature_dim=8, head_hidden=8, random_state=rs),
    "dti-gmm": lambda k, rs: bc.DTIGMM(k, transforms=("affine",), max_iter=4, batch_size=16, n_init=1,
                                      encoder_width=8, feature_dim=8, head_hidden=8, random_state=rs),
    "entropy-cnn": lambda k, rs: bc.EntropyClustering(k, head="cnn", max_iter=2, batch_size=16,
                                                      random_state=rs),
}


def _data(draw_seed: int, n: int, shape: tuple[int, ...], k: int, scale: float, offset: float,
          in_dtype: str) -> np.ndarray:
    rng = np.random.default_rng(draw_seed)
    centres = rng.normal(size=(k, *shape)) * 4
    X = centres[rng.integers(0, k, n)] + rng.normal(size=(n, *shape))
    X = X * scale + offset
    if in_dtype == "int":  # counts-like integer input
        return np.round(X - X.min()).astype(np.int64)
    return X.astype(in_dtype)


def _check(model, X: np.ndarray, n: int) -> None:
    labels = np.asarray(model.labels_)
    assert labels.shape == (n,) and labels.dtype.kind == "i"
    assert labels.min() >= 0 and labels.max() < model.n_components_
    if hasattr(model, "predict_proba"):  # DTIKMeans is a hard clustering (no probabilities)
        proba = model.predict_proba(X)
        assert proba.shape == (n, model.n_components_) and np.isfinite(proba).all()
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    pred = model.predict(X)
    assert pred.shape == (n,) and pred.max() < model.n_components_
    for name in ("means_", "prototypes_", "weights_"):
        value = getattr(model, name, None)
        if value is not None:
            assert np.isfinite(np.asarray(value, dtype=np.float64)).all(), name


COMMON = dict(
    seed=st.integers(0, 10_000),
    k=st.integers(2, 3),
    scale=st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e6]),
    offset=st.sampled_from([0.0, -50.0, 1e4]),
    in_dtype=st.sampled_from(["float32", "float64", "int"]),
    fit_dtype=st.sampled_from(["float32", "float64"]),
)


@pytest.mark.parametrize("route", list(TABULAR))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(12, 40), d=st.integers(1, 4), **COMMON)
def test_tabular_routes_hold_their_contract(route, n, d, seed, k, scale, offset, in_dtype, fit_dtype):
    X = _data(seed, n, (d,), k, scale, offset, in_dtype)
    model = TABULAR[route](k, seed).set_params(dtype=fit_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and float32-precision warnings are allowed
        model.fit(X)
        _check(model, X, n)


@pytest.mark.parametrize("route", list(IMAGES))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(16, 32), side=st.sampled_from([8, 12]), **COMMON)
def test_image_routes_hold_their_contract(route, n, side, seed, k, scale, offset, in_dtype, fit_dtype):
    X = _data(seed, n, (side, side), k, scale, offset, in_dtype)
    model = IMAGES[route](k, seed).set_params(dtype=fit_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
        _check(model, X, n)
