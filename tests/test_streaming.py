"""Data larger than memory: fits (GaussianMixture EM; DPGMM split/merge and VI) that read memmaps, HDF5
datasets and lists of chunks chunk by chunk equal the in-memory fit; the streaming seam's reduction;
CPU / CUDA parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bayesclust as bc
from bayesclust.inference import em, streaming


def _blobs(n: int = 900, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 6
    X = np.concatenate([rng.normal(size=(n // 3, d)) + c for c in centres]).astype(np.float32)
    return X[rng.permutation(len(X))]


def _gmm(**kw) -> bc.GaussianMixture:
    return bc.GaussianMixture(3, random_state=0, chunk_size=128, **kw)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return _blobs()


@pytest.fixture(scope="module")
def reference(X) -> bc.GaussianMixture:
    return _gmm().fit(X)


def _assert_same_fit(a: bc.GaussianMixture, b: bc.GaussianMixture) -> None:
    np.testing.assert_allclose(a.means_, b.means_, atol=1e-4)
    np.testing.assert_allclose(a.weights_, b.weights_, atol=1e-5)
    np.testing.assert_allclose(a.covariances_, b.covariances_, atol=1e-4)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, abs=1e-5)


def test_memmap_fit_equals_in_memory_fit(X, reference, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    assert isinstance(mm, np.memmap) and streaming.is_chunk_source(mm)
    _assert_same_fit(_gmm().fit(mm), reference)


def test_chunk_list_fit_equals_in_memory_fit(X, reference, tmp_path):
    parts = [X[:100], X[100:450], X[450:]]  # chunk boundaries that do not align with chunk_size
    _assert_same_fit(_gmm().fit(parts), reference)
    paths = []
    for i, p in enumerate(parts):
        paths.append(tmp_path / f"part{i}.npy")
        np.save(paths[-1], p)
    _assert_same_fit(_gmm().fit(paths), reference)
    _assert_same_fit(_gmm().fit(str(tmp_path)), reference)  # a folder of .npy files


def test_hdf5_fit_equals_in_memory_fit(X, reference, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(64, X.shape[1]))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        _assert_same_fit(_gmm().fit(f["X"]), reference)


def test_out_of_core_features_hold_no_copy_of_the_data(X):
    source = streaming.ChunkSource([X[:300], X[300:]])
    feats = streaming.SourceFeatures(source, lambda x, out=None: x * 2, torch.zeros(3), chunk_size=64)
    assert feats.cache is None and feats.X.shape == (0, 3) and feats.n == 900
    np.testing.assert_allclose(feats(slice(250, 350)).numpy(), 2 * X[250:350])
    np.testing.assert_allclose(source.take([5, 299, 300, 899]), X[[5, 299, 300, 899]])
    again = feats.remapped(lambda x, out=None: x + 1)  # same rows and frame, another map
    assert isinstance(again, streaming.SourceFeatures) and again.cache is None
    np.testing.assert_allclose(again(slice(250, 350)).numpy(), X[250:350] + 1)


def test_identity_map_reads_the_data_itself():
    """The Cholesky formulation's map is x itself: no cached copy, no per-block copy, at any cache size;
    a map that copies is still cached (or computed per block with no cache)."""
    X = torch.randn(500, 4, dtype=torch.float64)
    family = bc.models.gaussian.GaussianFamily("full", formulation="cholesky")
    for cache_bytes in (0, 1e9):
        feats = streaming.Features(X, family.feature_map, chunk_size=64, cache_bytes=cache_bytes)
        block = feats(slice(100, 164))
        assert feats.cached and block.data_ptr() == X[100].data_ptr() and torch.equal(block, X[100:164])
    copying = streaming.Features(X, lambda x, out=None: x.clone(), chunk_size=64)
    assert copying.cached and copying.cache.data_ptr() != X.data_ptr()
    assert torch.equal(copying(slice(3, 9)), X[3:9])
    per_block = streaming.Features(X, lambda x, out=None: x * 1.0, chunk_size=64, cache_bytes=0)
    assert not per_block.cached and torch.equal(per_block(slice(3, 9)), X[3:9])


def test_scratch_buffers_are_kept_across_passes():
    """Block arrays come from per-fit scratch buffers: the same storage at every pass (a fresh array
    per pass is fresh pages past glibc's mmap threshold); a larger request or another dtype replaces it."""
    X = torch.randn(3000, 3, dtype=torch.float64)
    feats = streaming.Features(X, bc.models.gaussian.GaussianFamily("full").feature_map, chunk_size=1000)
    a = feats.scratch("s", (2, 5), X)
    assert a.shape == (2, 5) and feats.scratch("s", (8,), X).data_ptr() == a.data_ptr()
    assert feats.scratch("s", (4, 5), X).shape == (4, 5)
    assert feats.scratch("s", (5,), X.float()).dtype == torch.float32
    gm = bc.GaussianMixture(3, max_iter=2, random_state=0).fit(X.numpy())
    params = bc.models.gaussian.GMMParams(*(torch.as_tensor(v, dtype=torch.float64) for v in (
        gm.weights_, gm.means_, gm.covariances_)))
    for form in ("features", "cholesky"):
        family = bc.models.gaussian.GaussianFamily("full", formulation=form)
        f = streaming.Features(X, family.feature_map, chunk_size=1000)
        A, c = family.log_prob_coefficients(params)
        first = em.e_step(f, A, c)
        ptrs = {k: v.data_ptr() for k, v in f._scratch.items()}
        again = em.e_step(f, A, c)
        assert ptrs and {k: v.data_ptr() for k, v in f._scratch.items()} == ptrs
        assert first[0] == again[0] and torch.equal(first[1], again[1])
        labels = em.argmax_chunks(f, A, c)
        assert labels.shape == (3000,) and {k: v.data_ptr() for k, v in f._scratch.items()} == ptrs


def test_plain_nested_lists_stay_in_memory():
    assert not streaming.is_chunk_source([[1.0, 2.0], [3.0, 4.0]])
    assert not streaming.is_chunk_source(np.zeros((4, 2)))


def test_bad_chunks_raise_clear_errors(X, tmp_path):
    with pytest.raises(ValueError, match="same number of features"):
        _gmm().fit([X[:100], X[100:, :2]])
    with pytest.raises(ValueError, match="does not exist"):
        _gmm().fit([tmp_path / "missing.npy"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .npy files"):
        _gmm().fit(str(tmp_path / "empty"))
    with pytest.raises(TypeError, match="numeric"):
        _gmm().fit([np.array([["a", "b"], ["c", "d"]])])
    bad = X.copy()
    bad[500, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _gmm().fit([bad[:400], bad[400:]])
    with pytest.raises(ValueError, match="at least 3 are needed"):
        _gmm().fit([X[:1], X[1:2]])
    with pytest.raises(ValueError, match="inference='em' only"):
        _gmm(inference="svi").fit([X[:100], X[100:]])


def test_installed_reduce_sums_over_processes(X, reference):
    """A reduction that doubles every total acts as two processes holding the same shard: the fit
    equals the one-process fit on the data twice (both started from the same means)."""
    previous = streaming.set_reduce(lambda t: 2 * t)
    try:
        twice = _gmm(init=reference.means_ + 0.5).fit(X)
    finally:
        streaming.set_reduce(previous)
    assert not streaming.is_reducing()
    one = _gmm(init=reference.means_ + 0.5).fit(np.concatenate([X, X]))
    np.testing.assert_allclose(twice.means_, one.means_, atol=1e-4)
    np.testing.assert_allclose(twice.weights_, one.weights_, atol=1e-5)
    assert twice.n_iter_ == one.n_iter_
    assert twice.lower_bound_ == pytest.approx(one.lower_bound_, abs=1e-5)


# ---------------------------------------------------------------------------- DPGMM out of core
def _dpgmm(**kw) -> bc.DPGMM:
    return bc.DPGMM(random_state=0, chunk_size=128, max_iter=kw.pop("max_iter", 30), **kw)


@pytest.fixture(scope="module")
def dp_reference(X) -> bc.DPGMM:
    return _dpgmm().fit(X)


def _assert_same_dpgmm(got: bc.DPGMM, ref: bc.DPGMM) -> None:
    # the same seed and the same float64 standardisation per chunk: the same draws, hence the same
    # labels; the moments are summed chunk by chunk (rounding ~1e-16), so parameters agree to 1e-6
    assert got.n_components_ == ref.n_components_
    np.testing.assert_array_equal(got.labels_, ref.labels_)
    np.testing.assert_allclose(got.means_, ref.means_, atol=1e-6)
    np.testing.assert_allclose(got.weights_, ref.weights_, atol=1e-9)
    np.testing.assert_allclose(got.data_scale_, ref.data_scale_, rtol=1e-12)


def test_dpgmm_memmap_fit_equals_in_memory_fit(X, dp_reference, tmp_path):
    np.save(tmp_path / "x.npy", X)
    got = _dpgmm().fit(np.load(tmp_path / "x.npy", mmap_mode="r"))
    _assert_same_dpgmm(got, dp_reference)
    assert got.labels_.shape == (len(X),) and got.assignment_probs_ is None  # no (N, K) array
    np.testing.assert_array_equal(got.predict(X), dp_reference.predict(X))


def test_dpgmm_folder_and_hdf5_fit_equal_in_memory_fit(X, dp_reference, tmp_path):
    for i, part in enumerate([X[:100], X[100:450], X[450:]]):  # boundaries off the chunk size
        np.save(tmp_path / f"part{i}.npy", part)
    _assert_same_dpgmm(_dpgmm().fit(str(tmp_path)), dp_reference)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(64, X.shape[1]))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        _assert_same_dpgmm(_dpgmm().fit(f["X"]), dp_reference)


def test_dpgmm_vi_out_of_core_equals_in_memory(X):
    ref = _dpgmm(inference="vi", truncation=6, max_iter=100).fit(X)
    got = _dpgmm(inference="vi", truncation=6, max_iter=100).fit([X[:500], X[500:]])
    assert got.n_components_ == ref.n_components_
    np.testing.assert_array_equal(got.labels_, ref.labels_)
    np.testing.assert_allclose(got.means_, ref.means_, atol=1e-6)


def test_dpgmm_out_of_core_errors(X):
    with pytest.raises(ValueError, match="inference='splitmerge' or 'vi'"):
        _dpgmm(inference="deep").fit([X[:100], X[100:]])
    bad = X.copy()
    bad[500, 1] = np.inf
    with pytest.raises(ValueError, match="infinite value"):
        _dpgmm().fit([bad[:400], bad[400:]])


def test_source_features_standardise_and_gather(X):
    source = streaming.ChunkSource([X[:300], X[300:]])
    mean, scale = torch.tensor(X.mean(0), dtype=torch.float64), torch.tensor(X.std(0), dtype=torch.float64)
    feats = streaming.SourceFeatures(
        source, lambda x, out=None: x, mean, 64, scale=scale, dtype=torch.float32
    )
    Xs = ((torch.from_numpy(X).double() - mean) / scale).float()
    assert feats.X.dtype == torch.float32 and feats.q == 3
    torch.testing.assert_close(feats.rows(slice(250, 350)), Xs[250:350], rtol=0, atol=0)
    idx = torch.tensor([899, 5, 300, 299])  # any order
    torch.testing.assert_close(feats.gather(idx), Xs[idx], rtol=0, atol=0)
    labels = streaming.map_chunks(lambda x: (x[:, 0] > 0).long(), feats)
    torch.testing.assert_close(labels, (Xs[:, 0] > 0).long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU / CUDA parity needs a CUDA GPU")
def test_cuda_matches_cpu_in_memory_out_of_core_and_online(X):
    cpu, gpu = _gmm(dtype="float64").fit(X), _gmm(dtype="float64", device="cuda").fit(X)
    np.testing.assert_allclose(gpu.means_, cpu.means_, atol=1e-6)
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)
    ooc = _gmm(dtype="float64", device="cuda").fit([X[:400], X[400:]])
    np.testing.assert_allclose(ooc.means_, cpu.means_, atol=1e-6)
    a, b = _gmm(dtype="float64"), _gmm(dtype="float64", device="cuda")
    for s in range(0, len(X), 300):
        a.partial_fit(X[s : s + 300])
        b.partial_fit(X[s : s + 300])
    np.testing.assert_allclose(b.means_, a.means_, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DPGMM out of core on CUDA needs a CUDA GPU")
def test_cuda_dpgmm_out_of_core_equals_in_memory(X):
    # the per-point draws come from a CUDA generator (another stream than the CPU's): compare CUDA
    # with CUDA, in memory against out of core
    ref = _dpgmm(device="cuda").fit(X)
    got = _dpgmm(device="cuda").fit([X[:400], X[400:]])
    _assert_same_dpgmm(got, ref)


def test_large_feature_cache_on_a_huge_page_mapping(monkeypatch):
    # host arrays from HUGE_PAGE_BYTES on are anonymous mappings advised for transparent huge pages
    import mmap

    from bayesclust import _device
    from bayesclust.models.gaussian import feature_map

    if not hasattr(mmap, "MADV_HUGEPAGE"):
        pytest.skip("this OS offers no MADV_HUGEPAGE")
    monkeypatch.setattr(_device, "HUGE_PAGE_BYTES", 1 << 16)
    X = torch.randn(3000, 5, dtype=torch.float64)
    feats = streaming.Features(X, lambda x, out=None: feature_map(x, "full", out=out))
    assert feats.cached and feats.cache.is_contiguous() and feats.cache.shape == (3000, 20)
    torch.testing.assert_close(feats(slice(0, 3000)), feature_map(X, "full"), rtol=0, atol=0)
    small = _device.empty_rows(10, 4, X)  # below the threshold: torch's own allocation
    assert small.shape == (10, 4) and small.dtype == torch.float64
    maps = []
    real_mmap = mmap.mmap
    monkeypatch.setattr(_device.mmap, "mmap", lambda *a, **kw: maps.append(a) or real_mmap(*a, **kw))
    monkeypatch.setenv("BAYESCLUST_NO_HUGE_PAGES", "1")  # the opt-out: torch's own allocation
    assert _device.empty_rows(4000, 5, X).shape == (4000, 5) and not maps
    monkeypatch.delenv("BAYESCLUST_NO_HUGE_PAGES")
    big = _device.empty_rows(4000, 5, X)
    assert len(maps) == 1
    assert big.shape == (4000, 5) and big.is_contiguous() and big.data_ptr() % mmap.PAGESIZE == 0
    big.fill_(2.0)
    assert float(big.sum()) == 40000.0
