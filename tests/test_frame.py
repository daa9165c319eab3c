"""The working frame's compiled passes (``_rowmaps.column_moments`` / ``affine_rows``) against the
float64 torch definitions, and the frame functions that use them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesclust import _frame
from bayesclust._rowmaps import affine_rows, column_moments, rows_supported


def _data(n, d, offset, f64, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, d, dtype=torch.float64)
    return (X + offset).to(torch.float64 if f64 else torch.float32)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6000), d=st.integers(1, 12), offset=st.sampled_from([0.0, 1e3, -1e8]),
       f64=st.booleans(), seed=st.integers(0, 2**16))
def test_column_moments_match_the_float64_two_pass_moments(n, d, offset, f64, seed):
    # n crosses the 2,048-row blocks; offsets up to 1e8 against spreads down to 1e-3 would lose every
    # digit to uncentred sums, and the blocks are merged by Chan's pairwise formula instead
    X = _data(n, d, offset, f64, seed)
    mean, var = column_moments(X)
    ref_mean = X.double().mean(0)
    ref_var = (X.double() - ref_mean).square().mean(0)
    assert mean.dtype == var.dtype == torch.float64
    torch.testing.assert_close(mean, ref_mean, rtol=1e-13, atol=1e-14 * float(X.abs().max()))
    # a mean a few ulps of the offset apart moves the variance by their square (Sterbenz: the
    # differences themselves are exact)
    torch.testing.assert_close(var, ref_var, rtol=1e-11, atol=(16 * 2.3e-16 * abs(offset)) ** 2 + 1e-300)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3000), d=st.integers(1, 12), f64_in=st.booleans(), f64_out=st.booleans(),
       scalar=st.booleans(), seed=st.integers(0, 2**16))
def test_affine_rows_equal_the_float64_torch_map_bit_for_bit(n, d, f64_in, f64_out, scalar, seed):
    X = _data(n, d, 5.0, f64_in, seed)
    shift = torch.tensor(1.5, dtype=torch.float64) if scalar else X.double().mean(0)
    out_dtype = torch.float64 if f64_out else torch.float32
    got = affine_rows(X, shift, 0.37, out_dtype)
    assert got.dtype == out_dtype and got.shape == X.shape
    assert torch.equal(got, ((X.double() - shift) / 0.37).to(out_dtype))


def test_affine_rows_take_images_with_a_scalar_shift():
    X = torch.rand(7, 3, 4)
    got = affine_rows(X, torch.tensor(0.25, dtype=torch.float64), 2.0, torch.float32)
    assert torch.equal(got, ((X.double() - 0.25) / 2.0).float())


def test_frames_take_the_torch_path_where_the_compiled_one_does_not_apply():
    X = _data(500, 6, 3.0, True, 0)
    odd = X.T.contiguous().T  # not contiguous
    assert rows_supported(X) and not rows_supported(odd)
    assert not rows_supported(X.float().requires_grad_())
    fast, slow = _frame.standard_frame(X), _frame.standard_frame(odd)
    torch.testing.assert_close(fast.shift, slow.shift, rtol=1e-12, atol=1e-12 * float(X.abs().max()))
    assert fast.scale == pytest.approx(slow.scale, rel=1e-13)
    assert torch.equal(fast.apply(X, torch.float32), fast.apply(odd, torch.float32))
    assert torch.equal(fast.apply(X, torch.float64), fast.apply(odd, torch.float64))


def test_standard_frame_of_constant_and_tiny_data():
    assert _frame.standard_frame(torch.full((10, 3), 2.0)).scale == 1.0  # no spread: scale 1
    one = _frame.standard_frame(torch.tensor([[1.0, -2.0]]))
    assert torch.equal(one.shift, torch.tensor([1.0, -2.0], dtype=torch.float64)) and one.scale == 1.0


def test_float32_data_whose_offset_dwarfs_its_spread_warns():
    X = torch.from_numpy(np.random.default_rng(0).normal(1e8, 1.0, (100, 2)).astype(np.float32))
    with pytest.warns(UserWarning, match="X is float32 with values around 1e"):
        _frame.standard_frame(X)
