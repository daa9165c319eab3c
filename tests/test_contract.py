"""The estimator contract: one list of cases (estimator x route), one set of checks every case passes.

In the spirit of GPyTorch's ``base_*_test_case.py``: a new estimator or route is one entry of
``CASES`` (an id, a factory returning an unfitted estimator with small, fast settings, and a data
builder), and then it is held to everything below:

- scikit-learn's ``parametrize_with_checks`` (tabular estimators, one case per estimator x route);
- the fitted attributes ``n_components_``, ``labels_``, ``converged_``, ``n_iter_``, ``history_``,
  ``n_features_in_``;
- ``fit_predict(X) == fit(X).predict(X)``; the same ``random_state`` gives the same labels;
- ``save`` / ``load`` gives identical predictions; ``clone`` and ``get_params`` / ``set_params``;
- bad input raises with the messages of ``bayesclust/_validation.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import bayesclust as bc
from bayesclust.estimators import dpgmm as _dpgmm_module

sklearn_base = pytest.importorskip("sklearn.base")
estimator_checks = pytest.importorskip("sklearn.utils.estimator_checks")

# The closed-form DP route is being renamed "svi" -> "vi": use whichever the estimator accepts.
DP_VI = "vi" if "vi" in getattr(_dpgmm_module, "INFERENCE", ("vi",)) else "svi"
K = 3  # clusters in every data set below (and n_components of every fixed-K case)


# ------------------------------------------------------------------------------------------ data
def _blobs(n: int = 90, seed: int = 0) -> np.ndarray:
    """K well-separated Gaussian blobs in 3-D (float64)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0]])
    return centres[rng.integers(0, K, n)] + rng.normal(size=(n, 3))


def _standardised_blobs() -> np.ndarray:
    X = _blobs()
    return (X - X.mean(0)) / X.std(0)


def _images(n: int = 60, seed: int = 1) -> np.ndarray:
    """K glyphs (vertical bar, horizontal bar, square) of 10 x 10 pixels plus noise, (N, H, W) float32."""
    rng = np.random.default_rng(seed)
    protos = np.zeros((K, 10, 10), np.float32)
    protos[0, 2:8, 4:6] = 1.0
    protos[1, 4:6, 1:9] = 1.0
    protos[2, 2:8, 2:8] = 1.0
    return (protos[rng.integers(0, K, n)] + 0.05 * rng.normal(size=(n, 10, 10))).astype(np.float32)


# ------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]  # an unfitted estimator with small, fast settings
    data: Callable[[], np.ndarray]
    images: bool = False  # input (N, H, W); else tabular (N, D)
    fixed_k: bool = True  # n_components is given (False: the number of clusters is inferred)
    sklearn: bool = False  # the one case of its estimator x route run through parametrize_with_checks

    def __repr__(self) -> str:
        return self.id


_DTI = {
    "transforms": ("affine",), "max_iter": 8, "batch_size": 30, "encoder_width": 8, "feature_dim": 8,
    "head_hidden": 8, "device": "cpu", "random_state": 0,
}
_CONTRASTIVE = {"max_iter": 2, "batch_size": 30, "embedding_dim": 16, "projection_dim": 8, "hidden": 16,
                "random_state": 0}
_ENTROPY = {"max_iter": 3, "batch_size": 45, "warmup": 1, "random_state": 0}
ENTROPY_LOSSES = ("mi", "renyi", "collision", "sela", "swav", "ce", "rce")

CASES: list[Case] = [
    *(
        Case(
            f"GaussianMixture-em-{cov}",
            lambda cov=cov: bc.GaussianMixture(K, covariance_type=cov, max_iter=20, random_state=0),
            _blobs,
            sklearn=cov == "full",
        )
        for cov in ("full", "tied", "diag", "spherical")
    ),
    Case(
        "GaussianMixture-svi",
        lambda: bc.GaussianMixture(K, inference="svi", max_iter=15, random_state=0),
        _blobs,
        sklearn=True,
    ),
    Case(  # spherical: NUTS on D=10 sklearn data with diag takes seconds per fit; num_samples >= 4
        "GaussianMixture-nuts",
        lambda: bc.GaussianMixture(
            K, covariance_type="spherical", inference="nuts", max_iter=10, num_samples=4, warmup_steps=4,
            num_chains=1, random_state=0,
        ),
        lambda: _blobs(45),
        sklearn=True,
    ),
    Case("DPGMM-splitmerge", lambda: bc.DPGMM(max_iter=15, random_state=0), _blobs, fixed_k=False,
         sklearn=True),
    Case("DPGMM-vi", lambda: bc.DPGMM(inference=DP_VI, max_iter=30, random_state=0), _blobs,
         fixed_k=False, sklearn=True),
    Case(
        "DPGMM-deep",
        lambda: bc.DPGMM(inference="deep", max_iter=3, hidden=16, batch_size=64, random_state=0),
        _blobs,
        fixed_k=False,
        sklearn=True,
    ),
    Case("DTIKMeans", lambda: bc.DTIKMeans(K, **_DTI), _images, images=True),
    Case("DTIGMM", lambda: bc.DTIGMM(K, **_DTI), _images, images=True),
    *(
        Case(f"ContrastiveClustering-{method}",
             lambda method=method: bc.ContrastiveClustering(K, method, **_CONTRASTIVE), _images, images=True)
        for method in ("swav", "clot")
    ),
    *(
        Case(
            f"EntropyClustering-linear-{loss}",
            lambda loss=loss: bc.EntropyClustering(K, loss=loss, **_ENTROPY),
            _standardised_blobs,
            sklearn=loss == "mi",
        )
        for loss in ENTROPY_LOSSES
    ),
    Case(
        "EntropyClustering-mlp-collision",
        lambda: bc.EntropyClustering(K, head="mlp", hidden=16, loss="collision", **_ENTROPY),
        _standardised_blobs,
    ),
    Case(
        "EntropyClustering-cnn-mi",
        lambda: bc.EntropyClustering(K, head="cnn", loss="mi", max_iter=2, batch_size=30, random_state=0),
        _images,
        images=True,
    ),
]

IDS = [c.id for c in CASES]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _quiet():
    """Few-iteration fits warn that they did not converge; that is expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fit(case: Case) -> tuple[Any, np.ndarray]:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X = case.data()
        return case.make().fit(X), X


_FITTED: dict[str, tuple[Any, np.ndarray]] = {}


@pytest.fixture(params=CASES, ids=IDS)
def case(request) -> Case:
    return request.param


@pytest.fixture
def fitted(case: Case) -> tuple[Any, np.ndarray]:
    """(estimator fitted on the case's data, X); one fit per case, shared by the read-only checks."""
    if case.id not in _FITTED:
        _FITTED[case.id] = _fit(case)
    return _FITTED[case.id]


def _proba_or_labels(est: Any, X: np.ndarray) -> np.ndarray:
    return est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X)


# ------------------------------------------------------------------------------------------ sklearn
# Checks that cannot apply, per case, with the reason (run as strict xfails: a check listed here that
# passes fails the module, so the list cannot go stale). Everything else must pass.
_ONE_CLUSTER = (
    "scikit-learn sets n_components=1 for this check; EntropyClustering needs n_components >= 2 (with "
    "one cluster the softmax is constant and every loss is zero), so fit raises 'n_components must be "
    ">= 2, got 1' before the check's own assertion is reached"
)
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {
    "EntropyClustering-linear-mi": {
        name: _ONE_CLUSTER
        for name in (
            "check_dont_overwrite_parameters",
            "check_methods_subset_invariance",
            "check_fit2d_1sample",
            "check_fit2d_1feature",
            "check_fit2d_predict1d",
        )
    },
}
# The error each expected failure must come from (tested in test_expected_failures_have_that_reason).
EXPECTED_FAILURE_ERRORS = {"EntropyClustering-linear-mi": "n_components must be >= 2, got 1"}
# Checks scikit-learn itself skips (not listed above, not ours to decide):
# - check_array_api_input, every case: skipped unless SCIPY_ARRAY_API=1 is set; the estimators do not
#   claim array-API support (they take numpy / torch input through _validation.check_array).
# No tabular estimator is tagged non_deterministic: a fixed random_state reproduces every route on the CPU
# (test_same_random_state_same_labels), so scikit-learn runs its pipeline-consistency, sample-order
# and subset-invariance checks on all of them.


def _case_id_of(est: Any) -> str:
    """The CASES id of a tabular estimator, from its parameters (estimator-route)."""
    if isinstance(est, bc.EntropyClustering):
        return f"EntropyClustering-{est.head}-{est.loss}"
    route = est.inference
    if isinstance(est, bc.GaussianMixture) and route == "em":
        route = f"em-{est.covariance_type}"
    return f"{type(est).__name__}-{route}"


def _expected_failed_checks(est: Any) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS.get(_case_id_of(est), {})


# DTIKMeans / DTIGMM (and the cnn head) are excluded from the scikit-learn checks: they take images
# (N, H, W) or (N, C, H, W) and every scikit-learn check feeds 2-D (N, D) tables, so none applies.
# The contract below runs on them with image data instead.
SKLEARN_CASES = [c for c in CASES if c.sklearn]


with warnings.catch_warnings():  # "does not inherit from sklearn.base.BaseEstimator": by design, the
    # estimators follow scikit-learn's conventions without depending on it
    warnings.filterwarnings("ignore", message="Estimator .* does not inherit from", category=UserWarning)
    _sklearn_checks = estimator_checks.parametrize_with_checks(
        [c.make() for c in SKLEARN_CASES], expected_failed_checks=_expected_failed_checks, xfail_strict=True
    )


@_sklearn_checks
def test_sklearn_compatible(estimator, check):
    torch.set_num_threads(1)
    check(estimator)


def _messages(exc: BaseException | None) -> str:
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(out)


@pytest.mark.parametrize("case_id", sorted(EXPECTED_FAILED_CHECKS))
def test_expected_failures_have_that_reason(case_id):
    """Each expected failure fails with the stated error (other failures are test_sklearn_compatible's)."""
    case = next(c for c in SKLEARN_CASES if c.id == case_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = estimator_checks.check_estimator(case.make(), on_fail=None)
    failed = {r["check_name"]: _messages(r["exception"]) for r in results if r["status"] == "failed"}
    expected = EXPECTED_FAILED_CHECKS[case_id]
    assert not set(expected) - set(failed), sorted(set(expected) - set(failed))
    wrong = {k: failed[k][:300] for k in expected if EXPECTED_FAILURE_ERRORS[case_id] not in failed[k]}
    assert not wrong, wrong


def test_sklearn_cases_cover_every_tabular_estimator_and_route():
    covered = {_case_id_of(c.make()) for c in SKLEARN_CASES}
    assert covered == {
        "GaussianMixture-em-full", "GaussianMixture-svi", "GaussianMixture-nuts", "DPGMM-splitmerge",
        f"DPGMM-{DP_VI}", "DPGMM-deep", "EntropyClustering-linear-mi",
    }
    assert {c.id for c in SKLEARN_CASES} == {
        "GaussianMixture-em-full", "GaussianMixture-svi", "GaussianMixture-nuts", "DPGMM-splitmerge",
        "DPGMM-vi", "DPGMM-deep", "EntropyClustering-linear-mi",
    }


@pytest.mark.parametrize("cls", [bc.DTIKMeans, bc.DTIGMM, bc.ContrastiveClustering])
def test_image_estimators_declare_image_input_to_scikit_learn(cls):
    """The DTI estimators take images only: their tags say so, and scikit-learn then skips its (N, D)
    checks with that reason instead of failing them (the contract here runs on images)."""
    from sklearn.exceptions import SkipTestWarning
    from sklearn.utils import get_tags

    tags = get_tags(cls(3))
    assert not tags.input_tags.two_d_array and tags.input_tags.three_d_array
    assert get_tags(bc.EntropyClustering(3)).input_tags.two_d_array  # tables and images
    with pytest.warns(SkipTestWarning, match=f"Can't test estimator {cls.__name__} which requires input"):
        results = estimator_checks.check_estimator(cls(3), on_fail=None)
    assert not [r for r in results if r["status"] == "failed"]


# ------------------------------------------------------------------------------------------ fitted attributes
def test_n_components_(fitted):
    est, _ = fitted
    assert hasattr(est, "n_components_"), f"{type(est).__name__} has no n_components_ after fit"
    k = est.n_components_
    assert isinstance(k, int | np.integer) and not isinstance(k, bool) and k >= 1, repr(k)


def test_labels_(fitted):
    est, X = fitted
    labels = np.asarray(est.labels_)
    assert labels.shape == (X.shape[0],)
    assert np.issubdtype(labels.dtype, np.integer), labels.dtype
    assert labels.min() >= 0 and labels.max() < est.n_components_


def test_run_attributes(fitted):
    est, _ = fitted
    assert isinstance(est.converged_, bool | np.bool_), type(est.converged_)
    n_iter = est.n_iter_
    assert isinstance(n_iter, int | np.integer) and not isinstance(n_iter, bool) and n_iter >= 1
    history = est.history_
    assert isinstance(history, list)
    assert all(isinstance(h, float | np.floating) and np.isfinite(h) for h in history), history
    assert len(history) == n_iter  # every route records one objective per iteration


def test_n_features_in_(fitted):
    est, X = fitted
    nf = est.n_features_in_  # an int, as scikit-learn's; for images the values per sample, C * H * W
    assert isinstance(nf, int | np.integer) and nf == int(np.prod(X.shape[1:]))


# ------------------------------------------------------------------------------------------ behaviour
def test_fit_predict_equals_fit_then_predict(case, fitted):
    est, X = fitted
    torch.set_num_threads(1)
    labels = case.make().fit_predict(X)
    np.testing.assert_array_equal(labels, est.predict(X))


def test_same_random_state_same_labels(case, fitted):
    est, X = fitted
    other, _ = _fit(case)
    np.testing.assert_array_equal(other.labels_, est.labels_)


def test_save_load_round_trip(fitted, tmp_path):
    est, X = fitted
    path = tmp_path / "model.pt"
    est.save(path)
    loaded = type(est).load(path)
    assert type(loaded) is type(est)
    assert loaded.get_params(deep=False).keys() == est.get_params(deep=False).keys()
    np.testing.assert_array_equal(_proba_or_labels(loaded, X), _proba_or_labels(est, X))
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray | torch.Tensor) or isinstance(b, np.ndarray | torch.Tensor):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a is b or a == b


def test_clone_and_params_round_trip(case, fitted):
    est, _ = fitted
    fresh = case.make()
    params = fresh.get_params(deep=False)
    cloned = sklearn_base.clone(est)
    assert type(cloned) is type(est) and cloned is not est
    assert not hasattr(cloned, "n_features_in_") and not hasattr(cloned, "labels_")  # unfitted
    got = cloned.get_params(deep=False)
    assert got.keys() == params.keys()
    assert all(_same(got[k], params[k]) for k in params), {k: (got[k], params[k]) for k in params}
    # set_params(**get_params()) changes nothing; set_params sets and returns self
    assert fresh.set_params(**params) is fresh
    assert all(_same(fresh.get_params(deep=False)[k], v) for k, v in params.items())
    fresh.set_params(random_state=7)
    assert fresh.get_params()["random_state"] == 7 and fresh.random_state == 7
    with pytest.raises(ValueError, match="Invalid parameter 'not_a_parameter'"):
        fresh.set_params(not_a_parameter=1)


# ------------------------------------------------------------------------------------------ bad input
# The messages are those of bayesclust/_validation.py (check_array, check_is_fitted).
def test_nan_in_X(case):
    X = case.data().copy()
    X.reshape(-1)[5] = np.nan
    with pytest.raises(ValueError, match=r"X contains 1 NaN value\(s\); remove or impute them"):
        case.make().fit(X)


def test_wrong_ndim(case):
    X = case.data()
    if case.images:  # a common mistake: flattened images (or one dimension too many for a
        # head that also takes tables)
        bad = X[:, None, None] if isinstance(case.make(), bc.EntropyClustering) else X.reshape(len(X), -1)
    else:
        bad = X[:, 0]
    with pytest.raises(ValueError, match=rf"X must have [\d or]+ dimensions, got {bad.ndim} \(shape"):
        case.make().fit(bad)


@pytest.mark.parametrize("case", [c for c in CASES if c.fixed_k], ids=[c.id for c in CASES if c.fixed_k])
def test_fewer_samples_than_clusters(case):
    """Fixed-K cases only: DPGMM infers the number of clusters and fits one sample."""
    X = case.data()[: K - 1]
    with pytest.raises(ValueError, match=rf"X has {K - 1} sample\(s\) but at least {K} are needed"):
        case.make().fit(X)


def test_non_numeric_strings(case):
    X = case.data()
    strings = np.full(X.shape, "abc", dtype=object)
    with pytest.raises(TypeError, match="X contains non-numeric values"):
        case.make().fit(strings)


def test_different_feature_count_at_predict(fitted):
    est, X = fitted
    bad = X[:, :-1, :-1] if X.ndim == 3 else X[:, :-1]
    with pytest.raises(ValueError, match=r"but it is expecting .* as input \(as seen in fit\)"):
        est.predict(bad)


def test_predict_before_fit(case):
    X = case.data()
    est = case.make()
    methods = ["predict"] + (["predict_proba"] if hasattr(est, "predict_proba") else [])
    for name in methods:
        with pytest.raises(bc.NotFittedError, match="instance is not fitted yet; call fit"):
            getattr(est, name)(X)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):  # scikit-learn's tooling recognises it
        est.predict(X)
