"""Uncertainty is right, not only present: co-clustering blocks, entropy at the boundary, calibration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayesclust as bc
from bayesclust import uncertainty as U


@pytest.fixture(scope="module")
def separated():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.3, (30, 2)) for c in ([0, 0], [6, 0], [0, 6])])
    return X, np.repeat([0, 1, 2], 30)


@pytest.fixture(scope="module")
def dp(separated):
    X, _ = separated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bc.DPGMM(max_iter=60, coclustering=True, random_state=0).fit(X)


def test_coclustering_of_separated_mixture_is_block_diagonal(dp, separated):
    _, y = separated
    C = U.coclustering(dp)
    same = y[:, None] == y[None, :]
    assert C.shape == (90, 90)
    assert C[same].min() > 0.95
    assert C[~same].max() < 0.05
    point = U.psm_point_estimate(C, [dp.labels_])
    assert bc.metrics.adjusted_rand_index(y, point) == pytest.approx(1.0)


def test_posterior_k_and_credible_intervals(dp):
    pk = U.posterior_k(dp)
    assert pk["map_k"] == 3 and pk["posterior_k"][3] > 0.9
    assert len(pk["k_trace"]) == 60 and 0 < pk["burn_in"] < 60
    ci = U.credible_intervals(dp, level=0.9)
    assert ci["weights"].shape == (3, 3) and ci["means"].shape == (3, 2, 3)
    lo, med, hi = ci["weights"].T
    assert np.all(lo <= med) and np.all(med <= hi)
    assert np.allclose(med, 1 / 3, atol=0.1)


def test_dpgmm_inference_data_and_arviz_summary(dp):
    idata = U.to_inference_data(dp)
    assert set(idata.posterior.data_vars) >= {"K", "weights", "means"}
    summary = U.arviz_summary(dp, ["K", "weights"])
    assert {"mean", "ess_bulk", "r_hat"} <= set(summary.columns)


def test_coclustering_from_draws():
    C = U.coclustering_from_draws(np.array([[0, 0, 1], [0, 1, 1]]))
    assert np.allclose(C, [[1, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 1]])
    with pytest.raises(ValueError, match="integer \\(S, N\\) array"):
        U.coclustering_from_draws(np.zeros(3))


def test_entropy_is_high_exactly_at_the_boundary():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-1.5, 1.0, 400), rng.normal(1.5, 1.0, 400)])[:, None]
    gmm = bc.GaussianMixture(2, random_state=0, dtype="float64").fit(X)
    grid = np.linspace(-4, 4, 161)[:, None]
    H = U.assignment_entropy(gmm, grid)
    assert abs(grid[np.argmax(H), 0]) < 0.3
    assert H.max() > 0.65  # close to log 2
    assert H[np.abs(grid[:, 0]) > 3].max() < 0.05
    idx = U.least_sure(gmm, X, n=20)
    assert np.abs(X[idx, 0]).max() < 0.6


def test_ece_of_calibrated_case_is_near_zero():
    rng = np.random.default_rng(2)
    P = rng.dirichlet(np.full(4, 0.6), size=20000)
    y = np.array([rng.choice(4, p=p) for p in P])
    cal = U.calibration(y, P, n_bins=10)
    assert cal["ece"] < 0.02
    assert np.nansum(cal["count"]) == 20000
    overconfident = np.eye(4)[P.argmax(1)] * 0.99 + 0.0025
    assert U.expected_calibration_error(y, overconfident) > 0.2


def test_ensemble_disagreement_of_a_head(separated):
    X, _ = separated
    head = bc.EntropyClustering(3, head="linear", max_iter=10)
    out = U.ensemble_disagreement(head, X, seeds=(0, 1))
    assert out["labels"].shape == (2, 90) and out["disagreement"].shape == (90,)
    assert 0.0 <= out["disagreement"].min() <= out["disagreement"].max() <= 0.5
    assert -1.0 <= out["mean_pairwise_ari"] <= 1.0


def test_summarize(dp, separated):
    X, y = separated
    s = U.summarize(dp, X, y)
    assert s["map_k"] == 3 and s["ece"] < 0.05 and len(s["least_sure"]) == 10


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: U.assignment_entropy(np.ones((3, 2))), ValueError, "sum to 1"),
        (lambda: U.assignment_entropy(np.ones(3)), ValueError, "non-empty \\(N, K\\)"),
        (lambda: U.assignment_entropy(bc.GaussianMixture(2)), ValueError, "X is required"),
        (lambda: U.least_sure(np.eye(2), n=0), ValueError, "positive integer"),
        (lambda: U.posterior_k(bc.GaussianMixture(2)), TypeError, "DPGMM-like"),
        (lambda: U.coclustering(bc.DPGMM()), ValueError, "coclustering=True"),
        (lambda: U.to_inference_data(object()), TypeError, "no posterior"),
        (lambda: U.psm_point_estimate(np.ones((2, 3))), ValueError, "square"),
        (lambda: U.calibration([0, 1], np.eye(3)), ValueError, "y_true"),
        (lambda: U.calibration([0, 1], np.eye(2), n_bins=0), ValueError, "n_bins"),
        (lambda: U.labelling_disagreement([np.zeros(3, int)]), ValueError, "at least 2 integer"),
        (
            lambda: U.ensemble_disagreement(bc.GaussianMixture(2), np.zeros((4, 2)), seeds=(0,)),
            ValueError,
            "at least 2 seeds",
        ),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
