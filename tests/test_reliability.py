"""Reliability at any input: units, precision, odd array types, scikit-learn's semantics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import bayesclust as bc
from bayesclust.inference.engine import Engine


def _blobs(n=150, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 9.0]])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 2))


def _glyphs(n=60, seed=1):
    rng = np.random.default_rng(seed)
    protos = np.zeros((3, 10, 10))
    protos[0, 2:8, 4:6] = protos[1, 4:6, 1:9] = protos[2, 2:8, 2:8] = 1.0
    return protos[rng.integers(0, 3, n)] + 0.05 * rng.normal(size=(n, 10, 10))


UNITS = {"x 1e-8": lambda X: X * 1e-8, "x 1e8": lambda X: X * 1e8, "+ 1e8": lambda X: X + 1e8}


@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("route", ["splitmerge", "vi", "deep"])
def test_dpgmm_labels_do_not_depend_on_units(route, unit):
    X = _blobs()
    kw = {"inference": route, "max_iter": 20, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = bc.DPGMM(**kw).fit(X)
        other = bc.DPGMM(**kw).fit(UNITS[unit](X))
    np.testing.assert_array_equal(base.labels_, other.labels_)
    np.testing.assert_allclose(UNITS[unit](base.means_), other.means_, rtol=1e-5)


@pytest.mark.parametrize("route", ["splitmerge", "vi"])
def test_dpgmm_small_units_with_a_large_offset_keep_every_feature(route):
    # a spread of ~1e-7 around 1e6: float64 still resolves it (1e-10), so no feature is "constant"
    X = _blobs()
    kw = {"inference": route, "max_iter": 20, "random_state": 0}
    base = bc.DPGMM(**kw).fit(X)
    other = bc.DPGMM(**kw).fit(X * 1e-7 - 1e6)
    assert not other.constant_features_.any()
    np.testing.assert_array_equal(base.labels_, other.labels_)
    tiny = bc.DPGMM(**kw).fit(X * 1e-13)
    assert not tiny.constant_features_.any()
    np.testing.assert_array_equal(base.labels_, tiny.labels_)
    const = np.c_[X, np.full(len(X), 1e6)]  # a truly constant feature is still left unscaled
    assert bc.DPGMM(**kw).fit(const).constant_features_.tolist() == [False] * X.shape[1] + [True]


GMM_ROUTES = {
    "em-full": {}, "em-tied": {"covariance_type": "tied"}, "em-diag": {"covariance_type": "diag"},
    "em-spherical": {"covariance_type": "spherical"}, "em-ml": {"prior": None},
    "svi": {"inference": "svi", "max_iter": 20},
    "nuts": {"inference": "nuts", "num_samples": 10, "warmup_steps": 10, "num_chains": 1,
             "covariance_type": "diag"},
}


@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("route", list(GMM_ROUTES))
def test_gmm_labels_do_not_depend_on_units(route, unit):
    X = _blobs()
    kw = {"random_state": 0, **GMM_ROUTES[route]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = bc.GaussianMixture(3, **kw).fit(X)
        other = bc.GaussianMixture(3, **kw).fit(UNITS[unit](X))
    np.testing.assert_array_equal(base.labels_, other.labels_)
    np.testing.assert_array_equal(base.predict(X), other.predict(UNITS[unit](X)))
    np.testing.assert_allclose(UNITS[unit](base.means_), other.means_, rtol=1e-4)
    a = 1e-8 if unit == "x 1e-8" else 1e8 if unit == "x 1e8" else 1.0
    np.testing.assert_allclose(other.covariances_, base.covariances_ * a**2, rtol=1e-3)
    d_log = X.shape[1] * np.log(a)  # p_a(a x) = p(x) / a^D
    np.testing.assert_allclose(other.score_samples(UNITS[unit](X)), base.score_samples(X) - d_log,
                               rtol=1e-4, atol=1e-4)
    if route == "nuts":
        got, ref = other.posterior_samples_["means"], UNITS[unit](base.posterior_samples_["means"])
        np.testing.assert_allclose(got, ref, rtol=1e-3)


def test_gmm_partial_fit_does_not_depend_on_units():
    X = _blobs(300)
    a, b = bc.GaussianMixture(3, random_state=0), bc.GaussianMixture(3, random_state=0)
    for part in np.array_split(X, 3):
        a.partial_fit(part)
        b.partial_fit(part * 1e-8)
    np.testing.assert_array_equal(a.predict(X), b.predict(X * 1e-8))
    np.testing.assert_allclose(b.means_, a.means_ * 1e-8, rtol=1e-4)
    assert b.lower_bound_ == pytest.approx(a.lower_bound_ + 2 * np.log(1e8), rel=1e-5)


def test_gmm_given_init_and_priors_are_read_in_the_users_units():
    X = _blobs()
    means = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 9.0]])
    kw = {"max_iter": 5, "covariance_prior": 2.0, "mean_prior": np.ones(2), "weights_init": np.full(3, 1 / 3),
          "covariances_init": np.stack([np.eye(2)] * 3), "dtype": "float64"}
    base = bc.GaussianMixture(3, init=means, **kw).fit(X)
    kw_s = {**kw, "covariance_prior": 2.0 * 1e-16, "mean_prior": np.ones(2) * 1e-8,
            "covariances_init": kw["covariances_init"] * 1e-16}
    other = bc.GaussianMixture(3, init=means * 1e-8, **kw_s).fit(X * 1e-8)
    np.testing.assert_allclose(other.means_, base.means_ * 1e-8, rtol=1e-6)
    np.testing.assert_allclose(other.precisions_, base.precisions_ * 1e16, rtol=1e-6)


@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("cls", [bc.DTIKMeans, bc.DTIGMM])
def test_dti_labels_do_not_depend_on_units(cls, unit):
    X = _glyphs()  # float64: the unit change keeps every digit the frame needs
    kw = {"transforms": ("affine",), "max_iter": 10, "batch_size": 30, "encoder_width": 8,
          "feature_dim": 8, "head_hidden": 8, "random_state": 0}
    base, other = cls(3, **kw).fit(X), cls(3, **kw).fit(UNITS[unit](X))
    np.testing.assert_array_equal(base.labels_, other.labels_)
    np.testing.assert_allclose(UNITS[unit](base.prototypes_), other.prototypes_, rtol=1e-4, atol=1e-4)


def test_dti_warns_when_float32_input_has_lost_its_digits():
    X = (_glyphs() + 1e8).astype(np.float32)
    with pytest.warns(UserWarning, match="float32 with values around 1e\\+08 but a spread"):
        bc.DTIKMeans(3, transforms="identity", max_iter=2, batch_size=30, encoder_width=8).fit(X)


def test_dti_score_samples_is_a_density_in_the_users_units():
    X = _glyphs()
    kw = {"transforms": "identity", "max_iter": 5, "batch_size": 30, "encoder_width": 8, "random_state": 0}
    a, b = bc.DTIGMM(3, **kw).fit(X), bc.DTIGMM(3, **kw).fit(X * 10.0)
    # p_b(10 x) = p_a(x) / 10^P for P pixels
    np.testing.assert_allclose(b.score_samples(X * 10.0), a.score_samples(X) - X[0].size * np.log(10.0),
                               rtol=1e-4)


@pytest.mark.parametrize("make", [lambda rs: bc.GaussianMixture(3, random_state=rs),
                                  lambda rs: bc.DPGMM(max_iter=10, random_state=rs)])
def test_random_state_accepts_numpy_generators(make):
    X = _blobs()
    for rs in (np.random.RandomState(0), np.random.default_rng(0)):
        est = make(rs).fit(X)
        assert est.labels_.shape == (len(X),)
    with pytest.raises(TypeError, match="random_state must be None, an int, a numpy.random.RandomState"):
        make("seed").fit(X)
    with pytest.raises(ValueError, match="random_state must be a non-negative int, got -1"):
        make(-1).fit(X)


@pytest.mark.parametrize("make", [lambda: bc.GaussianMixture(3, random_state=0),
                                  lambda: bc.DPGMM(max_iter=10, random_state=0)])
def test_tensors_that_require_grad_and_big_endian_arrays(make):
    X = _blobs()
    ref = make().fit(X).labels_
    np.testing.assert_array_equal(make().fit(torch.tensor(X, requires_grad=True)).labels_, ref)
    np.testing.assert_array_equal(make().fit(X.astype(">f8")).labels_, ref)


def test_pandas_nullable_dtypes():
    pd = pytest.importorskip("pandas")
    X = _blobs(60)
    df = pd.DataFrame({"a": pd.array(X[:, 0], dtype="Float64"), "b": pd.array(X[:, 1], dtype="Float64")})
    ref = bc.GaussianMixture(3, random_state=0).fit(X).labels_
    np.testing.assert_array_equal(bc.GaussianMixture(3, random_state=0).fit(df).labels_, ref)
    df.loc[3, "a"] = pd.NA
    with pytest.raises(ValueError, match="X contains 1 NaN value"):
        bc.GaussianMixture(3).fit(df)


def test_dpgmm_score_with_a_huge_concentration_is_finite():
    X = _blobs()
    m = bc.DPGMM(weight_concentration_prior=1e300, max_iter=5, random_state=0).fit(X)
    assert np.all(np.isfinite(m.score_samples(X)))


def test_dpgmm_reports_its_prior_in_the_users_units():
    X = _blobs() * 100.0 + 5.0
    m = bc.DPGMM(max_iter=5, random_state=0, mean_prior=[1.0, 2.0]).fit(X)
    np.testing.assert_allclose(m.mean_prior_, [1.0, 2.0])
    assert m.weight_concentration_prior_ == 1.0 and m.mean_precision_prior_ == pytest.approx(0.01)
    assert m.degrees_of_freedom_prior_ == 4.0 and m.covariance_prior_.shape == (2, 2)


def test_convergence_warning_is_scikit_learns():
    sk = pytest.importorskip("sklearn.exceptions")
    assert issubclass(bc.ConvergenceWarning, sk.ConvergenceWarning)
    with pytest.warns(sk.ConvergenceWarning, match="did not converge in max_iter=2"):
        bc.GaussianMixture(3, max_iter=2, tol=1e-12, random_state=0).fit(_blobs())


def test_max_iter_zero_initialises_only():
    X = _blobs()
    with pytest.warns(bc.ConvergenceWarning):
        m = bc.GaussianMixture(3, max_iter=0, random_state=0).fit(X)
    assert m.n_iter_ == 0 and m.history_ == [] and not m.converged_
    assert m.labels_.shape == (len(X),) and np.isfinite(m.score(X))


def test_a_last_batch_of_one_row_joins_the_previous_batch():
    sizes = [len(b) for b in Engine(random_state=0).batches(11, 5)]
    assert sizes == [5, 6]
    X = _blobs(101)  # 101 = 2 x 50 + 1: an MLP head with BatchNorm would see a batch of one row
    m = bc.EntropyClustering(3, head="mlp", hidden=16, batch_size=50, max_iter=2, random_state=0)
    assert m.fit(X).labels_.shape == (101,)


def test_images_too_small_for_the_encoders():
    with pytest.raises(ValueError, match="DTI needs images of at least 4 x 4 pixels .* got 3 x 3"):
        bc.DTIKMeans(2, max_iter=2, batch_size=4).fit(np.random.default_rng(0).random((10, 3, 3)))
    with pytest.raises(ValueError, match="head='cnn' needs images of at least 8 x 8 pixels.* got 6 x 6"):
        bc.EntropyClustering(2, head="cnn", max_iter=1).fit(np.random.default_rng(0).random((10, 6, 6)))


def test_parameters_set_but_unused_are_warned_about_or_refused():
    X = _blobs(60)
    with pytest.warns(UserWarning, match=r"learning_rate has no effect with inference='em' \(they are svi"):
        bc.GaussianMixture(3, learning_rate=0.5, random_state=0).fit(X)
    with pytest.warns(UserWarning, match="hidden, truncation have no effect with inference='splitmerge'"):
        bc.DPGMM(hidden=8, truncation=5, max_iter=3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="weights_init / covariances_init are used with initial means only"):
        bc.GaussianMixture(3, weights_init=[0.2, 0.3, 0.5]).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # defaults never warn
        bc.GaussianMixture(3, random_state=0).fit(X)
        bc.DPGMM(max_iter=3, random_state=0).fit(X)


def test_gmm_warm_start_judges_convergence_across_calls():
    X = _blobs(300)
    m = bc.GaussianMixture(3, random_state=0, warm_start=True, tol=1e-3, max_iter=200).fit(X)
    assert m.converged_ and m.n_iter_ > 1
    first = m.lower_bound_
    m.fit(X)  # continues from a converged fit: the first iteration changes the objective by < tol
    assert m.converged_ and m.n_iter_ == 1
    assert m.lower_bound_ == pytest.approx(first, abs=1e-3)
    cold = bc.GaussianMixture(3, random_state=0, tol=1e-3, max_iter=200).fit(X)
    assert cold.n_iter_ > 1
