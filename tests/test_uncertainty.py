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


# ---------------------------------------------------------------------- posterior predictive checks
@pytest.fixture(scope="module")
def gaussian_nuts():
    """A one-component NUTS fit of data drawn from a Gaussian: the model's own family."""
    rng = np.random.default_rng(3)
    X = rng.multivariate_normal([3.0, -1.0], [[2.0, 0.5], [0.5, 1.0]], 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = bc.GaussianMixture(1, inference="nuts", num_samples=40, warmup_steps=40, num_chains=2,
                               random_state=0, dtype="float64").fit(X)
    return m, X


def test_posterior_predictive_groups_and_shapes(gaussian_nuts):
    m, X = gaussian_nuts
    idata = U.posterior_predictive(m, X, num_draws=30, random_state=0)
    assert {"posterior", "posterior_predictive", "observed_data"} <= set(idata.groups())
    rep = idata.posterior_predictive["X"]
    assert rep.dims == ("chain", "draw", "obs_id", "feature") and rep.shape == (2, 30, 100, 2)
    np.testing.assert_array_equal(idata.observed_data["X"].values, X)
    again = U.posterior_predictive(m, X, num_draws=30, random_state=0)
    np.testing.assert_array_equal(again.posterior_predictive["X"].values, rep.values)
    stats = U.ppc_pvalues(idata)
    assert set(stats["p_value"]) == {"mean", "std", "lower_tail", "upper_tail"}
    assert stats["replicated"]["std"].shape == (60, 2) and stats["observed"]["mean"].shape == (2,)
    # replicated data sets have the posterior's moments
    np.testing.assert_allclose(rep.values.mean((0, 1, 2)), X.mean(0), atol=0.3)


def test_ppc_pvalues_not_extreme_for_the_models_own_family(gaussian_nuts):
    m, X = gaussian_nuts
    p = U.ppc_pvalues(U.posterior_predictive(m, X, num_draws=100, random_state=1))["p_value"]
    for name, v in p.items():
        assert np.all((v > 0.01) & (v < 0.99)), (name, v)


def test_ppc_tail_pvalue_extreme_when_misspecified():
    rng = np.random.default_rng(4)
    Y = np.vstack([rng.uniform(-1, 1, (300, 2)), rng.uniform(4, 6, (300, 2)),
                   rng.uniform(30, 60, (15, 2)), -rng.uniform(30, 60, (15, 2))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = bc.GaussianMixture(1, inference="svi", svi_guide="meanfield", max_iter=100, random_state=0,
                               dtype="float64").fit(Y)
    idata = U.posterior_predictive(m, num_draws=100, random_state=0)  # X defaults to the fit data
    assert idata.posterior_predictive["X"].shape == (1, 100, 630, 2)
    p = U.ppc_pvalues(idata)["p_value"]
    assert np.all(p["upper_tail"] < 0.01) and np.all(p["lower_tail"] > 0.99)


def test_ppc_figures(gaussian_nuts, tmp_path):
    from bayesclust.plotting import plot_ppc
    from bayesclust.posterior import _arviz

    m, X = gaussian_nuts
    idata = U.posterior_predictive(m, X, num_draws=20, random_state=0)
    fig = plot_ppc(idata, path=tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").stat().st_size > 0
    assert fig._suptitle.get_text() and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    _arviz().plot_ppc(idata, num_pp_samples=10)


def test_posterior_predictive_errors():
    X = np.random.default_rng(0).normal(size=(20, 2))
    em = bc.GaussianMixture(1).fit(X)
    with pytest.raises(TypeError, match="inference='nuts' or 'svi'"):
        U.posterior_predictive(em, X)
    with pytest.raises(ValueError, match="num_draws"):
        U.posterior_predictive(em, X, num_draws=0)
    with pytest.raises(ValueError, match="tail"):
        U.ppc_pvalues(None, tail=0.3)


# -------------------------------------------------------------------------- linear softmax margins
@pytest.fixture(scope="module")
def linear_two():
    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal([0, 0], 0.5, (40, 2)), rng.normal([4, 2], 0.5, (40, 2))])
    # the head on X as given, so the tests read its weights directly (the mapped case:
    # tests/test_feature_defaults.py::test_linear_margins_are_reported_in_the_users_units)
    return bc.EntropyClustering(2, head="linear", max_iter=20, random_state=0, preprocess="none").fit(X), X


def test_linear_margin_is_the_smallest_distance_to_the_boundary(linear_two):
    m, X = linear_two
    lm = U.linear_margins(m, X)
    W = m.module_[1].weight.detach().double().numpy()
    b = m.module_[1].bias.detach().double().numpy()
    dist = np.abs(X @ (W[0] - W[1]) + b[0] - b[1]) / np.linalg.norm(W[0] - W[1])
    assert lm["pairs"].tolist() == [[0, 1]]
    assert lm["margins"][0] == pytest.approx(dist.min(), rel=1e-9)
    assert lm["closest"][0] == np.argmin(dist)
    np.testing.assert_allclose(lm["point_margin"], dist, rtol=1e-9)
    np.testing.assert_array_equal(lm["labels"], m.predict(X))


def test_linear_margins_of_a_known_head(linear_two):
    import copy

    import torch

    m, _ = linear_two
    m = copy.deepcopy(m)
    with torch.no_grad():  # logits (x1, -x1): boundary x1 = 0, distance |x1|
        m.module_[1].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        m.module_[1].bias.zero_()
    X = np.array([[-2.0, 5.0], [0.5, -1.0], [3.0, 0.0], [-0.25, 2.0]])
    lm = U.linear_margins(m, X)
    assert lm["margins"][0] == pytest.approx(0.25) and lm["closest"][0] == 3
    np.testing.assert_allclose(lm["normals"][0], [2.0, 0.0])
    assert lm["labels"].tolist() == [1, 0, 0, 1]


def test_plot_linear_margins(linear_two, tmp_path):
    from bayesclust.plotting import plot_linear_margins

    m, X = linear_two
    fig = plot_linear_margins(m, X, path=tmp_path / "margins.png")
    ax = fig.axes[0]
    assert (tmp_path / "margins.png").stat().st_size > 0
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_linear_margins_errors(linear_two):
    m, X = linear_two
    with pytest.raises(TypeError, match="head='linear'"):
        U.linear_margins(bc.GaussianMixture(2), X)
    with pytest.raises(ValueError, match="non-empty"):
        U.linear_margins(m, X[:, :1])
