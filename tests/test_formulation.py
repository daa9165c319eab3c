"""The Cholesky formulation of GMM-EM (full / tied covariances at large D): the same model as the
quadratic feature map, scikit-learn's answers from the same start, centred statistics in float32,
and the same results in memory, out of core and online."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bayesclust as bc
from bayesclust.models import gaussian

sk_mixture = pytest.importorskip("sklearn.mixture")


def _whitened(x: torch.Tensor, coef: gaussian.CholeskyCoefficients) -> torch.Tensor:
    """Reference: y (m, K, D) with ``y_ik = x_i P_k - b_k = (x_i - mu_k) P_k`` from the uncentred x."""
    k, d = coef.means.shape
    if coef.tied:
        return (x @ coef.W).unsqueeze(1) - coef.b
    return (x @ coef.W).view(-1, k, d).sub_(coef.b)


def _blobs(n=800, d=6, k=3, seed=0, spread=6.0, offset=0.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, (k, d))
    y = rng.integers(0, k, n)
    A = rng.normal(size=(k, d, d)) * 0.3 + np.eye(d)
    return centers[y] + np.einsum("nij,nj->ni", A[y], rng.normal(size=(n, d))) + offset, y


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_cholesky_em_matches_sklearn_from_identical_init(cov_type):
    X, _ = _blobs()
    rng = np.random.default_rng(1)
    means = X[rng.choice(len(X), 3, replace=False)]
    cov = np.stack([np.eye(6)] * 3) if cov_type == "full" else np.eye(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = sk_mixture.GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=20, means_init=means,
                                        weights_init=np.full(3, 1 / 3), precisions_init=cov,
                                        reg_covar=1e-6 * X.var(0).mean()).fit(X)
        ours = bc.GaussianMixture(3, covariance_type=cov_type, prior=None, tol=0, max_iter=20, init=means,
                                  weights_init=np.full(3, 1 / 3), covariances_init=cov, dtype="float64",
                                  formulation="cholesky").fit(X)
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-9)
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-8)


@pytest.mark.parametrize("cov_type", ["full", "tied"])
@pytest.mark.parametrize("prior", ["niw", None])
def test_formulations_give_the_same_fit(cov_type, prior):
    X, _ = _blobs(offset=1e4)
    kw = dict(covariance_type=cov_type, prior=prior, tol=0, max_iter=15, random_state=0, dtype="float64")
    a = bc.GaussianMixture(3, formulation="features", **kw).fit(X)
    b = bc.GaussianMixture(3, formulation="cholesky", **kw).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.history_, b.history_, rtol=1e-10)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-10)


def test_float32_cholesky_keeps_float64_digits_on_tight_far_clusters():
    # clusters far from the data mean against their own spread: uncentred second moments cancel
    X, _ = _blobs(n=1500, d=48, k=4, spread=300.0)
    kw = dict(tol=0, max_iter=10, random_state=0, formulation="cholesky")
    f32 = bc.GaussianMixture(4, dtype="float32", **kw).fit(X)
    f64 = bc.GaussianMixture(4, dtype="float64", **kw).fit(X)
    np.testing.assert_array_equal(f32.labels_, f64.labels_)
    assert f32.lower_bound_ == pytest.approx(f64.lower_bound_, rel=1e-5)
    np.testing.assert_allclose(f32.covariances_, f64.covariances_, rtol=1e-3, atol=1e-3)


def test_family_auto_takes_cholesky_from_cholesky_min_d_for_full_and_tied_only():
    d = gaussian.CHOLESKY_MIN_D
    for cov in ("full", "tied"):
        fam = gaussian.GaussianFamily(cov)
        assert not fam.uses_cholesky(d - 1) and fam.uses_cholesky(d)
        assert fam.feature_dim(d) == d and fam.feature_dim(d - 1) == gaussian.feature_dim(d - 1, cov)
        assert not gaussian.GaussianFamily(cov, formulation="features").uses_cholesky(10 * d)
        assert gaussian.GaussianFamily(cov, formulation="cholesky").uses_cholesky(2)
    for cov in ("diag", "spherical"):
        assert not gaussian.GaussianFamily(cov, formulation="cholesky").uses_cholesky(10 * d)
    X = torch.randn(5, d, dtype=torch.float64)
    assert torch.equal(gaussian.GaussianFamily("full").feature_map(X), X)


def test_choose_formulation_follows_the_measured_crossover():
    choose = gaussian.choose_formulation
    # small K against D: Cholesky; large K: the feature map, whose cached products are cheaper
    assert choose("full", 128, 16, 4, cached=True) == "cholesky"
    assert choose("full", 128, 64, 4, cached=True) == "features"
    assert choose("full", 32, 16, 4, cached=True) == "features"
    # recomputing the map every pass moves the crossover, float64 sooner than float32
    assert choose("full", 64, 32, 8, cached=False) == "cholesky"
    assert choose("full", 64, 32, 4, cached=False) == "features"
    assert choose("tied", 16, 2, 8, cached=False) == "features"  # below D = 32: always the map
    assert choose("full", 16, 4, 8, cached=True) == "features"
    # float64 full covariances whose Cholesky passes run fused, with phi(X) cached: from D = 4, up to
    # K = D / 2 while D <= 32
    fused = dict(cached=True, fused=True)
    for d, k, form in ((16, 8, "cholesky"), (16, 9, "features"), (32, 16, "cholesky"), (32, 17, "features"),
                       (64, 16, "cholesky"), (64, 32, "features"), (8, 4, "cholesky"), (8, 5, "features"),
                       (6, 3, "cholesky"), (4, 2, "cholesky"), (4, 3, "features"), (3, 1, "features"),
                       (2, 1, "features")):
        assert choose("full", d, k, 8, **fused) == form
    assert choose("full", 8, 2, 8, cached=True) == "features"  # not fused (small N K D): the map
    assert choose("full", 8, 2, 8, cached=False, fused=True) == "features"  # not cached: from D = 16
    # float32 fused and cached: from D = 4 too, up to K = min(D / 2, 8); past D = 32, K <= D / 4
    for d, k, form in ((16, 8, "cholesky"), (16, 9, "features"), (24, 8, "cholesky"), (24, 9, "features"),
                       (32, 8, "cholesky"), (32, 9, "features"), (32, 16, "features"), (8, 4, "cholesky"),
                       (8, 5, "features"), (6, 3, "cholesky"), (4, 2, "cholesky"), (4, 3, "features"),
                       (3, 1, "features"), (64, 16, "cholesky"), (64, 17, "features")):
        assert choose("full", d, k, 4, **fused) == form, (d, k)
    assert choose("full", 16, 4, 4, cached=True) == "features"  # not fused: the D >= 32 floor
    assert choose("full", 16, 4, 4, cached=False, fused=True) == "cholesky"  # not cached: K <= D / 4
    assert choose("full", 16, 5, 4, cached=False, fused=True) == "features"
    assert choose("tied", 16, 2, 8, cached=True, fused=True) == "features"
    assert choose("full", 32, 16, 8, cached=True) == "features"  # not fused: the measured rule
    assert choose("full", gaussian.CHOLESKY_MIN_D, 10_000, 4, cached=True) == "cholesky"
    assert choose("diag", 512, 1, 8, cached=False) == "features"


def test_estimator_resolves_auto_by_shape_and_reports_it():
    X, _ = _blobs(n=600, d=40, k=3)
    kw = dict(max_iter=5, tol=0, random_state=0, dtype="float64")
    assert bc.GaussianMixture(3, **kw).fit(X).formulation_ == "cholesky"  # K = 3 <= 40 / 4
    assert bc.GaussianMixture(12, **kw).fit(X).formulation_ == "features"
    assert bc.GaussianMixture(3, formulation="features", **kw).fit(X).formulation_ == "features"
    assert bc.GaussianMixture(3, covariance_type="diag", **kw).fit(X).formulation_ == "features"


def test_cholesky_out_of_core_and_online_match_in_memory(tmp_path):
    X, _ = _blobs(n=900, offset=-50.0)
    path = tmp_path / "x.npy"
    np.save(path, X)
    kw = dict(tol=0, max_iter=10, random_state=0, formulation="cholesky", dtype="float64", chunk_size=128)
    ref = bc.GaussianMixture(3, **kw).fit(X)
    mm = bc.GaussianMixture(3, **kw).fit(np.load(path, mmap_mode="r"))
    np.testing.assert_array_equal(ref.labels_, mm.labels_)
    np.testing.assert_allclose(ref.means_, mm.means_, rtol=1e-9)
    online = bc.GaussianMixture(3, **kw)
    for batch in np.array_split(X, 3):
        online.partial_fit(batch)
    features = bc.GaussianMixture(3, **{**kw, "formulation": "features"})
    for batch in np.array_split(X, 3):
        features.partial_fit(batch)
    np.testing.assert_allclose(online.means_, features.means_, rtol=1e-8)


def test_cholesky_model_round_trips(tmp_path):
    X, _ = _blobs()
    est = bc.GaussianMixture(3, formulation="cholesky", random_state=0, max_iter=5).fit(X)
    est.save(tmp_path / "m.bc")
    back = bc.GaussianMixture.load(tmp_path / "m.bc")
    assert back.formulation == "cholesky"
    np.testing.assert_allclose(back.predict_proba(X), est.predict_proba(X), atol=1e-12)


def test_formulation_is_validated():
    with pytest.raises(ValueError, match=r"formulation='qr' is not supported; choose one of "
                                         r"\['auto', 'features', 'cholesky'\]"):
        bc.GaussianMixture(2, formulation="qr").fit(np.random.default_rng(0).normal(size=(20, 2)))


def _many_components(n=100_000, d=8, k=64, seed=0):
    """bench_gmm.make_data: k full-covariance clusters, centres N(0, 4^2)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(k, d))
    chols = [np.tril(rng.normal(0, 0.3, size=(d, d)), -1) + np.diag(rng.uniform(0.5, 1.5, d))
             for _ in range(k)]
    y = rng.integers(0, k, n)
    X = np.empty((n, d))
    for j in range(k):
        idx = np.flatnonzero(y == j)
        X[idx] = centres[j] + rng.standard_normal((idx.size, d)) @ chols[j].T
    return X


def _many_components_fit_kwargs(X):
    rng = np.random.default_rng(1)
    means = X[rng.choice(X.shape[0], 64, replace=False)]
    covs = np.stack([np.cov(X[:20000].T) + 1e-6 * np.eye(8)] * 64)
    return dict(prior=None, tol=0, max_iter=50, init=means, weights_init=np.full(64, 1 / 64),
                covariances_init=covs, reg_covar=1e-6 / float(X.var(0).mean()))


def _spy_fallback(monkeypatch) -> list:
    chain, fallback = [], gaussian.GaussianFamily.fallback

    def spy(self, d, dtype=torch.float64):
        new = fallback(self, d, dtype)
        chain.append((new.formulation, new.exact_statistics))
        return new

    monkeypatch.setattr(gaussian.GaussianFamily, "fallback", spy)
    return chain


def test_float32_feature_map_falls_back_to_float64_sums_when_a_covariance_breaks(monkeypatch):
    """The grid case N=1e5, D=8, K=64, float32, 50 iterations, without the centred statistics of
    cancelling components (next test): the feature map's float32 statistics give a covariance that is
    not positive definite; EM redoes that M-step with the same statistics summed in float64 and goes
    on in that form (the cached map kept). The Cholesky form, next in the chain, costs several times
    more here."""
    X = _many_components()
    kw = _many_components_fit_kwargs(X)
    chain = _spy_fallback(monkeypatch)
    monkeypatch.setattr(gaussian.GaussianFamily, "centred_components", lambda self, params: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f32 = bc.GaussianMixture(64, dtype="float32", formulation="features", **kw).fit(X.astype(np.float32))
        assert chain == [("features", True)]
        f64 = bc.GaussianMixture(64, dtype="float64", **kw).fit(X)
    assert chain == [("features", True)]  # float64 needed none
    assert f32.formulation_ == f64.formulation_ == "features"
    np.testing.assert_array_equal(f32.labels_, f32.predict(X.astype(np.float32)))


def test_float32_feature_map_centres_the_statistics_of_cancelling_components(monkeypatch):
    """The same fit with the centring on: the tight components far from the frame's origin (|b|^2 =
    mu^T Sigma^-1 mu large) take their log densities and statistics centred on their means, the rest
    from the feature map; no covariance breaks, no fallback is needed, and the fit (its score and its
    own lower bound) stays near the float64 one."""
    X = _many_components()
    kw = _many_components_fit_kwargs(X)
    chain = _spy_fallback(monkeypatch)
    picked, pick = [], gaussian.GaussianFamily.centred_components

    def spy(self, params):
        idx = pick(self, params)
        picked.append(0 if idx is None else idx.numel())
        return idx

    monkeypatch.setattr(gaussian.GaussianFamily, "centred_components", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f32 = bc.GaussianMixture(64, dtype="float32", formulation="features", **kw).fit(X.astype(np.float32))
        f64 = bc.GaussianMixture(64, dtype="float64", **kw).fit(X)
    assert chain == [] and f32.formulation_ == "features"
    # 50 E-steps and the labels pass per fit; float64 takes none
    assert len(picked) == 102 and 0 < max(picked[:51]) < 64 and max(picked[51:]) == 0
    ll32, ll64 = f32.score(X), f64.score(X)
    assert abs(ll32 - ll64) <= 1e-5 * abs(ll64)
    assert abs(f32.lower_bound_ - f64.lower_bound_) <= 1e-5 * abs(f64.lower_bound_)  # the fit's own logits


def test_cancelling_components_are_the_float32_full_ones_past_the_limit():
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [300.0, 0.0]])
    covs = torch.eye(2, dtype=torch.float64).expand(3, 2, 2).clone()
    covs[1] *= 1e-6  # |b|^2 = 1e6: u |b|^2 = 0.06
    covs[2] *= 1.0  # |b|^2 = 9e4: 0.0054
    params = gaussian.GMMParams(torch.full((3,), 1 / 3), means, covs)
    assert gaussian.cancelling_components(params, "full").tolist() == [1, 2]
    wide = gaussian.GMMParams(params.weights.double(), means.double(), covs)
    assert gaussian.cancelling_components(wide, "full") is None  # float64: 9e12 before 0.1%
    assert gaussian.cancelling_components(params, "tied") is None
    assert gaussian.GaussianFamily("full", formulation="cholesky").centred_components(params) is None


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_whitened_statistics_equal_centred_ones_in_float64(cov_type):
    # float64 accumulates sum r y y^T of the E-step's y = (x - mu) P and maps it back; float32 centres x
    from bayesclust.inference import em_cholesky

    X, _ = _blobs(n=500, d=5, k=3, offset=50.0)
    x = torch.from_numpy(X)
    rng = np.random.default_rng(0)
    cov = torch.from_numpy(np.eye(5) * 2.0 + 0.3) if cov_type == "tied" else torch.from_numpy(
        np.stack([np.eye(5) * s + 0.2 for s in (1.0, 2.0, 0.5)]))
    params = gaussian.GMMParams(torch.full((3,), 1 / 3, dtype=torch.float64),
                                torch.from_numpy(rng.normal(50, 3, (3, 5))), cov)
    coef, c = gaussian.cholesky_coefficients(params, cov_type)
    r = torch.softmax(em_cholesky.weighted_log_prob(x, coef, c), 1)
    a, b = em_cholesky._Whitened(coef), em_cholesky.CentredSums(coef.means)
    z, y = em_cholesky.component_rows(x, coef, em_cholesky.factors(coef))
    assert z is y and y.shape == (3, 500, 5)
    torch.testing.assert_close(y.transpose(0, 1), _whitened(x, coef), rtol=1e-12, atol=1e-10)
    a.add_centred(y, r.T.clone())  # overwrites its weights
    b.add(x, r)
    torch.testing.assert_close(a.total(), b.total(), rtol=1e-11, atol=1e-9)


def test_m_step_returns_contiguous_parameters():
    # the means are a column slice of the statistics; (K, m, D) products built from a transposed
    # layout ran 40x slower (issue 17)
    X, _ = _blobs(n=300, d=4, k=3)
    fam = gaussian.GaussianFamily("full", reg_covar=1e-6)
    x = torch.from_numpy(X)
    from bayesclust.inference.em import statistics_from_resp
    from bayesclust.inference.streaming import Features

    resp = torch.softmax(torch.randn(300, 3, dtype=torch.float64), 1)
    G = statistics_from_resp(Features(x, fam.feature_map), resp)
    prev = gaussian.GMMParams(torch.full((3,), 1 / 3, dtype=torch.float64), x[:3].clone(),
                              torch.eye(4, dtype=torch.float64).repeat(3, 1, 1))
    new = fam.m_step(G, prev)
    assert all(t.is_contiguous() for t in (new.weights, new.means, new.covariances))


def _far_start(far):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-4, 1, (400, 2)), rng.normal(4, 1, (400, 2))])
    return X, np.array([[-4.0, -4.0], [4.0, 4.0], [far, -far]]), np.stack([np.eye(2)] * 3)


@pytest.mark.parametrize("formulation", ["features", "cholesky"])
def test_a_component_with_a_tiny_but_real_mass_is_updated_as_scikit_learn_does(formulation):
    # the third component starts with 6e-13 points and gathers one point by iteration 10; it used to
    # be frozen below 1e-6 N / K points, and the fits parted (issue 17: 1e-3 at D = 128, K = 16)
    X, means, cov = _far_start(7.0)
    kw = {"tol": 0, "means_init": means, "weights_init": np.full(3, 1 / 3), "precisions_init": cov}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = sk_mixture.GaussianMixture(3, max_iter=1, reg_covar=1e-6, **kw).fit(X)
        sk = sk_mixture.GaussianMixture(3, max_iter=10, reg_covar=1e-6, **kw).fit(X)
    assert 1e-14 < first.weights_[2] * len(X) < 1e-6 * len(X) / 3
    ours = bc.GaussianMixture(3, prior=None, tol=0, max_iter=10, init=means, weights_init=np.full(3, 1 / 3),
                              covariances_init=cov, dtype="float64", formulation=formulation,
                              reg_covar=1e-6 / X.var(0).mean()).fit(X)
    np.testing.assert_allclose(ours.means_, sk.means_, atol=1e-10)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, atol=1e-10)
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-10)


def test_a_component_with_no_mass_keeps_its_parameters():
    X, means, cov = _far_start(40.0)  # exp(-1600): no responsibility at all
    ours = bc.GaussianMixture(3, prior=None, tol=0, max_iter=3, init=means, weights_init=np.full(3, 1 / 3),
                              covariances_init=cov, dtype="float64").fit(X)
    # unchanged up to the working frame's round trip (x / s * s, one rounding each way)
    np.testing.assert_allclose(ours.means_[2], means[2], rtol=1e-15)
    np.testing.assert_allclose(ours.covariances_[2], cov[2], rtol=1e-15)



@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 300), d=st.integers(1, 12), wide=st.integers(0, 3), f64=st.booleans(),
       seed=st.integers(0, 2**16))
def test_compiled_quadratic_map_equals_the_slice_products(n, d, wide, f64, seed):
    from bayesclust._rowmaps import quadratic_features, quadratic_supported

    dtype = torch.float64 if f64 else torch.float32
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    i, j = torch.triu_indices(d, d)
    ref = torch.cat([X[:, i] * X[:, j], X], 1)
    out = torch.full((n, ref.shape[1] + wide), -7.0, dtype=dtype)  # a block of a wider cache
    assert quadratic_supported(X, out)
    quadratic_features(X, out)
    assert torch.equal(out[:, : ref.shape[1]], ref)  # the same IEEE products, bit for bit
    assert bool((out[:, ref.shape[1]:] == -7.0).all())  # nothing written past Q
    # the torch path (off the CPU) gives the same map
    fast = gaussian.feature_map(X, "full", ones=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gaussian, "quadratic_supported", lambda *a: False)
        assert torch.equal(gaussian.feature_map(X, "full", ones=True), fast)


def test_fallback_goes_float64_sums_then_cholesky_then_its_float64_sums():
    fam = gaussian.GaussianFamily("full", reg_covar=1e-6, formulation="features")
    wide = fam.fallback(8, torch.float32)  # float32 data: the same map, its statistics in float64
    assert wide.formulation == "features" and wide.exact_statistics
    chol = wide.fallback(8, torch.float32)
    assert chol.formulation == "cholesky" and not chol.exact_statistics
    exact = chol.fallback(8, torch.float32)
    assert exact.exact_statistics and exact.log_prob_coefficients(
        gaussian.GMMParams(torch.ones(2) / 2, torch.zeros(2, 8), torch.eye(8).repeat(2, 1, 1)))[0].exact
    assert exact.fallback(8, torch.float32) is None
    # float64 data is summed in float64 already: straight to the Cholesky form, then nothing
    assert fam.fallback(8).formulation == "cholesky" and not fam.fallback(8).exact_statistics
    assert fam.fallback(8).fallback(8) is None
    assert gaussian.GaussianFamily("diag").fallback(8, torch.float32) is None


def test_exact_statistics_sum_float32_blocks_in_float64():
    from bayesclust.inference import em_cholesky

    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(500, 5, generator=g, dtype=torch.float64) * 0.01 + 300.0  # far and tight
    r64 = torch.softmax(torch.randn(500, 3, generator=g, dtype=torch.float64), 1)
    ref = x64[:3].clone()
    exact, plain, truth = (em_cholesky.CentredSums(ref.float(), True), em_cholesky.CentredSums(ref.float()),
                           em_cholesky.CentredSums(ref.float().double()))
    exact.add(x64.float(), r64.float())
    plain.add(x64.float(), r64.float())
    truth.add(x64.float().double(), r64.float().double())
    torch.testing.assert_close(exact.total(), truth.total(), rtol=1e-12, atol=1e-9)
    assert not torch.allclose(plain.total(), truth.total(), rtol=1e-12, atol=1e-9)


def _far_blobs_d128(n=10_000, d=128, k=16):
    # the speed grid's data (benchmarks/bench_gmm.make_data) and start at D = 128, where a component
    # collapsing onto a few points made every library's float32 fit fail (issue 17)
    X = _many_components(n, d, k)
    start = np.random.default_rng(1)
    means = X[start.choice(n, k, replace=False)]
    cov = np.cov(X.T) + 1e-6 * np.eye(d)
    return X, means, np.stack([cov] * k)


def test_float32_fit_survives_a_collapsing_component_at_d128():
    X, means, covs = _far_blobs_d128()
    kw = {"prior": None, "tol": 0, "max_iter": 5, "init": means, "weights_init": np.full(16, 1 / 16),
          "covariances_init": covs, "reg_covar": 1e-6 / X.var(0).mean()}
    f64 = bc.GaussianMixture(16, dtype="float64", **kw).fit(X)
    f32 = bc.GaussianMixture(16, dtype="float32", **kw).fit(X.astype(np.float32))
    assert f32.formulation_ == "cholesky" and f32.means_.dtype == np.float32
    assert f32.score(X) == pytest.approx(f64.score(X), rel=1e-5)
    # the reported covariances stay usable: float64, positive definite (a float32 copy is not)
    assert f32.covariances_.dtype == np.float64
    assert np.linalg.eigvalsh(f32.covariances_).min() > 0
    assert np.linalg.eigvalsh(f32.covariances_.astype(np.float32).astype(np.float64)).min() < 0


@pytest.mark.slow
def test_float32_cholesky_fit_updates_a_tiny_component_as_float64_does():
    # at N = 1e5 a component falls to 3e-5 points in iteration 3: float32 block sums summed in float64
    # (the Cholesky form's G) resolve it, so it is updated as in float64 and scikit-learn, not frozen
    X, means, covs = _far_blobs_d128(n=100_000)
    kw = {"prior": None, "tol": 0, "max_iter": 5, "init": means, "weights_init": np.full(16, 1 / 16),
          "covariances_init": covs, "reg_covar": 1e-6 / X.var(0).mean()}
    f64 = bc.GaussianMixture(16, dtype="float64", **kw).fit(X)
    f32 = bc.GaussianMixture(16, dtype="float32", **kw).fit(X.astype(np.float32))
    assert f32.score(X) == pytest.approx(f64.score(X), rel=1e-4)


def test_float32_cholesky_e_step_whitens_centred_rows():
    # a tight component away from the origin: x P - b cancels about |mu| / sigma = 3e5 times the
    # rounding of x P; (x - mu) P does not. Checked against the same step in float64 on the same
    # (float32-representable) rows and means.
    from bayesclust.inference import em_cholesky
    from bayesclust.inference.streaming import Features

    g = torch.Generator().manual_seed(1)
    X = torch.cat([torch.randn(3000, 6, generator=g, dtype=torch.float64) * 1e-4 + 30.0,
                   torch.randn(3000, 6, generator=g, dtype=torch.float64)]).float().double()
    cov = torch.stack([torch.eye(6) * 1e-8, torch.eye(6)]).double()
    means = torch.stack([X[:3000].mean(0), X[3000:].mean(0)]).float().double()
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)

    def step(dtype):
        p = gaussian.GMMParams(weights.to(dtype), means.to(dtype), cov)
        coef, c = gaussian.cholesky_coefficients(p, "full")
        feats = Features(X.to(dtype), lambda x, out=None: x, cache_bytes=0)
        return em_cholesky.e_step(feats, coef, c), coef, c

    (ll64, G64), coef64, c64 = step(torch.float64)
    (ll32, G32), coef, c = step(torch.float32)
    assert abs(ll32 - ll64) < 5e-7 * abs(ll64)  # c_k itself is rounded to float32 (7e-6 here)
    torch.testing.assert_close(G32, G64, rtol=1e-5, atol=1e-5)
    # per point: the centred whitening the step uses against the uncentred x P - b
    ref = em_cholesky._log_prob(_whitened(X, coef64), c64)[:3000, 0]
    P = coef.W.view(6, 2, 6).transpose(0, 1).contiguous()
    centred = em_cholesky._log_prob(torch.bmm(X.float() - coef.means[:, None], P), c[:, None])[0, :3000]
    plain = em_cholesky._log_prob(_whitened(X.float(), coef), c)[:3000, 0]
    assert float((centred.double() - ref).abs().max()) < 1e-4
    assert float((plain.double() - ref).abs().max()) > 1e-2


@pytest.mark.parametrize("d", [5, 8, 11])
def test_batched_whitened_sums_match_centred_ones(d):
    # float64, full covariances: the E-step's (K, m, D) rows y are weighted in place by sqrt(r) and
    # summed by batched products (from D = 8 over column halves, the symmetric block once); the
    # statistics equal those centred on x itself
    from bayesclust.inference import em_cholesky

    X, _ = _blobs(n=700, d=d, k=3, offset=50.0)
    x = torch.from_numpy(X)
    rng = np.random.default_rng(0)
    covs = []
    for s in (1.0, 2.0, 0.5):
        L = np.tril(rng.normal(0, 0.3, (d, d)), -1) + np.eye(d) * s
        covs.append(L @ L.T)
    params = gaussian.GMMParams(torch.full((3,), 1 / 3, dtype=torch.float64),
                                torch.from_numpy(rng.normal(50, 3, (3, d))), torch.from_numpy(np.stack(covs)))
    coef, c = gaussian.cholesky_coefficients(params, "full")
    P = em_cholesky.factors(coef)
    z, y = em_cholesky.component_rows(x, coef, P)
    assert z is y and y.shape == (3, 700, d)
    torch.testing.assert_close(y.transpose(0, 1), _whitened(x, coef), rtol=1e-12, atol=1e-10)
    r = torch.softmax(em_cholesky.weighted_log_prob(x, coef, c), 1)
    a, b = em_cholesky._Whitened(coef), em_cholesky.CentredSums(coef.means)
    assert a.h == (d // 2 if d >= 8 else 0)
    a.add_centred(y, r.T.clone())  # overwrites its weights
    b.add(x, r)
    torch.testing.assert_close(a.total(), b.total(), rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_cholesky_labels_are_the_first_most_probable_component(dtype, cov_type):
    from bayesclust.inference import em_cholesky
    from bayesclust.inference.streaming import Features

    X, _ = _blobs(n=5000, d=4, k=3)
    x = torch.from_numpy(X).to(dtype)
    cov = torch.eye(4, dtype=dtype) if cov_type == "tied" else torch.eye(4, dtype=dtype).expand(4, 4, 4)
    means = torch.cat([x[:3], x[:1]])  # components 0 and 3 coincide: ties go to the first
    params = gaussian.GMMParams(torch.full((4,), 0.25, dtype=dtype), means, cov.clone())
    coef, c = gaussian.cholesky_coefficients(params, cov_type)
    feats = Features(x, lambda a, out=None: a, chunk_size=700, cache_bytes=0)
    labels = em_cholesky.argmax_chunks(feats, coef, c)
    logits, _ = em_cholesky.log_resp_chunks(feats, coef, c)
    assert torch.equal(labels, logits.argmax(1))
    assert int((labels == 3).sum()) == 0 and int((labels == 0).sum()) > 0


def test_float32_log_densities_keep_a_tight_far_component():
    # predict / score_samples in float32 whiten the centred x - mu_k, as the E-step does; x P - b
    # lost 1e-2 of a log density to cancellation here (|mu| / sigma = 3e5)
    from bayesclust.inference import em_cholesky

    g = torch.Generator().manual_seed(2)
    X = (torch.randn(2000, 6, generator=g, dtype=torch.float64) * 1e-4 + 30.0).float().double()
    means = torch.stack([X.mean(0), -X.mean(0)]).float().double()  # the same values in both dtypes
    params = [gaussian.GMMParams(torch.tensor([0.5, 0.5], dtype=dt), means.to(dt),
                                 torch.stack([torch.eye(6) * 1e-8, torch.eye(6)]).double())
              for dt in (torch.float64, torch.float32)]
    (coef64, c64), (coef32, c32) = (gaussian.cholesky_coefficients(p, "full") for p in params)
    ref = em_cholesky.weighted_log_prob(X, coef64, c64)[:, 0]
    ours = em_cholesky.weighted_log_prob(X.float(), coef32, c32)[:, 0].double()
    plain = em_cholesky._log_prob(_whitened(X.float(), coef32), c32)[:, 0].double()
    assert float((ours - ref).abs().max()) < 1e-4 * float(ref.abs().max())
    assert float((plain - ref).abs().max()) > 1e-2


def test_float32_feature_statistics_do_not_lose_digits_with_n():
    # the float32 blocks' sums go into a float64 G: summed in float32 across blocks, the error grew
    # with N (1.2e-4 relative here, 6.7e-5 at N = 1e6 in the speed grid); now 1.3e-5 (4.3e-6) on the
    # Intel VM and 4.7e-5 on the AMD one, where the float32 products round otherwise (float64 products
    # give 1e-8 there): the bound lies between 4.7e-5 and the old 1.2e-4
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    X = _many_components(n=300_000, d=2, k=16, seed=3)
    rng = np.random.default_rng(1)
    kw = dict(prior=None, tol=0, max_iter=5, init=X[rng.choice(len(X), 16, replace=False)],
              weights_init=np.full(16, 1 / 16), covariances_init=np.stack([np.cov(X[:20000].T)] * 16),
              reg_covar=1e-6 / float(X.var(0).mean()), formulation="features")

    def loglik(m):
        dens = [np.log(w) + multivariate_normal(mu, c).logpdf(X)
                for w, mu, c in zip(m.weights_, m.means_, m.covariances_, strict=True)]
        return logsumexp(np.stack(dens, 1), axis=1).mean()

    f32 = bc.GaussianMixture(16, dtype="float32", **kw).fit(X.astype(np.float32))
    f64 = bc.GaussianMixture(16, dtype="float64", **kw).fit(X)
    assert loglik(f32) == pytest.approx(loglik(f64), rel=8e-5)


def test_centred_components_take_log_densities_and_statistics_from_centred_rows():
    # a 40-point cluster of spread 1e-3 at 30 (|b|^2 ~ 3e9): its uncentred float32 logits and sums
    # cancel; the centred set gives float64's log-likelihood and statistics
    from bayesclust.inference import em
    from bayesclust.inference.streaming import Features

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(300, 3)), rng.normal(size=(40, 3)) * 1e-3 + 30.0])
    parts = (X[:300], X[300:])
    fam = gaussian.GaussianFamily("full", formulation="features")

    def params(dtype):
        return gaussian.GMMParams(torch.tensor([300 / 340, 40 / 340], dtype=dtype),
                                  torch.tensor(np.stack([p.mean(0) for p in parts]), dtype=dtype),
                                  torch.tensor(np.stack([np.cov(p.T) for p in parts])))

    p32, p64 = params(torch.float32), params(torch.float64)
    assert fam.centred_components(p32).tolist() == [1] and fam.centred_components(p64) is None
    ll64, G64 = em.e_step(Features(torch.from_numpy(X), fam.feature_map), *fam.log_prob_coefficients(p64))
    feats = Features(torch.from_numpy(X.astype(np.float32)), fam.feature_map)
    A, c = fam.log_prob_coefficients(p32)
    plain, _ = em.e_step(feats, A, c)
    centred = em.centred_set(fam, p32)
    ll, G = em.e_step(feats, A, c, centred=centred)
    assert abs(ll - ll64) <= 1e-5 * abs(ll64) < abs(plain - ll64)
    torch.testing.assert_close(G[1], G64[1], rtol=1e-5, atol=1e-6)
    labels = em.argmax_chunks(feats, A, c, centred)
    assert (labels.numpy() == np.repeat([0, 1], [300, 40])).all()


def test_out_of_core_centred_components_read_each_block_once():
    # the centred components' densities and sums come from the rows of the block just mapped: the
    # source is read once a block, and the E-step equals the in-memory one
    from bayesclust.inference import em, streaming

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(300, 3)), rng.normal(size=(40, 3)) * 1e-3 + 30.0]).astype(np.float32)
    fam = gaussian.GaussianFamily("full", formulation="features")
    p32 = gaussian.GMMParams(torch.tensor([300 / 340, 40 / 340]), torch.tensor([[0.0] * 3, [30.0] * 3]),
                             torch.stack([torch.eye(3), torch.eye(3) * 1e-6]).double())
    A, c = fam.log_prob_coefficients(p32)
    centred = em.centred_set(fam, p32)
    source = streaming.ChunkSource([X[:200], X[200:]])
    reads = []
    rows = source.rows
    source.rows = lambda start, stop: reads.append((start, stop)) or rows(start, stop)
    feats = streaming.SourceFeatures(source, fam.feature_map, torch.zeros(3), chunk_size=64)
    ll, G = em.e_step(feats, A, c, centred=centred)
    assert reads == [(0, 256), (256, 340)]  # blocks of at least 256 rows (em.block_rows)
    ll_mem, G_mem = em.e_step(streaming.Features(torch.from_numpy(X), fam.feature_map), A, c, centred=centred)
    assert ll == pytest.approx(ll_mem, rel=1e-6)
    torch.testing.assert_close(G, G_mem, rtol=1e-5, atol=1e-4)
    reads.clear()
    assert (em.argmax_chunks(feats, A, c, centred).numpy() == np.repeat([0, 1], [300, 40])).all()
    assert reads == [(0, 256), (256, 340)]
