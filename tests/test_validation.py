"""check_array and the hyperparameter checks: accepted inputs, every error message, round trips."""

from __future__ import annotations

import fractions
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bayesclust._validation import (
    NotFittedError,
    check_array,
    check_is_fitted,
    check_labels,
    check_option,
    check_positive_int,
    check_scalar,
)

# ------------------------------------------------------------------------------------ check_array inputs


@pytest.mark.parametrize(
    "X",
    [
        np.array([[1.0, 2.0], [3.0, 4.0]]),
        np.array([[1, 2], [3, 4]], dtype=np.int32),
        [[1, 2], [3, 4]],
        ((1.0, 2.0), (3.0, 4.0)),
        torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64),
        np.array([[1, 2], [3, 4]], dtype=object),
    ],
    ids=["float64", "int32", "list", "tuple", "torch64", "object-numbers"],
)
def test_accepts_array_likes(X):
    t = check_array(X)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert t.is_contiguous() and t.shape == (2, 2)
    np.testing.assert_array_equal(t.numpy(), [[1, 2], [3, 4]])


def test_dtype_device_and_layout():
    X = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    t = check_array(X, dtype="float64", device="cpu")
    assert t.dtype == torch.float64 and t.is_contiguous()
    np.testing.assert_array_equal(t.numpy(), X)
    assert check_array(X, dtype=torch.float64).dtype == torch.float64
    assert check_array(torch.ones(3, 2, dtype=torch.float64)).dtype == torch.float32
    assert check_array(np.array([[True, False]])).tolist() == [[1.0, 0.0]]
    assert check_array(torch.arange(6).reshape(2, 3)).dtype == torch.float32
    # a transposed (non-contiguous) tensor comes back contiguous with the same values
    tt = torch.arange(6.0).reshape(2, 3).T
    np.testing.assert_array_equal(check_array(tt).numpy(), tt.numpy())
    assert check_array(tt).is_contiguous()
    with pytest.raises(ValueError, match="dtype='float16' is not supported; use 'float32' or 'float64'"):
        check_array(X, dtype="float16")
    with pytest.raises(ValueError, match="device='tpu' is not a valid device"):
        check_array(X, device="tpu")


def test_pandas_input():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6]})
    t = check_array(df, dtype="float64")
    np.testing.assert_array_equal(t.numpy(), df.to_numpy(dtype=np.float64))
    bad = df.assign(species=["x", "y", "z"], when=pd.to_datetime(["2020", "2021", "2022"]))
    with pytest.raises(TypeError, match=r"X has non-numeric columns \['species', 'when'\]; drop or encode"):
        check_array(bad)
    with pytest.raises(ValueError, match=r"got 1 \(shape \(3,\)\)\. Reshape .*X\.reshape\(-1, 1\)"):
        check_array(df["a"])
    t = check_array(df[["a"]])
    assert t.shape == (3, 1)
    with pytest.raises(ValueError, match="1 NaN value"):
        check_array(pd.DataFrame({"a": [1.0, None]}))


def test_read_only_input_is_copied_without_warning():
    X = np.arange(6.0).reshape(3, 2)
    X.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writeable numpy memory
        t = check_array(X, dtype="float64")
    t[0, 0] = 99.0  # the tensor owns writeable memory; the caller's array is untouched
    assert X[0, 0] == 0.0


def test_values_beyond_float32_range():
    X = np.array([[1e39, 1.0], [2.0, 3.0]])
    with pytest.raises(ValueError, match=r"values up to 1e\+39, beyond the range of torch.float32.*"
                                         r"dtype='float64'"):
        check_array(X)
    assert float(check_array(X, dtype="float64")[0, 0]) == 1e39


# ------------------------------------------------------------------------------------ check_array errors


@pytest.mark.parametrize("container", [np.array, torch.tensor], ids=["numpy", "torch"])
def test_nan_and_inf(container):
    with pytest.raises(ValueError, match=r"X contains 2 NaN value\(s\); remove or impute them"):
        check_array(container([[np.nan, 1.0], [2.0, np.nan]]))
    with pytest.raises(ValueError, match=r"X contains 1 infinite value\(s\)"):
        check_array(container([[np.inf, 1.0], [2.0, 3.0]]))
    with pytest.raises(ValueError, match=r"contains 2 NaN value\(s\)"):  # NaN named when both occur
        check_array(container([[np.nan, -np.inf]]))
    t = check_array(container([[np.nan, 1.0]]), allow_nan=True)
    assert torch.isnan(t[0, 0]) and t[0, 1] == 1.0


def test_wrong_ndim():
    msg = r"X must have 2 dimensions, got 1 \(shape \(3,\)\)\. Reshape .*X\.reshape\(-1, 1\) .*single feature"
    with pytest.raises(ValueError, match=msg):
        check_array([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"X must have 2 dimensions, got 3 \(shape \(1, 2, 2\)\)\.$"):
        check_array(np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"images must have 3 or 4 dimensions, got 2"):
        check_array(np.zeros((2, 2)), ndim=(3, 4), name="images")
    assert check_array(np.zeros((2, 1, 4, 4)), ndim=(3, 4)).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="X must have 2 dimensions"):  # a bare scalar
        check_array(5.0)


def test_empty_and_too_few_samples():
    for X in (np.zeros((0, 3)), np.zeros((0, 0)), torch.zeros(0, 2), []):
        with pytest.raises(ValueError, match=r"is empty \(shape .*\); pass at least one sample"):
            check_array(X, ndim=(1, 2))
    for X in (np.zeros((3, 0)), torch.zeros(2, 0)):
        with pytest.raises(ValueError, match=r"X has 0 feature\(s\) \(shape=\(\d, 0\)\) while a minimum"):
            check_array(X)
    with pytest.raises(ValueError, match=r"X has 2 sample\(s\) but at least 3 are needed .*fewer components"):
        check_array(np.zeros((2, 2)), min_samples=3)
    assert check_array(np.zeros((3, 2)), min_samples=3).shape == (3, 2)


def test_non_numeric():
    with pytest.raises(TypeError, match="X must be array-like of numbers, got a string"):
        check_array("1,2;3,4")
    with pytest.raises(TypeError, match="X must be array-like of numbers, got a string"):
        check_array(b"\x00\x01")
    with pytest.raises(TypeError, match=r"X contains non-numeric values \(dtype <U1.*\); convert or drop"):
        check_array([["a", "b"], ["c", "d"]])
    with pytest.raises(TypeError, match=r"contains non-numeric values \(dtype object.*'setosa'"):
        check_array(np.array([[1.0, "setosa"]], dtype=object))
    with pytest.raises(TypeError, match=r"X could not be converted to an array .*rectangular"):
        check_array([[1.0, 2.0], [3.0]])


def test_complex():
    # ValueError with scikit-learn's wording, so its estimator checks recognise it
    with pytest.raises(ValueError, match="Complex data not supported: X is complex; pass real-valued data"):
        check_array(np.array([[1 + 2j, 3.0]]))
    with pytest.raises(ValueError, match="Z is complex; pass real-valued data"):
        check_array(torch.tensor([[1 + 2j, 3.0]]), name="Z")


def test_sparse_rejected():
    sparse = pytest.importorskip("scipy.sparse")
    msg = r"Sparse input is not supported; pass X as a dense array \(X\.toarray\(\)\)"
    with pytest.raises(TypeError, match=msg):
        check_array(sparse.csr_matrix(np.eye(3)))
    with pytest.raises(TypeError, match=r"Sparse input is not supported; .*\(X\.to_dense\(\)\)"):
        check_array(torch.eye(3).to_sparse())


def test_feature_mismatch():
    X = np.zeros((4, 3))
    assert check_array(X, n_features=3).shape == (4, 3)
    msg = r"X has 3 features, but it is expecting 5 features as input \(as seen in fit\)"
    with pytest.raises(ValueError, match=msg):
        check_array(X, n_features=5)
    imgs = np.zeros((2, 1, 28, 28))
    assert check_array(imgs, ndim=4, n_features=(1, 28, 28)).shape == (2, 1, 28, 28)
    msg = r"X has shape \(1, 28, 28\), but it is expecting shape \(1, 16, 16\) as input"
    with pytest.raises(ValueError, match=msg):
        check_array(imgs, ndim=4, n_features=(1, 16, 16))


# ------------------------------------------------------------------------------------ round trips


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=64),
    ),
    st.sampled_from(["C", "F"]),
)
def test_float64_round_trip_is_exact(X, order):
    X = np.asarray(X, order=order)
    t = check_array(X, dtype="float64")
    assert t.dtype == torch.float64 and tuple(t.shape) == X.shape
    # bit-for-bit, so -0.0 and subnormals are preserved too
    np.testing.assert_array_equal(t.numpy().view(np.uint64), np.ascontiguousarray(X).view(np.uint64))


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=5),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    )
)
def test_float32_tensor_round_trip_is_exact(X):
    t = check_array(torch.from_numpy(X.copy()), ndim=3, dtype="float32")
    np.testing.assert_array_equal(t.numpy().view(np.uint32), X.view(np.uint32))
    t64 = check_array(X, ndim=3, dtype="float64")  # widening is exact
    np.testing.assert_array_equal(t64.numpy(), X.astype(np.float64))


# ------------------------------------------------------------------------------------ hyperparameter checks


def test_check_positive_int():
    assert check_positive_int(3, "n_components") == 3
    assert type(check_positive_int(np.int64(4), "n_components")) is int
    assert check_positive_int(0, "n_init", minimum=0) == 0
    for bad in (True, 2.0, "3", None, np.float64(2.0)):
        with pytest.raises(TypeError, match=r"n_components must be an integer, got \w+"):
            check_positive_int(bad, "n_components")
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        check_positive_int(0, "n_components")
    with pytest.raises(ValueError, match="max_iter must be >= 1, got -5"):
        check_positive_int(-5, "max_iter")
    with pytest.raises(ValueError, match="batch_size must be >= 2, got 1"):
        check_positive_int(1, "batch_size", minimum=2)


def test_check_scalar():
    assert check_scalar(1, "tol") == 1.0 and isinstance(check_scalar(1, "tol"), float)
    assert check_scalar(np.float32(0.5), "tol") == 0.5
    assert check_scalar(fractions.Fraction(1, 4), "tol") == 0.25
    assert check_scalar(0.0, "tol", low=0.0) == 0.0
    assert check_scalar(1.0, "p", low=0.0, high=1.0) == 1.0
    for bad in (True, "1e-3", None, [1.0], 1j):
        with pytest.raises(TypeError, match="tol must be a real number, got"):
            check_scalar(bad, "tol")
    for bad in (float("nan"), float("inf"), -np.inf):
        with pytest.raises(ValueError, match="tol must be finite"):
            check_scalar(bad, "tol")
    with pytest.raises(ValueError, match="tol must be >= 0.0, got -1e-05"):
        check_scalar(-1e-5, "tol", low=0.0)
    with pytest.raises(ValueError, match="reg_covar must be > 0.0, got 0.0"):
        check_scalar(0.0, "reg_covar", low=0.0, low_inclusive=False)
    with pytest.raises(ValueError, match="p must be <= 1.0, got 1.5"):
        check_scalar(1.5, "p", high=1.0)
    with pytest.raises(ValueError, match="p must be < 1.0, got 1.0"):
        check_scalar(1.0, "p", high=1.0, high_inclusive=False)


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.floats(-10, 10), st.floats(0, 10))
def test_check_scalar_range_property(v, low, width):
    high = low + width
    inside = low <= v <= high
    if inside:
        assert check_scalar(v, "x", low=low, high=high) == v
    else:
        with pytest.raises(ValueError, match=r"x must be (>=|<=) "):
            check_scalar(v, "x", low=low, high=high)


def test_check_option():
    assert check_option("full", "covariance_type", ("full", "diag")) == "full"
    assert check_option(None, "init", [None, "kmeans++"]) is None
    msg = r"covariance_type='ful' is not supported; choose one of \['full', 'diag'\]"
    with pytest.raises(ValueError, match=msg):
        check_option("ful", "covariance_type", ("full", "diag"))


def test_check_is_fitted():
    class Model:
        pass

    m = Model()
    with pytest.raises(NotFittedError, match=r"This Model instance is not fitted yet; call fit\(X\)"):
        check_is_fitted(m, ["means_"])
    # NotFittedError is both a ValueError and an AttributeError (scikit-learn's convention)
    with pytest.raises(ValueError):
        check_is_fitted(m, ["means_"])
    with pytest.raises(AttributeError):
        check_is_fitted(m, ["means_"])
    skx = pytest.importorskip("sklearn.exceptions")
    with pytest.raises(skx.NotFittedError):
        check_is_fitted(m, ["means_", "covariances_"])
    m.means_ = np.zeros(2)
    check_is_fitted(m, ["means_"])


def test_check_labels():
    codes = check_labels(np.array(["b", "a", "b", "c"]))
    np.testing.assert_array_equal(codes, [1, 0, 1, 2])
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(check_labels(torch.tensor([7, 3, 7])), [1, 0, 1])
    with pytest.raises(ValueError, match=r"labels must be 1-D, got shape \(2, 1\)"):
        check_labels([[1], [2]], name="labels")
    with pytest.raises(ValueError, match="y is empty; pass at least one label"):
        check_labels([])
    with pytest.raises(ValueError, match="y has 2 labels but there are 3 samples"):
        check_labels([0, 1], n_samples=3)
    with pytest.raises(ValueError, match="y contains NaN or infinite labels"):
        check_labels([0.0, np.nan])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), d=st.integers(1, 9), pos=st.floats(0, 1, exclude_max=True),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), f64=st.booleans(), transpose=st.booleans())
def test_one_non_finite_value_anywhere_is_caught(n, d, pos, bad, f64, transpose):
    # the check reads min and max (NaN propagates to both); a single bad value at any position, in
    # any layout, must still fail with the message that names it
    X = np.random.default_rng(0).normal(size=(n, d)).astype(np.float64 if f64 else np.float32)
    X.flat[int(pos * X.size)] = bad
    kind = "NaN" if np.isnan(bad) else "infinite"
    with pytest.raises(ValueError, match=rf"X contains 1 {kind} value\(s\)"):
        check_array(torch.from_numpy(X).T.contiguous().T if transpose else X, dtype="input")
