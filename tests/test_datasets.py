"""Loaders: IDX round trips, embedded defaults, tables, USPS formats, error messages, real data."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bayesclust import datasets as ds
from bayesclust.datasets import (
    DATA_ENV,
    Dataset,
    load_embeddings,
    load_faithful,
    load_features,
    load_galaxies,
    load_idx,
    load_iris,
    load_mnist,
    load_penguins,
    load_table,
    load_usps,
)

IDX_CODES = {
    np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E,
}


def need(shared_data: Path, rel: str) -> Path:
    """A file of ../shared/data, or skip (works with plain `pytest` and `python -m pytest`)."""
    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"real data file {rel} not found under {shared_data}")
    return path


def idx_bytes(arr: np.ndarray) -> bytes:
    """Independent IDX writer: magic 0x0000 + type code + ndim, big-endian dims, big-endian data."""
    code = IDX_CODES[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)


# ------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, size=(5, 4, 3), endpoint=True).astype(dtype)
    else:
        arr = rng.normal(size=(5, 4, 3)).astype(dtype)
    out = load_idx(write_idx(tmp_path / "a.idx", arr, compress))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    out.flags.writeable = True  # a real copy, not a read-only view of the file buffer
    out[0] = 0


@pytest.mark.parametrize("compress", [False, True])
def test_idx_label_file_1d(tmp_path, compress):
    labels = np.arange(23, dtype=np.uint8) % 10
    out = load_idx(write_idx(tmp_path / "labels", labels, compress))
    assert out.shape == (23,)
    np.testing.assert_array_equal(out, labels)


def test_idx_compression_from_magic_not_extension(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_raw = write_idx(tmp_path / "looks.gz", arr, compress=False)
    raw_named_gz = write_idx(tmp_path / "looks-raw-idx2-ubyte", arr, compress=True)
    np.testing.assert_array_equal(load_idx(gz_named_raw), arr)
    np.testing.assert_array_equal(load_idx(raw_named_gz), arr)


def test_idx_errors(tmp_path):
    good = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    cases = {
        "empty": (b"", "too short for an IDX header"),
        "badmagic": (b"\x1f\x00" + good[2:], r"bad magic number 0x1F000803"),
        "png": (b"\x89PNG\r\n\x1a\n" + good, "Is this an IDX file"),
        "code": (b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00", r"unknown IDX data type code 0x07"),
        "zerodim": (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        "header": (good[:10], "declares 3 dimensions but the file ends after 10 bytes"),
        "data": (good[:-5], r"truncated IDX file: shape \(2, 3, 3\) needs 18 data bytes but only 13"),
        "trailing": (good + b"\x00\x00", "2 unexpected trailing bytes"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match=msg):
            load_idx(p)
    p = tmp_path / "cut.gz"
    p.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(ValueError, match="compressed stream is truncated or corrupt"):
        load_idx(p)


# ------------------------------------------------------------------------------------ MNIST


def test_mnist_test_is_embedded():
    X, y = load_mnist()
    assert X.shape == (10000, 28, 28) and X.dtype == np.float32
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.array_equal(np.unique(y), np.arange(10))
    raw, _ = load_mnist(normalize=False)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw.astype(np.float32) / 255, X)
    flat, y2 = load_mnist(flatten=True)
    assert flat.shape == (10000, 784)
    np.testing.assert_array_equal(flat, X.reshape(10000, -1))
    np.testing.assert_array_equal(y, y2)
    d = load_mnist(return_X_y=False)
    assert isinstance(d, Dataset) and "CC BY-SA 3.0" in d.description
    assert all(Path(f).parent == ds._EMBEDDED for f in d.extra["files"])


def test_embedded_mnist_files_are_the_official_ones():
    md5 = {
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    for name, digest in md5.items():
        assert hashlib.md5((ds._EMBEDDED / name).read_bytes()).hexdigest() == digest
    text = (ds._EMBEDDED / "ATTRIBUTION.md").read_text()
    for word in ("LeCun", "Cortes", "Burges", "CC BY-SA 3.0"):
        assert word in text


def _fake_mnist(directory: Path, prefix: str, n: int, seed: int, compress: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    ext = ".gz" if compress else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", imgs, compress)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)
    return labels


def test_mnist_train_from_path_and_env(tmp_path, monkeypatch):
    labels = _fake_mnist(tmp_path, "train", 7, seed=1, compress=True)
    X, y = load_mnist("train", path=tmp_path, flatten=True)
    assert X.shape == (7, 784) and X.dtype == np.float32
    np.testing.assert_array_equal(y, labels)
    # environment variable, files in its mnist/ subdirectory, raw (not gzipped) files
    sub = tmp_path / "env" / "mnist"
    sub.mkdir(parents=True)
    labels2 = _fake_mnist(sub, "train", 5, seed=2)
    test_labels = _fake_mnist(sub, "t10k", 3, seed=3)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    np.testing.assert_array_equal(load_mnist("train")[1], labels2)
    X_all, y_all = load_mnist("all")  # test files beside the train files are used
    assert X_all.shape == (8, 28, 28)
    np.testing.assert_array_equal(y_all, np.concatenate([labels2, test_labels]))
    # split="test" without path stays the embedded copy even when the env var is set
    assert load_mnist("test")[0].shape == (10000, 28, 28)
    # with a path, split="test" reads the files there (Fashion-MNIST, KMNIST use these names)
    np.testing.assert_array_equal(load_mnist("test", path=sub)[1], test_labels)


def test_mnist_all_falls_back_to_embedded_test(tmp_path):
    labels = _fake_mnist(tmp_path, "train", 4, seed=4)
    X, y = load_mnist("all", path=tmp_path)
    assert X.shape == (10004, 28, 28)
    np.testing.assert_array_equal(y[:4], labels)
    np.testing.assert_array_equal(y[4:], load_mnist("test")[1])


def test_mnist_missing_files_message(tmp_path):
    msg = r"train-images-idx3-ubyte\[\.gz\].*BAYESCLUST_DATA is not set"
    with pytest.raises(FileNotFoundError, match=msg):
        load_mnist("train")
    with pytest.raises(FileNotFoundError, match=r"path=.*pass path=.*environment variable BAYESCLUST_DATA"):
        load_mnist("all", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist("train", path=tmp_path / "nope")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match="must be a directory"):
        load_mnist("train", path=f)
    with pytest.raises(ValueError, match=r"split='val' is not supported"):
        load_mnist("val")


def test_env_pointing_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "gone"))
    for call in (lambda: load_mnist("train"), lambda: load_usps("test"), lambda: load_embeddings("usps")):
        with pytest.raises(FileNotFoundError, match=r"BAYESCLUST_DATA='.*gone' does not exist"):
            call()


def test_mnist_count_mismatch(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8), False)
    with pytest.raises(ValueError, match="has 3 images but .* has 2 labels"):
        load_mnist("train", path=tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 784), np.uint8), False)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, rows, cols\)"):
        load_mnist("train", path=tmp_path)


# ------------------------------------------------------------------------------------ USPS


def _libsvm_text(X: np.ndarray, labels: np.ndarray) -> str:
    lines = []
    for row, lab in zip(X, labels):
        nz = [f"{j + 1}:{v:.6f}" for j, v in enumerate(row) if v != 0.0]  # sparse: zeros omitted
        lines.append(" ".join([str(int(lab)), *nz]))
    return "\n".join(lines) + "\n"


@pytest.fixture
def fake_usps(tmp_path):
    rng = np.random.default_rng(5)
    out = {}
    for split, n in (("train", 6), ("test", 4)):
        X = np.round(rng.uniform(-1, 1, size=(n, 256)), 6)
        X[:, ::7] = 0.0
        X[0, :3] = [-1.0, 1.0, 0.0]
        labels = rng.integers(1, 11, size=n)
        out[split] = (X, labels)
    return out


def test_usps_libsvm(tmp_path, fake_usps):
    (tmp_path / "usps").write_text(_libsvm_text(*fake_usps["train"]))
    (tmp_path / "usps.t.bz2").write_bytes(bz2.compress(_libsvm_text(*fake_usps["test"]).encode()))
    for split in ("train", "test"):
        X, y = load_usps(split, path=tmp_path)
        X_src, lab = fake_usps[split]
        assert X.shape == (len(lab), 256) and X.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_allclose(X, (X_src + 1) / 2, atol=1e-7)
        np.testing.assert_array_equal(y, lab - 1)
    assert list(load_usps("test", path=tmp_path)[0][0, :3]) == [0.0, 1.0, 0.5]
    X, y = load_usps("all", path=tmp_path)
    assert X.shape == (10, 256)
    np.testing.assert_array_equal(y, np.concatenate([fake_usps["train"][1], fake_usps["test"][1]]) - 1)
    # a single LIBSVM file as path
    X1, _ = load_usps("test", path=tmp_path / "usps.t.bz2")
    assert X1.shape == (4, 256)


def test_usps_hdf5(tmp_path, fake_usps, monkeypatch):
    h5py = pytest.importorskip("h5py")
    sub = tmp_path / "usps"
    sub.mkdir()
    with h5py.File(sub / "usps.h5", "w") as f:
        for split, (X, lab) in fake_usps.items():
            f[f"{split}/data"] = ((X + 1) / 2).astype(np.float32)
            f[f"{split}/target"] = (lab - 1).astype(np.int32)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    X, y = load_usps("all")
    assert X.shape == (10, 256) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, np.concatenate([fake_usps["train"][1], fake_usps["test"][1]]) - 1)
    X_t, _ = load_usps("test", path=sub / "usps.h5")
    np.testing.assert_array_equal(X_t, X[6:])
    # h5py missing: a clear ImportError
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pip install h5py.*bayesclust\[data\]"):
        load_usps("train")


def test_usps_errors(tmp_path, fake_usps):
    h5py = pytest.importorskip("h5py")
    with pytest.raises(FileNotFoundError, match=r"usps\.h5 / usps\.hdf5 / usps / usps\.bz2.*BAYESCLUST_DATA"):
        load_usps("train")
    (tmp_path / "usps.t").write_text(_libsvm_text(*fake_usps["test"]))
    with pytest.raises(FileNotFoundError, match=r"USPS split 'all'.*usps\.t\.bz2"):
        load_usps("all", path=tmp_path)
    bad = tmp_path / "bad_labels"
    X, lab = fake_usps["test"]
    for wrong in (0, 11):
        bad.write_text(_libsvm_text(X, np.r_[wrong, lab[1:]]))
        with pytest.raises(ValueError, match=r"labels must be the integers 1\.\.10"):
            load_usps(path=bad)
    bad.write_text(_libsvm_text(X * 3, lab))
    with pytest.raises(ValueError, match=r"features must lie in \[-1, 1\]"):
        load_usps(path=bad)
    bad.write_text("3 1:0.5 300:0.1\n")
    with pytest.raises(ValueError, match=r"line 1: feature indices must be integers in 1\.\.256"):
        load_usps(path=bad)
    bad.write_text("3 1:0.5 2:abc\n")
    with pytest.raises(ValueError, match="line 1: not LIBSVM"):
        load_usps(path=bad)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["train/data"] = np.zeros((2, 256), np.float32)
    with pytest.raises(ValueError, match="no 'train/data' and 'train/target' datasets"):
        load_usps(path=tmp_path / "other.h5")
    with pytest.raises(ValueError, match="split='valid' is not supported"):
        load_usps("valid", path=tmp_path)


# ------------------------------------------------------------------------------------ tables


CSV = "id,a,b,kind\n1,1.5,2,x\n2,NA,3,y\n3,2.5,,x\n4,3.5,5,z\n5,4.5,6,NA\n"


def test_csv_missing_rows(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(CSV)
    msg = r"3 of 5 rows have missing values .*\['a', 'b', 'kind'\]; pass dropna=True"
    with pytest.raises(ValueError, match=msg):
        load_table(p, target="kind", columns=["a", "b"])
    with pytest.raises(ValueError, match=r"2 of 5 rows have missing values .*\['a', 'b'\]; pass dropna=True"):
        load_table(p, columns=["a", "b"])
    X, y = load_table(p, target="kind", columns=["a", "b"], dropna=True)
    np.testing.assert_array_equal(X, [[1.5, 2.0], [3.5, 5.0]])
    np.testing.assert_array_equal(y, [0, 1])  # x -> 0, z -> 1 once the NA rows are gone
    d = load_table(p, target="kind", columns=["a", "b"], dropna=True, return_X_y=False)
    assert d.target_names == ["x", "z"] and d.feature_names == ["a", "b"]
    # without target the NA in 'kind' does not matter, but 'kind' is then a non-numeric feature
    with pytest.raises(TypeError, match=r"non-numeric feature column\(s\) 'kind' \(e\.g\. 'x'\).*target="):
        load_table(p)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=64),
    ),
    st.data(),
)
def test_csv_round_trip_and_na_count_property(tmp_path, A, data):
    """repr() of a float64 parses back bit-exactly; the NA error counts exactly the rows with an NA."""
    na = data.draw(hnp.arrays(np.bool_, A.shape))
    # an empty field in a one-column file is a blank line, which is skipped (as in pandas)
    token = data.draw(st.sampled_from(["NA", "NaN"] if A.shape[1] == 1 else ["NA", "", "NaN"]))
    header = ",".join(f"c{j}" for j in range(A.shape[1]))
    lines = [",".join(token if m else repr(float(v)) for v, m in zip(row, mrow)) for row, mrow in zip(A, na)]
    p = tmp_path / "prop.csv"
    p.write_text(header + "\n" + "\n".join(lines) + "\n")
    n_bad = int(na.any(axis=1).sum())
    if n_bad == 0:
        X, y = load_table(p, delimiter=",")
        assert y is None
        np.testing.assert_array_equal(X.view(np.uint64), A.view(np.uint64))
    else:
        with pytest.raises(ValueError, match=rf"{n_bad} of {A.shape[0]} rows have missing values"):
            load_table(p, delimiter=",")
        if n_bad < A.shape[0]:
            X, _ = load_table(p, delimiter=",", dropna=True)
            np.testing.assert_array_equal(X, A[~na.any(axis=1)])


def test_csv_blank_lines_and_empty_rows(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n\n   \n,\n3,4\n\n")
    with pytest.raises(ValueError, match=r"1 of 3 rows have missing values"):
        load_table(p)
    np.testing.assert_array_equal(load_table(p, dropna=True)[0], [[1, 2], [3, 4]])


def test_csv_missing_target_counts(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1,u\n2,\n3,v\n")
    with pytest.raises(ValueError, match=r"1 of 3 rows .*\['label'\]"):
        load_table(p, target="label")
    X, y = load_table(p, target="label", dropna=True)
    assert X.shape == (2, 1) and list(y) == [0, 1]


def test_csv_variants(tmp_path):
    p = tmp_path / "semi.txt"
    p.write_text("x;y;cls\n1;2;3\n4;5;7\n")
    X, y = load_table(p, target="cls")
    np.testing.assert_array_equal(X, [[1, 2], [4, 5]])
    np.testing.assert_array_equal(y, [3, 7])  # integer labels are kept as they are
    assert y.dtype == np.int64
    p = tmp_path / "tab.tsv.gz"  # gzip detected from the content
    p.write_bytes(gzip.compress(b"x\ty\n1\t2\n3\t4\n"))
    np.testing.assert_array_equal(load_table(p)[0], [[1, 2], [3, 4]])
    p = tmp_path / "pipe.csv"
    p.write_text("x|y\n1|2\n")
    np.testing.assert_array_equal(load_table(p, delimiter="|")[0], [[1, 2]])
    X, y = load_table(p, target=0)
    assert X.shape == (1, 1) and list(y) == [1]
    assert load_table(p)[1] is None


def test_csv_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3: 1 fields but the header has 2"):
        load_table(p)
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"no column 'c'; the header has \['a', 'b'\]"):
        load_table(p, target="c")
    with pytest.raises(ValueError, match="also listed in columns"):
        load_table(p, target="a", columns=["a", "b"])
    with pytest.raises(ValueError, match="column index 5 out of range"):
        load_table(p, columns=[5])
    p.write_text("a,b\n")
    with pytest.raises(ValueError, match="at least one data row"):
        load_table(p)
    p.write_text("a\nNA\n")
    with pytest.raises(ValueError, match="nothing left after dropna"):
        load_table(p, dropna=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_table(tmp_path / "missing.csv")


def test_npy_npz(tmp_path):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 3))
    np.save(tmp_path / "a.npy", A)
    X, y = load_table(tmp_path / "a.npy")
    np.testing.assert_array_equal(X, A)
    assert y is None
    np.save(tmp_path / "lab.npy", np.column_stack([A, [0, 1, 1, 2, 0, 2]]))
    X, y = load_table(tmp_path / "lab.npy", target=-1)
    np.testing.assert_array_equal(X, A)
    np.testing.assert_array_equal(y, [0, 1, 1, 2, 0, 2])
    np.save(tmp_path / "v.npy", np.arange(4, dtype=np.int32))
    X, _ = load_table(tmp_path / "v.npy")
    assert X.shape == (4, 1) and X.dtype == np.float64
    np.savez(tmp_path / "d.npz", X=A.astype(np.float32), y=np.array(["b", "a", "b", "c", "a", "c"]))
    d = load_table(tmp_path / "d.npz", return_X_y=False)
    assert d.X.dtype == np.float32 and d.target_names == ["a", "b", "c"]
    np.testing.assert_array_equal(d.y, [1, 0, 1, 2, 0, 2])
    B = A.copy()
    B[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=B, labels=np.arange(6.0))
    with pytest.raises(ValueError, match="1 of 6 rows have missing values"):
        load_table(tmp_path / "nan.npz", target="labels")
    X, y = load_table(tmp_path / "nan.npz", target="labels", dropna=True)
    assert X.shape == (5, 3) and list(y) == [0, 1, 3, 4, 5]


def test_npy_npz_errors(tmp_path):
    np.savez(tmp_path / "nox.npz", data=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"no array 'X' in the NPZ file \(keys \['data'\]\)"):
        load_table(tmp_path / "nox.npz")
    np.savez(tmp_path / "short.npz", X=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(ValueError, match=r"y has shape \(2,\) but X has 3 rows"):
        load_table(tmp_path / "short.npz")
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match="object array"):
        load_table(tmp_path / "obj.npy")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="non-numeric dtype <U1"):
        load_table(tmp_path / "s.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="a table must be 1-D or 2-D"):
        load_table(tmp_path / "cube.npy")
    np.save(tmp_path / "m.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="pass target as a column index"):
        load_table(tmp_path / "m.npy", target="y")


# ------------------------------------------------------------------------------------ embedded tables


def test_faithful_and_galaxies():
    X, y = load_faithful()
    assert X.shape == (272, 2) and X.dtype == np.float64 and y is None
    np.testing.assert_array_equal(X[0], [3.6, 79.0])
    assert 1.5 < X[:, 0].min() and X[:, 0].max() < 5.5  # eruption minutes
    X, y = load_galaxies()
    assert X.shape == (82, 1) and y is None
    assert X[0, 0] == 9172.0 and np.all(np.diff(X[:, 0]) >= 0)  # the file is sorted by velocity


def test_iris():
    d = load_iris(return_X_y=False)
    assert d.X.shape == (150, 4) and d.y.dtype == np.int64
    assert d.target_names == ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(np.bincount(d.y), [50, 50, 50])
    np.testing.assert_array_equal(d.y, np.repeat([0, 1, 2], 50))


def test_penguins_against_pandas():
    pd = pytest.importorskip("pandas")
    with pytest.raises(ValueError, match=r"2 of 344 rows have missing values .*dropna=True"):
        load_penguins()
    d = load_penguins(dropna=True, return_X_y=False)
    assert d.X.shape == (342, 4) and d.feature_names == ds._PENGUIN_COLUMNS
    df = pd.read_csv(ds._EMBEDDED / "palmerpenguins_penguins.csv").dropna(subset=ds._PENGUIN_COLUMNS)
    np.testing.assert_array_equal(d.X, df[ds._PENGUIN_COLUMNS].to_numpy(dtype=np.float64))
    codes, names = pd.factorize(df["species"], sort=True)
    np.testing.assert_array_equal(d.y, codes)
    assert d.target_names == list(names)


# ------------------------------------------------------------------------------------ embeddings


def test_embeddings_lookup_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    (tmp_path / "embeddings").mkdir()
    np.savez(tmp_path / "embeddings" / "usps9298_ae_umap10.npz", X=rng.normal(size=(5, 10)), y=np.arange(5))
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    X, y = load_embeddings("usps")
    assert X.shape == (5, 10) and X.dtype == np.float32 and y.dtype == np.int64
    with pytest.raises(FileNotFoundError, match=r"mnist70k_ae_umap10\.npz.*BAYESCLUST_DATA="):
        load_embeddings("mnist")
    with pytest.raises(ValueError, match="name='cifar' is not supported"):
        load_embeddings("cifar")
    np.savez(tmp_path / "bad.npz", X=np.zeros((2, 10)))
    with pytest.raises(ValueError, match=r"expected arrays 'X' and 'y'"):
        load_embeddings("mnist", path=tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------ load_features


def _features(n: int = 6, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), rng.integers(0, 3, n)


def test_load_features_formats(tmp_path):
    import h5py
    import torch

    X, y = _features()
    np.save(tmp_path / "f.npy", X)
    np.save(tmp_path / "labels.npy", y.astype(np.float64))
    np.savez(tmp_path / "xy.npz", X=X, y=y)
    np.savez(tmp_path / "emb.npz", feats=X)
    torch.save(torch.tensor(X), tmp_path / "t.pt")
    torch.save({"features": torch.tensor(X), "targets": torch.tensor(y)}, tmp_path / "d.pth")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["emb/train"] = X
        f["lab"] = y
    cases = [
        (dict(path=tmp_path / "f.npy"), False),
        (dict(path=tmp_path / "f.npy", labels=tmp_path / "labels.npy"), True),
        (dict(path=tmp_path / "xy.npz"), True),
        (dict(path=tmp_path / "emb.npz", labels=list(y)), True),  # the only array; labels as a list
        (dict(path=str(tmp_path / "t.pt"), labels=y), True),
        (dict(path=tmp_path / "d.pth", key="features", label_key="targets"), True),
        (dict(path=tmp_path / "f.h5", key="emb/train", label_key="lab"), True),
        (dict(path=tmp_path / "f.h5", key="emb/train", labels=tmp_path / "xy.npz"), True),
    ]
    for kw, labelled in cases:
        Xl, yl = load_features(**kw)
        assert Xl.dtype == np.float32 and Xl.shape == X.shape and np.allclose(Xl, X, atol=1e-6), kw
        if labelled:
            assert yl.dtype == np.int64 and np.array_equal(yl, y), kw
        else:
            assert yl is None
    d = load_features(tmp_path / "xy.npz", return_X_y=False)
    assert isinstance(d, Dataset) and d.extra["files"] == [str(tmp_path / "xy.npz")]
    assert "load_features" in ds.__all__


def test_load_features_errors(tmp_path):
    import h5py
    import torch

    X, y = _features()
    np.save(tmp_path / "f.npy", X)
    np.save(tmp_path / "x3.npy", X.reshape(6, 2, 2))
    np.save(tmp_path / "y5.npy", y[:5])
    np.save(tmp_path / "yfrac.npy", y + 0.5)
    np.savez(tmp_path / "two.npz", a=X, b=X)
    np.savez(tmp_path / "xy.npz", X=X, y=y[:4])
    np.save(tmp_path / "str.npy", np.array([["a", "b"], ["c", "d"]]))
    torch.save([torch.tensor(X)], tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    (tmp_path / "f.csv").write_text("1,2\n")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["X"] = np.array([b"a", b"b"]).reshape(2, 1)
        f["y"] = np.arange(2)
    f_npy = str(tmp_path / "f.npy")
    cases = [
        (FileNotFoundError, r"features file .*nope\.npy' does not exist", dict(path=tmp_path / "nope.npy")),
        (FileNotFoundError, r"labels file .*nolab\.npy' does not exist",
         dict(path=f_npy, labels=tmp_path / "nolab.npy")),
        (ValueError, r"f\.csv: unsupported extension '\.csv'", dict(path=tmp_path / "f.csv")),
        (ValueError, r"x3\.npy: the features have shape \(6, 2, 2\); expected \(N, D\)",
         dict(path=tmp_path / "x3.npy")),
        (ValueError, r"y5\.npy: 5 labels for 6 feature rows", dict(path=f_npy, labels=tmp_path / "y5.npy")),
        (ValueError, r"yfrac\.npy: the labels are not all integers",
         dict(path=f_npy, labels=tmp_path / "yfrac.npy")),
        (ValueError, r"labels array\): the labels have shape \(6, 2\)", dict(path=f_npy, labels=X[:, :2])),
        (ValueError, r"two\.npz: no array 'X' for the features and 2 arrays .*\['a', 'b'\]",
         dict(path=tmp_path / "two.npz")),
        (ValueError, r"two\.npz: no array 'c' for the features; it holds \['a', 'b'\]",
         dict(path=tmp_path / "two.npz", key="c")),
        (ValueError, r"xy\.npz: no array 'lab' for the labels",
         dict(path=tmp_path / "xy.npz", label_key="lab")),
        (ValueError, r"xy\.npz: 4 labels for 6 feature rows", dict(path=tmp_path / "xy.npz")),
        (ValueError, r"f\.npy: holds a single array, so there is no key 'X'", dict(path=f_npy, key="X")),
        (ValueError, r"str\.npy: non-numeric dtype <U1 for the features", dict(path=tmp_path / "str.npy")),
        (ValueError, r"s\.h5: non-numeric dtype \|S1 for the features", dict(path=tmp_path / "s.h5")),
        (ValueError, r"list\.pt: holds a list; expected a tensor or a dict", dict(path=tmp_path / "list.pt")),
        (ValueError, r"junk\.pt: torch\.load\(weights_only=True\) failed", dict(path=tmp_path / "junk.pt")),
    ]
    for exc, pattern, kw in cases:
        with pytest.raises(exc, match=pattern):
            load_features(**kw)


# ------------------------------------------------------------------------------------ real data


def test_real_mnist_train_via_path(shared_data):
    images = need(shared_data, "mnist/train-images-idx3-ubyte.gz")
    need(shared_data, "mnist/train-labels-idx1-ubyte.gz")
    # the raw IDX inside the re-gzipped file is bit-exact (README of the shared data)
    assert hashlib.md5(gzip.decompress(images.read_bytes())).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    X, y = load_mnist("train", path=images.parent, flatten=True)
    assert X.shape == (60000, 784) and X.dtype == np.float32 and y.shape == (60000,)
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.array_equal(np.unique(y), np.arange(10))


def test_real_embeddings_match_loaders(shared_data, monkeypatch):
    need(shared_data, "embeddings/mnist70k_ae_umap10.npz")
    need(shared_data, "embeddings/usps9298_ae_umap10.npz")
    monkeypatch.setenv(DATA_ENV, str(shared_data))  # files in the embeddings/, mnist/, usps/ subdirs
    Xe, ye = load_embeddings("mnist")
    assert Xe.shape == (70000, 10) and Xe.dtype == np.float32 and np.isfinite(Xe).all()
    _, y_mnist = load_mnist("all")  # train then test, the order of the DeepDPM features
    np.testing.assert_array_equal(ye, y_mnist)
    Xu, yu = load_embeddings("usps")
    assert Xu.shape == (9298, 10)
    if (shared_data / "usps" / "usps.h5").exists() and pytest.importorskip("h5py"):
        np.testing.assert_array_equal(yu, load_usps("all")[1])


def test_real_usps_hdf5_and_libsvm_agree(shared_data):
    pytest.importorskip("h5py")
    X_h5, y_h5 = load_usps("test", path=need(shared_data, "usps/usps.h5"))
    X_sv, y_sv = load_usps("test", path=need(shared_data, "usps/usps.t.bz2"))
    assert X_h5.shape == X_sv.shape == (2007, 256)
    np.testing.assert_array_equal(y_h5, y_sv)
    assert X_h5.min() == 0.0 and X_h5.max() == 1.0 and X_sv.min() >= 0.0 and X_sv.max() <= 1.0
    # Same images in the same order, but the two copies are preprocessed differently (the HDF5
    # one is sharper and scaled per image), so compare by correlation, not by value.
    def z(A):
        A = A.astype(np.float64) - A.mean(1, keepdims=True)
        return A / np.linalg.norm(A, axis=1, keepdims=True)

    C = z(X_h5) @ z(X_sv).T
    assert np.median(np.diag(C)) > 0.9 and np.diag(C).min() > 0.8
    assert np.mean(C.argmax(axis=0) == np.arange(2007)) > 0.85
