"""Data loaders: IDX (MNIST-like), USPS (HDF5 / LIBSVM), CSV / NPY / NPZ tables, embedded defaults,
and features you already have (``load_features``: .npy / .npz / .pt / HDF5).

Every loader returns numpy arrays ``(X, y)`` (``y`` is ``None`` for unlabelled data), or a
:class:`Dataset` with column names and a description when ``return_X_y=False``.

Embedded in the package (work on a fresh machine, see ``bayesclust/data/ATTRIBUTION.md``):
MNIST-test (CC BY-SA 3.0), Old Faithful, iris, Palmer penguins and the galaxies velocities.
Everything else is read from ``path=`` or from the directory named by the environment
variable ``BAYESCLUST_DATA``; a missing file raises :class:`FileNotFoundError` naming the
expected file names and how to point at them.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._validation import check_option

__all__ = [
    "DATA_ENV",
    "Dataset",
    "load_embeddings",
    "load_features",
    "load_faithful",
    "load_galaxies",
    "load_idx",
    "load_iris",
    "load_mnist",
    "load_penguins",
    "load_table",
    "load_usps",
]

DATA_ENV = "BAYESCLUST_DATA"
_EMBEDDED = Path(__file__).resolve().parent / "data"

_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = b"BZh"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_MISSING = frozenset({"", "NA", "N/A", "NaN", "nan"})


@dataclass(frozen=True)
class Dataset:
    """A loaded data set: ``X`` (N, ...), ``y`` (N,) int64 or ``None``, names and a description."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str] | None = None
    target_names: list[str] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _result(
    X: np.ndarray,
    y: np.ndarray | None,
    return_X_y: bool,
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    return (X, y) if return_X_y else Dataset(X, y, **kw)


# --------------------------------------------------------------------------------------------
# bytes, compression and file location
# --------------------------------------------------------------------------------------------


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _read_bytes(path: Path) -> bytes:
    """File content, gunzipped / bunzipped when the magic bytes say so (not the extension)."""
    raw = Path(path).read_bytes()
    try:
        if raw[:2] == _GZIP_MAGIC:
            return gzip.decompress(raw)
        if raw[:3] == _BZ2_MAGIC:
            return bz2.decompress(raw)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise ValueError(
            f"{path}: the compressed stream is truncated or corrupt ({exc}); download the file again."
        ) from exc
    return raw


def _base_dirs(path: str | os.PathLike | None, subdir: str) -> tuple[list[Path], str]:
    """Directories to search (``path`` or $BAYESCLUST_DATA, and their ``subdir``) and a description."""
    if path is not None:
        base, origin = Path(path).expanduser(), f"path={str(path)!r}"
    elif os.environ.get(DATA_ENV):
        base, origin = Path(os.environ[DATA_ENV]).expanduser(), f"{DATA_ENV}={os.environ[DATA_ENV]!r}"
    else:
        return [], f"no path= given and {DATA_ENV} is not set"
    if not base.exists():
        raise FileNotFoundError(f"{origin} does not exist.")
    return [base, base / subdir], origin


def _find(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    return None


def _not_found(
    what: str, names: Sequence[str], origin: str, subdir: str, extra: str = ""
) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what}: could not find {' / '.join(names)} ({origin}). Download the files and pass "
        f"path='/directory/with/the/files', or set the environment variable {DATA_ENV} to that "
        f"directory (its '{subdir}/' subdirectory is searched too).{extra}"
    )


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST, KMNIST)
# --------------------------------------------------------------------------------------------


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected from the magic bytes).

    Returns the array with the shape in its header in native byte order, e.g. (N, 28, 28)
    uint8 for MNIST images, (N,) uint8 for labels. Raises ValueError for a bad magic number,
    an unknown type code, a truncated file or trailing bytes.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(
            f"{path}: {len(data)} byte(s) is too short for an IDX header; the file is truncated or empty."
        )
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path}: bad magic number 0x{magic:08X}; an IDX file starts with two zero bytes, a type "
            "code and the number of dimensions (0x00000803 for MNIST images, 0x00000801 for labels). "
            "Is this an IDX file?"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX data type code 0x{code:02X} (magic 0x{magic:08X}); "
                         f"expected one of {known}.")
    if ndim == 0:
        raise ValueError(f"{path}: the IDX header declares 0 dimensions (magic 0x{magic:08X}).")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: the IDX header declares {ndim} dimensions but the file ends after {len(data)} "
            "bytes; the file is truncated."
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise ValueError(
            f"{path}: truncated IDX file: shape {shape} needs {expected} data bytes but only {got} "
            "are present; download the file again."
        )
    if got > expected:
        raise ValueError(
            f"{path}: {got - expected} unexpected trailing bytes after the data of shape {shape}; "
            "not a valid IDX file."
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _candidates(stem: str) -> list[str]:
    return [stem + ".gz", stem]


def _mnist_pair(split: str, dirs: Sequence[Path]) -> tuple[Path, Path] | None:
    imgs, labs = (_find(dirs, _candidates(s)) for s in _MNIST_FILES[split])
    return (imgs, labs) if imgs is not None and labs is not None else None


def _read_mnist_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_idx(images), load_idx(labels)
    if X.ndim != 3:
        raise ValueError(f"{images}: expected images of shape (N, rows, cols), got shape {X.shape}.")
    if y.ndim != 1:
        raise ValueError(f"{labels}: expected labels of shape (N,), got shape {y.shape}.")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{images} has {X.shape[0]} images but {labels} has {y.shape[0]} labels.")
    return X, y.astype(np.int64)


def load_mnist(
    split: str = "test",
    path: str | os.PathLike | None = None,
    flatten: bool = False,
    normalize: bool = True,
    return_X_y: bool = True,
) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """MNIST (or any data set in its IDX layout: Fashion-MNIST, KMNIST).

    Parameters
    ----------
    split : ``"test"`` (10,000 images, embedded: works without a path), ``"train"`` (60,000) or
        ``"all"`` (train then test, 70,000).
    path : directory with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (or a ``mnist/``
        subdirectory holding them). Without it, ``"train"``/``"all"`` read ``$BAYESCLUST_DATA``;
        ``"test"`` uses the embedded copy.
    flatten : return (N, 784) instead of (N, 28, 28).
    normalize : float32 in [0, 1] (pixel / 255); ``False`` keeps the raw uint8 values.

    Returns
    -------
    X : (N, 28, 28) or (N, 784) float32 (uint8 if not normalize); y : (N,) int64.
    """
    check_option(split, "split", ("test", "train", "all"))
    names = [n + "[.gz]" for n in _MNIST_FILES["train" if split == "all" else split]]
    if split == "test" and path is None:
        pairs = [_mnist_pair("test", [_EMBEDDED])]
        if pairs[0] is None:  # pragma: no cover - a broken installation
            raise FileNotFoundError(f"the embedded MNIST-test files are missing from {_EMBEDDED}.")
    else:
        dirs, origin = _base_dirs(path, "mnist")
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"path={str(path)!r} must be a directory holding {' and '.join(names)}.")
        first = _mnist_pair("train" if split == "all" else split, dirs)
        if first is None:
            hint = " Only split='test' is embedded." if split != "test" else ""
            raise _not_found(f"MNIST split {split!r}", names, origin, "mnist", hint)
        pairs = [first]
        if split == "all":
            # test files beside the train files (same data set), else the embedded MNIST-test.
            pairs.append(_mnist_pair("test", [first[0].parent]) or _mnist_pair("test", [_EMBEDDED]))
    parts = [_read_mnist_pair(*p) for p in pairs]
    X = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if flatten:
        X = X.reshape(X.shape[0], -1)
    if normalize:
        X = X.astype(np.float32) / np.float32(255.0)
    return _result(
        X, y, return_X_y,
        target_names=[str(i) for i in range(10)],
        description=f"MNIST {split}: {X.shape[0]} handwritten digits (LeCun, Cortes, Burges; CC BY-SA 3.0).",
        extra={"files": [str(f) for p in pairs for f in p]},
    )


# --------------------------------------------------------------------------------------------
# USPS: HDF5 or LIBSVM text
# --------------------------------------------------------------------------------------------

_USPS_H5 = ("usps.h5", "usps.hdf5")
_USPS_LIBSVM = {"train": ("usps", "usps.bz2"), "test": ("usps.t", "usps.t.bz2")}


def _read_usps_h5(file: Path, splits: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "Reading USPS in HDF5 format needs h5py: pip install h5py (or pip install "
            "'bayesclust[data]'), or pass the LIBSVM files usps / usps.t[.bz2] instead."
        ) from exc
    Xs, ys = [], []
    with h5py.File(file, "r") as f:
        for s in splits:
            if f"{s}/data" not in f or f"{s}/target" not in f:
                raise ValueError(
                    f"{file}: no '{s}/data' and '{s}/target' datasets; expected the USPS HDF5 layout "
                    f"train/{{data,target}}, test/{{data,target}} (found {sorted(f.keys())})."
                )
            X, y = np.asarray(f[f"{s}/data"], dtype=np.float32), np.asarray(f[f"{s}/target"])
            if X.ndim != 2 or y.shape != (X.shape[0],):
                raise ValueError(f"{file}: {s}/data has shape {X.shape} and {s}/target {y.shape}; "
                                 "expected (N, D) and (N,).")
            Xs.append(X)
            ys.append(y.astype(np.int64))
    return np.concatenate(Xs), np.concatenate(ys)


def _read_libsvm(file: Path, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense (N, n_features) float64 and raw float labels from LIBSVM ``label idx:value ...`` text."""
    text = _read_bytes(file).decode("ascii", errors="replace")
    labels: list[float] = []
    rows: list[np.ndarray] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        try:
            labels.append(float(head))
            pairs = np.array(rest.replace(":", " ").split(), dtype=np.float64).reshape(-1, 2)
        except ValueError as exc:
            raise ValueError(
                f"{file}, line {lineno}: not LIBSVM 'label index:value ...' text ({exc})."
            ) from exc
        idx = pairs[:, 0]
        if np.any(idx != np.round(idx)) or np.any(idx < 1) or np.any(idx > n_features):
            raise ValueError(f"{file}, line {lineno}: feature indices must be integers in 1..{n_features}.")
        row = np.zeros(n_features)
        row[idx.astype(np.int64) - 1] = pairs[:, 1]
        rows.append(row)
    if not rows:
        raise ValueError(f"{file}: no data lines; is this a LIBSVM file?")
    return np.vstack(rows), np.asarray(labels)


def _read_usps_libsvm(file: Path) -> tuple[np.ndarray, np.ndarray]:
    X, labels = _read_libsvm(file, 256)
    if np.any(labels != np.round(labels)) or labels.min() < 1 or labels.max() > 10:
        raise ValueError(f"{file}: USPS LIBSVM labels must be the integers 1..10, "
                         f"found values in [{labels.min()}, {labels.max()}].")
    if X.min() < -1 - 1e-6 or X.max() > 1 + 1e-6:
        raise ValueError(f"{file}: USPS LIBSVM features must lie in [-1, 1], found "
                         f"[{X.min()}, {X.max()}].")
    X01 = np.clip((X + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    return X01, labels.astype(np.int64) - 1


def load_usps(
    split: str = "train",
    path: str | os.PathLike | None = None,
    return_X_y: bool = True,
) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """USPS handwritten digits (Hull 1994), 16 x 16 grey images.

    Parameters
    ----------
    split : ``"train"`` (7,291), ``"test"`` (2,007) or ``"all"`` (train then test, 9,298).
    path : an HDF5 file (``train/data``, ``train/target``, ``test/...``; needs h5py), a LIBSVM file
        (features in [-1, 1], labels 1..10, optionally bz2/gzip; read as-is whatever ``split``), or a
        directory holding ``usps.h5`` or the LIBSVM files ``usps`` / ``usps.t`` (``.bz2`` allowed),
        directly or in a ``usps/`` subdirectory. Default: ``$BAYESCLUST_DATA``.

    Returns
    -------
    X : (N, 256) float32 in [0, 1] (LIBSVM features are mapped by (x + 1) / 2); y : (N,) int64 in 0..9.

    Notes
    -----
    The two public copies hold the same images in the same order with the same labels, but
    their pixels differ beyond a rescaling: the common HDF5 copy is scaled to [0, 1] per image
    and looks sharper than the LIBSVM one (per-image correlation about 0.96 on the test set).
    """
    check_option(split, "split", ("train", "test", "all"))
    splits = ("train", "test") if split == "all" else (split,)
    if path is not None and Path(path).is_file():
        files = [Path(path)]
    else:
        dirs, origin = _base_dirs(path, "usps")
        h5 = _find(dirs, _USPS_H5)
        if h5 is not None:
            files = [h5]
        else:
            found = [_find(dirs, _USPS_LIBSVM[s]) for s in splits]
            if any(f is None for f in found):
                names = [*_USPS_H5, *(n for s in splits for n in _USPS_LIBSVM[s])]
                raise _not_found(f"USPS split {split!r}", names, origin, "usps")
            files = [f for f in found if f is not None]
    if _head(files[0]) == _HDF5_MAGIC:
        X, y = _read_usps_h5(files[0], splits)
    else:
        parts = [_read_usps_libsvm(f) for f in files]
        X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return _result(
        X, y, return_X_y,
        target_names=[str(i) for i in range(10)],
        description=f"USPS {split}: {X.shape[0]} 16x16 digits (Hull 1994).",
        extra={"files": [str(f) for f in files]},
    )


# --------------------------------------------------------------------------------------------
# Tables: CSV, NPY, NPZ
# --------------------------------------------------------------------------------------------


def _encode_target(values: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels stay as they are (int64); anything else is coded 0..C-1 in sorted order."""
    if values.dtype.kind in "biu":
        return values.astype(np.int64), None
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        return values.astype(np.int64), None
    if values.dtype.kind not in "fUSO":
        raise TypeError(f"target has unsupported dtype {values.dtype}.")
    try:
        as_float = values.astype(np.float64)
        if np.all(as_float == np.round(as_float)):
            return as_float.astype(np.int64), None
    except ValueError:
        pass
    names, codes = np.unique(values.astype(str), return_inverse=True)
    return codes.astype(np.int64), [str(n) for n in names]


def _missing_error(where: str, n_bad: int, n: int, columns: Sequence[str]) -> ValueError:
    return ValueError(
        f"{where}: {n_bad} of {n} rows have missing values (NA / empty / NaN) in columns {list(columns)}; "
        "pass dropna=True to drop those rows, or impute them first."
    )


def _sniff_delimiter(text: str) -> str:
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _parse_float_column(name: str, tokens: list[str]) -> np.ndarray:
    """float64 column with NaN for the missing tokens; TypeError naming a bad value otherwise."""
    clean = ["nan" if t in _MISSING else t for t in tokens]
    try:
        return np.array(clean, dtype=np.float64)
    except ValueError:
        for t in clean:
            try:
                float(t)
            except ValueError:
                raise TypeError(t) from None
        raise  # pragma: no cover


def _column_index(header: list[str], col: str | int, where: str) -> int:
    if isinstance(col, int | np.integer) and not isinstance(col, bool):
        if not -len(header) <= col < len(header):
            raise ValueError(f"{where}: column index {col} out of range for {len(header)} columns.")
        return int(col) % len(header)
    if col not in header:
        raise ValueError(f"{where}: no column {col!r}; the header has {header}.")
    return header.index(col)


def _load_csv(
    path: Path,
    text: str,
    target: str | int | None,
    columns: Sequence[str | int] | None,
    delimiter: str | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str]]:
    """Features (N, D) float64 with NaN for missing, raw target tokens, missing-target mask, names."""
    sep = delimiter or _sniff_delimiter(text)
    # Blank lines are skipped (as pandas does); a line of empty fields ("," ) is a row of missing values.
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=sep) if len(r) > 1 or (r and r[0].strip())]
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header line and at least one data row, found {len(rows)} line(s).")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    for i, r in enumerate(body, 2):
        if len(r) != len(header):
            raise ValueError(f"{path}, line {i}: {len(r)} fields but the header has {len(header)}; "
                             f"check the delimiter (using {sep!r}; pass delimiter=...).")
    t_idx = None if target is None else _column_index(header, target, str(path))
    if columns is None:
        f_idx = [j for j in range(len(header)) if j != t_idx]
    else:
        f_idx = [_column_index(header, c, str(path)) for c in columns]
        if t_idx is not None and t_idx in f_idx:
            raise ValueError(f"{path}: target column {header[t_idx]!r} is also listed in columns.")
    if not f_idx:
        raise ValueError(f"{path}: no feature columns left (header {header}).")
    cols, bad = [], []
    for j in f_idx:
        tokens = [r[j].strip() for r in body]
        try:
            cols.append(_parse_float_column(header[j], tokens))
        except TypeError as exc:
            bad.append(f"{header[j]!r} (e.g. {exc.args[0]!r})")
    if bad:
        raise TypeError(
            f"{path}: non-numeric feature column(s) {', '.join(bad)}. Pass target='<name>' if one is the "
            "label (it is then label-encoded), or choose numeric feature columns with columns=[...]."
        )
    X = np.column_stack(cols)
    if t_idx is None:
        return X, None, np.zeros(len(body), dtype=bool), [header[j] for j in f_idx]
    raw = np.array([r[t_idx].strip() for r in body])
    return X, raw, np.isin(raw, list(_MISSING)), [header[j] for j in f_idx]


def _load_numpy(
    path: Path, is_npz: bool, target: str | int | None, columns: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str]]:
    try:
        if is_npz:
            with np.load(path, allow_pickle=False) as z:
                if "X" not in z.files:
                    raise ValueError(f"{path}: no array 'X' in the NPZ file (keys {z.files}); save the "
                                     "features as X= and optional labels as y=.")
                key = "y" if target is None else target
                if not isinstance(key, str):
                    raise ValueError(f"{path}: for NPZ files target is the key of the label array "
                                     f"(default 'y'), got {target!r}.")
                if target is not None and key not in z.files:
                    raise ValueError(f"{path}: no array {key!r} in the NPZ file (keys {z.files}).")
                X, y = z["X"], (z[key] if key in z.files else None)
        else:
            X, y = np.load(path, allow_pickle=False), None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise TypeError(f"{path}: holds an object array; save numeric arrays only.") from exc
        raise
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2:
        raise ValueError(f"{path}: X has shape {X.shape}; a table must be 1-D or 2-D.")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{path}: X has non-numeric dtype {X.dtype}; save numeric features only.")
    if not is_npz and target is not None:
        if isinstance(target, str):
            raise ValueError(f"{path}: an NPY array has no column names; pass target as a column index.")
        t = _column_index(list(range(X.shape[1])), target, str(path))  # type: ignore[arg-type]
        y = X[:, t]
        X = np.delete(X, t, axis=1)
    names = [f"x{j}" for j in range(X.shape[1])]
    if columns is not None:
        idx = [_column_index(names, c, str(path)) for c in columns]  # type: ignore[arg-type]
        X, names = X[:, idx], [names[j] for j in idx]
    if y is not None and y.shape != (X.shape[0],):
        raise ValueError(
            f"{path}: y has shape {y.shape} but X has {X.shape[0]} rows; pass one label per row."
        )
    X = X.astype(X.dtype if X.dtype.kind == "f" else np.float64)
    y_missing = np.isnan(y) if y is not None and y.dtype.kind == "f" else np.zeros(X.shape[0], dtype=bool)
    return X, y, y_missing, names


def load_table(
    path: str | os.PathLike,
    target: str | int | None = None,
    dropna: bool = False,
    delimiter: str | None = None,
    *,
    columns: Sequence[str | int] | None = None,
    return_X_y: bool = True,
) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """A numeric table from CSV (header line; optionally gzip/bz2), NPY or NPZ (format from magic bytes).

    Parameters
    ----------
    target : CSV: name or index of the label column (removed from the features; strings are
        label-encoded 0..C-1 in sorted order, integers kept). NPY: a column index. NPZ: the key
        of the labels (default ``"y"`` when present; features are key ``"X"``).
    dropna : drop rows with a missing feature or label ("NA", empty, NaN). Otherwise such rows
        raise ValueError with their count. Blank lines in a CSV are skipped, as in pandas.
    delimiter : CSV delimiter; sniffed from the first lines when ``None``.
    columns : feature columns to keep (names or indices); default all but ``target``.

    Returns
    -------
    X : (N, D) float64 (NPY/NPZ keep a float dtype); y : (N,) int64 or ``None``.

    Raises
    ------
    TypeError for non-numeric feature columns; ValueError for missing values without
    ``dropna``, ragged rows or unknown columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file.")
    head = _head(path)
    if head.startswith(_NPY_MAGIC) or head[:4] in _ZIP_MAGICS:
        X, y_raw, y_missing, names = _load_numpy(path, head[:4] in _ZIP_MAGICS, target, columns)  # type: ignore[arg-type]
    else:
        text = _read_bytes(path).decode("utf-8-sig")
        X, y_raw, y_missing, names = _load_csv(path, text, target, columns, delimiter)
    missing = np.isnan(X).any(axis=1) | y_missing
    if missing.any():
        if not dropna:
            cols = [n for n, m in zip(names, np.isnan(X).any(axis=0)) if m]
            cols += [str(target)] if y_missing.any() else []
            raise _missing_error(str(path), int(missing.sum()), X.shape[0], cols)
        X = X[~missing]
        y_raw = None if y_raw is None else y_raw[~missing]
        if X.shape[0] == 0:
            raise ValueError(f"{path}: every row has a missing value; nothing left after dropna.")
    y, target_names = (None, None) if y_raw is None else _encode_target(y_raw)
    return _result(
        np.ascontiguousarray(X), y, return_X_y,
        feature_names=names, target_names=target_names,
        description=f"{path.name}: {X.shape[0]} rows x {X.shape[1]} features.",
    )


# --------------------------------------------------------------------------------------------
# Embedded defaults
# --------------------------------------------------------------------------------------------


def load_faithful(return_X_y: bool = True) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """Old Faithful (R ``datasets::faithful``): X (272, 2) float64 [eruptions, waiting] in minutes; y None."""
    return load_table(_EMBEDDED / "datasets_faithful.csv", columns=["eruptions", "waiting"],
                      return_X_y=return_X_y)


def load_iris(return_X_y: bool = True) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """Fisher's iris: X (150, 4) float64 (sepal/petal length/width, cm); y (150,) int64 0..2
    (setosa, versicolor, virginica)."""
    return load_table(
        _EMBEDDED / "datasets_iris.csv", target="Species",
        columns=["Sepal.Length", "Sepal.Width", "Petal.Length", "Petal.Width"], return_X_y=return_X_y,
    )


_PENGUIN_COLUMNS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


def load_penguins(
    dropna: bool = False, return_X_y: bool = True
) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """Palmer penguins: X (N, 4) float64 [bill_length_mm, bill_depth_mm, flipper_length_mm,
    body_mass_g]; y (N,) int64 0..2 (Adelie, Chinstrap, Gentoo).

    The file has 344 rows, some with missing measurements: without ``dropna=True`` this raises
    a ValueError naming their count (the honest default); with it N = 342.
    """
    return load_table(_EMBEDDED / "palmerpenguins_penguins.csv", target="species", dropna=dropna,
                      columns=_PENGUIN_COLUMNS, return_X_y=return_X_y)


def load_galaxies(return_X_y: bool = True) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """Velocities (km/s) of 82 galaxies (R ``MASS::galaxies``): X (82, 1) float64; y None."""
    return load_table(_EMBEDDED / "MASS_galaxies.csv", columns=["dat"], return_X_y=return_X_y)


# --------------------------------------------------------------------------------------------
# DeepDPM UMAP embeddings (external)
# --------------------------------------------------------------------------------------------

_EMBEDDINGS = {"mnist": "mnist70k_ae_umap10.npz", "usps": "usps9298_ae_umap10.npz"}


def load_embeddings(
    name: str, path: str | os.PathLike | None = None, return_X_y: bool = True
) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """Autoencoder + UMAP 10-D features clustered in the DeepDPM paper (not embedded).

    For features of your own (``.npy`` / ``.npz`` / ``.pt`` / HDF5) use :func:`load_features`.

    Parameters
    ----------
    name : ``"mnist"`` (``mnist70k_ae_umap10.npz``, 70,000 = train then test) or ``"usps"``
        (``usps9298_ae_umap10.npz``, 9,298).
    path : the ``.npz`` file, or a directory holding it (directly or in ``embeddings/``);
        default ``$BAYESCLUST_DATA``.

    Returns
    -------
    X : (N, 10) float32; y : (N,) int64.
    """
    check_option(name, "name", tuple(_EMBEDDINGS))
    fname = _EMBEDDINGS[name]
    if path is not None and Path(path).is_file():
        file = Path(path)
    else:
        dirs, origin = _base_dirs(path, "embeddings")
        file = _find(dirs, [fname])
        if file is None:
            raise _not_found(f"{name} embeddings", [fname], origin, "embeddings")
    with np.load(file, allow_pickle=False) as z:
        if "X" not in z.files or "y" not in z.files:
            raise ValueError(f"{file}: expected arrays 'X' and 'y', found {z.files}.")
        X, y = z["X"].astype(np.float32), z["y"].astype(np.int64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"{file}: X has shape {X.shape} and y {y.shape}; expected (N, D) and (N,).")
    return _result(X, y, return_X_y, description=f"DeepDPM {name} AE+UMAP features, {X.shape}.",
                   extra={"files": [str(file)]})


# --------------------------------------------------------------------------------------------
# features users already have: .npy / .npz / .pt / HDF5
# --------------------------------------------------------------------------------------------

_FEATURE_SUFFIXES = {".npy": "npy", ".npz": "npz", ".pt": "pt", ".pth": "pt", ".h5": "h5", ".hdf5": "h5",
                     ".hdf": "h5"}


def _feature_format(file: Path) -> str:
    fmt = _FEATURE_SUFFIXES.get(file.suffix.lower())
    if fmt is None:
        raise ValueError(f"{file}: unsupported extension {file.suffix!r}; load_features reads "
                         f"{', '.join(sorted(_FEATURE_SUFFIXES))} files.")
    return fmt


def _read_torch(file: Path) -> dict[str, Any] | Any:
    import torch

    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{file}: torch.load(weights_only=True) failed ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); save a tensor or a dict "
                         "of tensors with torch.save.") from exc
    if torch.is_tensor(obj):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {str(k): (v.detach().cpu().numpy() if torch.is_tensor(v) else v) for k, v in obj.items()}
    raise ValueError(f"{file}: holds a {type(obj).__name__}; expected a tensor or a dict of tensors.")


def _read_h5(file: Path, keys: Sequence[str | None]) -> dict[str, Any]:
    """The named datasets of an HDF5 file (or, for a None key, its only top-level dataset)."""
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(f"Reading {file} needs h5py: pip install h5py.") from exc
    with h5py.File(file, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        out: dict[str, Any] = {"__names__": names}
        for key in keys:
            if key is not None and key in names:
                out[key] = f[key][()]
        if len(names) == 1:
            out[names[0]] = f[names[0]][()]
    return out


def _read_feature_file(file: Path, keys: Sequence[str | None]) -> dict[str, Any] | np.ndarray:
    """A bare array (npy, tensor) or a mapping name -> array (npz, dict of tensors, HDF5)."""
    fmt = _feature_format(file)
    if fmt == "npy":
        try:
            return np.load(file, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{file}: not a numeric NPY array ({exc}).") from exc
    if fmt == "npz":
        try:
            with np.load(file, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as exc:
            raise ValueError(f"{file}: not a readable NPZ file of numeric arrays ({exc}).") from exc
    if fmt == "pt":
        return _read_torch(file)
    return _read_h5(file, keys)


def _pick(content: dict[str, Any] | np.ndarray, key: str | None, default: str, file: Path,
          what: str, required: bool = True) -> Any:
    """``content[key]``; with key None the ``default`` entry, else the only entry (or None if optional)."""
    if not isinstance(content, dict):
        if key is not None:
            raise ValueError(f"{file}: holds a single array, so there is no key {key!r} for {what}.")
        return content if required else None
    names = content.get("__names__", [k for k in content if k != "__names__"])
    if key is not None:
        if key not in content:
            raise ValueError(f"{file}: no array {key!r} for {what}; it holds {sorted(names)}.")
        return content[key]
    if default in content:
        return content[default]
    if not required:
        return None
    if len(names) == 1 and names[0] in content:
        return content[names[0]]
    raise ValueError(f"{file}: no array {default!r} for {what} and {len(names)} arrays to choose from "
                     f"({sorted(names)}); name one with the key parameter.")


def _as_numeric(a: Any, file: Path | str, what: str) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except Exception as exc:
        raise ValueError(f"{file}: {what} is not an array ({type(a).__name__}).") from exc
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{file}: non-numeric dtype {arr.dtype} for {what}; save numbers only.")
    return arr


def _as_labels(a: Any, file: Path | str, n: int) -> np.ndarray:
    y = _as_numeric(a, file, "the labels")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{file}: the labels have shape {y.shape}; expected (N,).")
    if y.shape[0] != n:
        raise ValueError(f"{file}: {y.shape[0]} labels for {n} feature rows; pass one label per row.")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise ValueError(f"{file}: the labels are not all integers; pass integer class ids.")
    return y.astype(np.int64)


def _resolve(path: str | os.PathLike, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what} file {str(file)!r} does not exist (or is not a file).")
    return file


def load_features(
    path: str | os.PathLike,
    labels: str | os.PathLike | np.ndarray | Sequence[int] | None = None,
    *,
    key: str | None = None,
    label_key: str | None = None,
    return_X_y: bool = True,
) -> tuple[np.ndarray, np.ndarray | None] | Dataset:
    """Features you already have (e.g. embeddings from a pretrained network), labels optional.

    Parameters
    ----------
    path : ``.npy`` (one array), ``.npz``, ``.pt`` / ``.pth`` (``torch.save`` of a tensor or a dict of
        tensors, read with ``torch.load(weights_only=True)``) or ``.h5`` / ``.hdf5`` (needs h5py).
    labels : ``None`` (labels from the same file if it holds them), an array (N,), or a separate file
        in one of the formats above.
    key : the features' array name (npz / dict / HDF5 dataset path); default ``"X"``, else the file's
        only array.
    label_key : the labels' array name; default ``"y"`` (optional in the features file), else a label
        file's only array.

    Returns
    -------
    X : (N, D) float32; y : (N,) int64 or ``None``. Any problem (missing file or key, shapes,
    non-numeric data, label count) raises FileNotFoundError / ValueError naming the file.
    """
    file = _resolve(path, "features")
    content = _read_feature_file(file, (key or "X", label_key or "y"))
    X = _as_numeric(_pick(content, key, "X", file, "the features"), file, "the features")
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{file}: the features have shape {X.shape}; expected (N, D) with N >= 1 "
                         "(reshape to one row per sample).")
    if labels is None:
        raw = _pick(content, label_key, "y", file, "the labels", required=False)
        where: Path | str = file
    elif isinstance(labels, str | os.PathLike):
        where = _resolve(labels, "labels")
        raw = _pick(_read_feature_file(where, (label_key or "y",)), label_key, "y", where, "the labels")
    else:
        raw, where = labels, f"{file} (labels array)"
    y = None if raw is None else _as_labels(raw, where, X.shape[0])
    files = [str(file)] + ([str(where)] if isinstance(where, Path) and where != file else [])
    return _result(X.astype(np.float32), y, return_X_y, description=f"features from {file}, {X.shape}.",
                   extra={"files": files})
