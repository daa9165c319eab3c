"""GaussianMixture: EM against scikit-learn and closed forms, the three routes, API, errors, real data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import bayesclust as bc
from bayesclust import metrics
from bayesclust.inference import em
from bayesclust.inference.streaming import Features
from bayesclust.models import gaussian
from tests.conftest import shared_file

sk_mixture = pytest.importorskip("sklearn.mixture")
COV_TYPES = ["full", "tied", "diag", "spherical"]


def _blobs(n=600, seed=0, offset=30.0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0]])
    y = rng.integers(0, 3, n)
    A = rng.normal(size=(3, 3, 3)) * 0.4 + np.eye(3)
    X = centers[y] + np.einsum("nij,nj->ni", A[y], rng.normal(size=(n, 3))) + offset
    return X, y


def _init(X, k, cov_type, seed=1):
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), k, replace=False)]
    d = X.shape[1]
    cov = {"full": np.stack([np.eye(d)] * k), "tied": np.eye(d), "diag": np.ones((k, d)),
           "spherical": np.ones(k)}[cov_type]
    return means, np.full(k, 1 / k), cov


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_ml_em_matches_sklearn_from_identical_init(cov_type):
    X, _ = _blobs()
    means, w, cov = _init(X, 3, cov_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # our reg_covar is relative to the mean feature variance (unit invariance); scikit-learn's absolute
        sk = sk_mixture.GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=25, means_init=means,
                                        weights_init=w, precisions_init=cov,
                                        reg_covar=1e-6 * X.var(0).mean()).fit(X)
        ours = bc.GaussianMixture(3, covariance_type=cov_type, prior=None, tol=0, max_iter=25, init=means,
                                  weights_init=w, covariances_init=cov, dtype="float64").fit(X)
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-6)
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-6)
    assert ours.bic(X) == pytest.approx(sk.bic(X), rel=1e-6)
    assert ours.aic(X) == pytest.approx(sk.aic(X), rel=1e-6)


def test_float32_matches_float64():
    X, _ = _blobs()
    means, w, cov = _init(X, 3, "full")
    kw = dict(prior=None, tol=0, max_iter=15, init=means, weights_init=w, covariances_init=cov)
    a = bc.GaussianMixture(3, dtype="float32", **kw).fit(X)
    b = bc.GaussianMixture(3, dtype="float64", **kw).fit(X)
    assert a.score(X) == pytest.approx(b.score(X), rel=1e-4)


def _map_objective(X, params, prior, cov_type):
    A, c = gaussian.log_prob_coefficients(params, cov_type)
    feats = Features(X, gaussian.GaussianFamily(cov_type).feature_map, 10_000)
    loglik, _ = em.e_step(feats, A, c, accumulate=False)
    return loglik + gaussian.log_prior(params, prior, cov_type)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_map_m_step_is_the_mode_of_the_complete_data_posterior(cov_type):
    """With hard responsibilities the MAP M-step maximises log p(X, z | theta) + log p(theta)."""
    X, y = _blobs(200, offset=0.0)
    X = torch.tensor(X)
    model = bc.GaussianMixture(3, covariance_type=cov_type, reg_covar=0.0)
    prior = model._map_prior(X)
    prior.alpha = 2.0
    resp = torch.nn.functional.one_hot(torch.tensor(y), 3).double()
    phi = gaussian.feature_map(X, cov_type)
    G = torch.cat([phi.T @ resp, resp.sum(0, keepdim=True)]).T  # (K, Q + 1)
    dummy = gaussian.GMMParams(torch.full((3,), 1 / 3).double(), torch.zeros(3, 3).double(),
                         model._given_params(torch.zeros(3, 3).double(), X).covariances)
    best = gaussian.m_step(G, 3, cov_type, 0.0, prior, dummy)

    def complete(p):  # log p(X, z | theta) + log p(theta) for the fixed hard labels
        A, c = gaussian.log_prob_coefficients(p, cov_type)
        return float(((phi @ A + c) * resp).sum()) + gaussian.log_prior(p, prior, cov_type)

    f0 = complete(best)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        eps = 1e-3
        pert = best.clone()
        pert.means += eps * torch.randn(pert.means.shape, generator=gen, dtype=torch.float64)
        pert.covariances *= 1 + eps * torch.randn((), generator=gen, dtype=torch.float64)
        w = pert.weights * (1 + eps * torch.randn(3, generator=gen, dtype=torch.float64))
        pert.weights = w / w.sum()
        assert complete(pert) <= f0 + 1e-9


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_map_em_objective_never_decreases(cov_type):
    X, _ = _blobs(400)
    m = bc.GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=30, random_state=0,
                           dtype="float64", init="random", reg_covar=0.0).fit(X)
    h = np.array(m.history_)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:]))


def test_fit_predict_equals_fit_then_predict_and_labels():
    X, y = _blobs()
    a = bc.GaussianMixture(3, random_state=0).fit(X)
    labels = bc.GaussianMixture(3, random_state=0).fit_predict(X)
    np.testing.assert_array_equal(labels, a.predict(X))
    np.testing.assert_array_equal(a.labels_, labels)
    assert metrics.accuracy(y, labels) > 0.95
    assert a.converged_ and a.n_iter_ < 100 and len(a.history_) == a.n_iter_


@pytest.mark.parametrize("init", ["kmeans", "kmeans++", "random", "random_from_data"])
def test_inits_and_n_init_are_reproducible(init):
    X, y = _blobs()
    a = bc.GaussianMixture(3, init=init, n_init=2, random_state=3).fit(X)
    b = bc.GaussianMixture(3, init=init, n_init=2, random_state=3).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert metrics.adjusted_rand_index(y, a.labels_) > 0.8


def test_warm_start_continues_from_previous_fit():
    X, _ = _blobs()
    m = bc.GaussianMixture(3, random_state=0, max_iter=2, tol=0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(X)
        first = m.history_[-1]
        m.fit(X)
    assert m.history_[0] >= first - 1e-6


def test_convergence_warning():
    X, _ = _blobs()
    with pytest.warns(bc.ConvergenceWarning, match="did not converge"):
        bc.GaussianMixture(3, max_iter=2, tol=1e-12, random_state=0).fit(X)


def test_sample_score_and_save_load(tmp_path):
    X, _ = _blobs()
    m = bc.GaussianMixture(3, random_state=0).fit(X)
    Xs, ys = m.sample(500)
    assert Xs.shape == (500, 3) and ys.shape == (500,)
    assert np.bincount(ys, minlength=3).min() > 50
    assert abs(m.score(Xs) - m.score(X)) < 0.5
    path = tmp_path / "gmm.pt"
    m.save(path)
    loaded = bc.GaussianMixture.load(path)
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))
    assert loaded.score(X) == pytest.approx(m.score(X))
    assert loaded.get_params() == m.get_params()
    with pytest.raises(TypeError, match="not a"):
        from bayesclust.estimators._base import BaseEstimator

        class Other(BaseEstimator):
            def __init__(self):
                pass

        Other.load(path)


def test_torch_input_and_chunking_give_same_result():
    X, _ = _blobs()
    a = bc.GaussianMixture(3, random_state=0, dtype="float64").fit(X)
    b = bc.GaussianMixture(3, random_state=0, dtype="float64", chunk_size=37).fit(torch.tensor(X))
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_components": 0}, ValueError, "n_components must be >= 1"),
        ({"n_components": 2.5}, TypeError, "n_components must be an integer"),
        ({"tol": -1.0}, ValueError, "tol must be >= 0"),
        ({"reg_covar": -1e-3}, ValueError, "reg_covar must be >= 0"),
        ({"covariance_type": "banana"}, ValueError, "covariance_type='banana' is not supported"),
        ({"inference": "gibbs"}, ValueError, "inference='gibbs' is not supported"),
        ({"prior": None, "inference": "svi"}, ValueError, "needs a proper prior"),
        ({"init": "bogus"}, ValueError, "init='bogus' is not supported"),
        ({"max_iter": -1}, ValueError, "max_iter must be >= 0"),
        ({"weight_concentration_prior": 0.0}, ValueError, "weight_concentration_prior must be > 0"),
        ({"degrees_of_freedom_prior": 1.0}, ValueError, "degrees_of_freedom_prior must be > 2"),
        ({"covariance_type": "spherical", "degrees_of_freedom_prior": 2.5}, ValueError,
         r"covariance_type='spherical' needs degrees_of_freedom_prior \(nu0\) > D \+ 1 - 2/D"),
        ({"covariance_prior": np.eye(2)}, ValueError, r"covariance_prior must be \(3, 3\)"),
        ({"mean_prior": [1.0, 2.0]}, ValueError, "mean_prior has 2 entries but X has 3 features"),
        ({"init": np.zeros((2, 3))}, ValueError, r"init means must have shape \(3, 3\)"),
        ({"init": np.zeros((3, 3)), "weights_init": [0.5, 0.5, 0.5]}, ValueError, "weights_init must be 3"),
        ({"init": np.zeros((3, 3)), "covariances_init": np.ones(3)}, ValueError,
         "covariances_init must have"),
        ({"device": "tpu"}, ValueError, "not a valid device"),
        ({"dtype": "int8"}, ValueError, "dtype='int8' is not supported"),
    ],
)
def test_parameter_errors(kwargs, exc, match):
    X, _ = _blobs(60)
    params = {"n_components": 3, **kwargs}
    with pytest.raises(exc, match=match):
        bc.GaussianMixture(**params).fit(X)


def test_input_errors():
    X, _ = _blobs(60)
    m = bc.GaussianMixture(3)
    with pytest.raises(bc.NotFittedError, match="not fitted yet"):
        m.predict(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="contains 1 NaN value"):
        m.fit(bad)
    with pytest.raises(ValueError, match="at least 3 are needed"):
        m.fit(X[:2])
    with pytest.raises(ValueError, match="must have 2 dimensions"):
        m.fit(X[:, 0])
    m.fit(X)
    with pytest.raises(ValueError, match="X has 2 features, but it is expecting 3 features"):
        m.predict(X[:, :2])
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        m.sample(0)


def test_collapsed_component_raises_clear_error():
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]), 20, axis=0)
    with pytest.raises(ValueError, match="increase reg_covar"):
        bc.GaussianMixture(3, prior=None, reg_covar=0.0, dtype="float64", random_state=0).fit(X)
    # the default prior keeps every covariance proper on the same data
    m = bc.GaussianMixture(3, random_state=0).fit(X)
    assert np.isfinite(m.score(X))


def test_sklearn_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(bc.GaussianMixture(2, max_iter=20, random_state=0), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 35


# ---------------------------------------------------------------------------- three routes, one model
def _separated(n=100, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = np.array([[-4.0, 0.0], [4.0, 1.0]])[y] + rng.normal(size=(n, 2)) * 0.7
    return X, y


def test_svi_map_reaches_em_map_means():
    X, _ = _separated()
    em_fit = bc.GaussianMixture(2, dtype="float64", random_state=0, tol=1e-10, max_iter=500).fit(X)
    svi = bc.GaussianMixture(2, inference="svi", dtype="float64", random_state=0, max_iter=150,
                             learning_rate=0.01).fit(X)
    order = np.argsort(svi.means_[:, 0])
    ref = em_fit.means_[np.argsort(em_fit.means_[:, 0])]
    np.testing.assert_allclose(svi.means_[order], ref, atol=0.05)
    assert len(svi.history_) == svi.n_iter_ == 150 and svi.em_n_iter_ < 150


def test_nuts_route_relabels_and_gives_inference_data():
    X, _ = _separated(80)
    m = bc.GaussianMixture(2, inference="nuts", num_samples=60, warmup_steps=60, num_chains=2,
                           random_state=0, dtype="float64").fit(X)
    order = np.argsort(m.means_[:, 0])
    np.testing.assert_allclose(m.means_[order], m.em_means_[np.argsort(m.em_means_[:, 0])], atol=0.3)
    assert 0.0 <= m.relabel_fraction_ <= 1.0
    idata = m.to_inference_data()
    assert idata.posterior["means"].shape[:2] == (2, 60)
    assert "diverging" in idata.sample_stats
    with pytest.raises(ValueError, match="needs a posterior"):
        bc.GaussianMixture(2).fit(X).to_inference_data()


# ---------------------------------------------------------------------------- real data
def test_old_faithful_two_components():
    X, _ = bc.datasets.load_faithful()
    m = bc.GaussianMixture(2, random_state=0, dtype="float64").fit(X)
    means = m.means_[np.argsort(m.means_[:, 0])]
    # the two eruption regimes: short (~2.0 min, ~54 min wait) and long (~4.3 min, ~80 min wait)
    np.testing.assert_allclose(means[:, 0], [2.04, 4.29], atol=0.3)
    np.testing.assert_allclose(means[:, 1], [54.5, 80.0], atol=3.0)
    assert sorted(np.round(m.weights_, 2)) == pytest.approx([0.36, 0.64], abs=0.03)


def test_iris_three_components():
    X, y = bc.datasets.load_iris()
    scores = bc.metrics.evaluate(y, bc.GaussianMixture(3, random_state=0, n_init=3).fit_predict(X))
    print("iris", scores)
    assert scores["acc"] > 0.88 and scores["ari"] > 0.7


def test_penguins_missing_values_rejected_then_dropped():
    with pytest.raises(ValueError, match="missing values"):
        bc.datasets.load_penguins()
    X, y = bc.datasets.load_penguins(dropna=True)
    raw = bc.datasets.load_penguins(dropna=True)[0].copy()
    raw[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN value.*drop rows with missing values"):
        bc.GaussianMixture(3).fit(raw)
    X = (X - X.mean(0)) / X.std(0)
    scores = bc.metrics.evaluate(y, bc.GaussianMixture(3, random_state=0, n_init=3).fit_predict(X))
    print("penguins", scores)
    assert scores["acc"] > 0.75


def test_mnist_test_pca50():
    import gzip

    with gzip.open(shared_file("mnist/t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255
    with gzip.open(shared_file("mnist/t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    Xc = images - images.mean(0)
    _, _, vt = np.linalg.svd(Xc[::5], full_matrices=False)
    X = Xc @ vt[:50].T
    pred = bc.GaussianMixture(10, covariance_type="diag", random_state=0, max_iter=100).fit_predict(X)
    scores = bc.metrics.evaluate(labels, pred)
    print("mnist-test pca50", scores)
    assert scores["nmi"] > 0.35 and scores["k"] == 10
