"""The model file format: plain data read back without running code.

A model file is ``torch.save`` of one dict::

    {"format": "bayesclust-model", "version": 1, "class": "<module>.<qualname>",
     "params": {...}, "fitted": {...}, "extra": {...}, "unsaved": [parameter names]}

whose leaves are tensors, ``None``, bools, ints, floats and strings, in lists, tuples and dicts with
string keys. :func:`read_model` opens it with ``torch.load(weights_only=True)``, which refuses any
other object, so opening a file never runs code from it. Other values are encoded as tagged dicts
(``{TAG: kind, ...}``) by :func:`encode` and decoded back by :func:`decode`: numpy arrays (a tensor
and the dtype, so they come back as numpy of that dtype), numpy scalars, dicts with non-string keys,
``torch.device`` / ``torch.dtype``. :func:`write_model` writes a temporary file beside the target and
renames it, so a failed save leaves nothing half-written.
"""

from __future__ import annotations

import os
import pickle
import uuid
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "bayesclust-model"
VERSION = 1
TAG = "__bayesclust__"
_KEYS = ("format", "version", "class", "params", "fitted", "extra", "unsaved")
_SCALARS = (bool, int, float, str, type(None))


class ModelFileError(ValueError):
    """A model file that cannot be read (its message names the file and what is wrong)."""


class EncodeError(ValueError):
    """A value the model file format cannot store."""


# ---------------------------------------------------------------------------------------- encoding
def encode(value: Any, where: str = "value") -> Any:
    """``value`` as plain data for the file; ``where`` names it in the error for unsupported types."""
    if isinstance(value, np.generic):
        return {TAG: "npscalar", "dtype": value.dtype.str, "value": value.item()}
    if isinstance(value, _SCALARS):  # a subclass (an IntEnum, ...) is stored as its base type
        return value if type(value) in _SCALARS else next(t(value) for t in _SCALARS if isinstance(value, t))
    if isinstance(value, torch.Tensor):
        return _encode_tensor(value, where)
    if isinstance(value, np.ndarray):
        return _encode_array(value, where)
    if isinstance(value, torch.device):
        return {TAG: "device", "value": str(value)}
    if isinstance(value, torch.dtype):
        return {TAG: "dtype", "value": str(value).removeprefix("torch.")}
    if isinstance(value, list):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(encode(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        return _encode_dict(value, where)
    raise EncodeError(f"{where} holds a {type(value).__name__}, which a model file cannot store.")


def _encode_tensor(t: torch.Tensor, where: str) -> torch.Tensor:
    if t.layout != torch.strided:
        raise EncodeError(f"{where} is a {t.layout} tensor; only dense tensors can be saved.")
    t = t.detach().cpu().resolve_conj().resolve_neg()
    if type(t) is not torch.Tensor:  # a subclass would need its class at load
        t = t.as_subclass(torch.Tensor)
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.nbytes:  # a view saves its whole storage
        t = t.contiguous().clone()
    return t


def _encode_array(a: np.ndarray, where: str) -> dict[str, Any]:
    kind = a.dtype.kind
    if kind in "US":
        return {TAG: "strarray", "dtype": a.dtype.str, "shape": list(a.shape), "data": a.ravel().tolist()}
    if kind not in "biufc":
        raise EncodeError(f"{where} is a numpy array of dtype {a.dtype}, which a model file cannot store.")
    native = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)  # keeps 0-d arrays 0-d
    try:
        data = torch.from_numpy(native)
    except TypeError:  # a dtype torch lacks (e.g. uint16 on old torch): stored widened, cast back
        data = torch.from_numpy(native.astype(np.float64 if kind == "f" else np.int64))
    return {TAG: "ndarray", "dtype": a.dtype.str, "data": data}


def _encode_dict(d: Mapping[Any, Any], where: str) -> dict[str, Any]:
    if all(isinstance(k, str) for k in d) and TAG not in d:
        return {k: encode(v, f"{where}[{k!r}]") for k, v in d.items()}
    items = []
    for k, v in d.items():
        if not isinstance(k, _SCALARS + (tuple, np.generic)):
            raise EncodeError(f"{where} has a {type(k).__name__} key, which a model file cannot store.")
        items.append([encode(k, f"{where} key"), encode(v, f"{where}[{k!r}]")])
    return {TAG: "dict", "items": items}


# ---------------------------------------------------------------------------------------- decoding
def decode(value: Any, where: str = "value") -> Any:
    """Inverse of :func:`encode`; raises :class:`ModelFileError` on anything it did not write."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list):
        return [decode(v, where) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v, where) for v in value)
    if isinstance(value, dict):
        if TAG in value:
            try:
                return _decode_tagged(value, where)
            except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
                raise ModelFileError(f"{where} holds a malformed {value.get(TAG)!r} entry ({exc}).") from exc
        return {k: decode(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ModelFileError(f"{where} holds a {type(value).__name__}, which no bayesclust model file holds.")


def _decode_tagged(value: dict[str, Any], where: str) -> Any:
    kind = value[TAG]
    if kind == "ndarray":
        if not isinstance(value["data"], torch.Tensor):
            raise TypeError("its data is not a tensor")
        return np.array(value["data"].numpy(), dtype=_dtype(value["dtype"], "biufc"))
    if kind == "strarray":
        return np.array(value["data"], dtype=_dtype(value["dtype"], "US")).reshape(value["shape"])
    if kind == "npscalar":
        return _dtype(value["dtype"], "biufc").type(value["value"])
    if kind == "dict":
        return {_hashable(decode(k, where)): decode(v, f"{where}[{k!r}]") for k, v in value["items"]}
    if kind == "device":
        return torch.device(value["value"])
    if kind == "dtype":
        dtype = getattr(torch, str(value["value"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {value['value']!r}")
        return dtype
    raise ValueError(f"unknown kind {kind!r}")


def _dtype(spec: Any, kinds: str) -> np.dtype:
    """A numpy dtype from its ``dtype.str``, one of the ``kinds`` the format writes."""
    if not isinstance(spec, str):
        raise TypeError(f"its dtype is a {type(spec).__name__}, not a string")
    dtype = np.dtype(spec)
    if dtype.kind not in kinds or dtype.fields is not None:
        raise ValueError(f"dtype {spec!r} is not one a model file holds")
    return dtype


def _hashable(key: Any) -> Any:
    if isinstance(key, list | dict | torch.Tensor | np.ndarray):
        raise TypeError(f"a dict key of type {type(key).__name__}")
    return key


# ---------------------------------------------------------------------------------------- files
def write_model(path: str | os.PathLike, cls: str, params: Mapping[str, Any], fitted: Mapping[str, Any],
                extra: Mapping[str, Any], unsaved: Iterable[str] = ()) -> None:
    """Encode and write a model file atomically (temporary file in the same folder, then rename).

    A missing folder raises ``FileNotFoundError``; an unsupported value ``ValueError`` (nothing is
    written in either case)."""
    path = Path(path)
    blob = {
        "format": FORMAT, "version": VERSION, "class": str(cls),
        "params": encode(dict(params), "parameter"), "fitted": encode(dict(fitted), "fitted attribute"),
        "extra": encode(dict(extra), "extra state"), "unsaved": [str(n) for n in unsaved],
    }
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot save the model to {path}: the folder {folder} does not exist.")
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(blob, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_model(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a model file: the decoded dict with the keys of the module docstring.

    Never unpickles anything but tensors and plain values; every problem with the file's content
    is a :class:`ModelFileError` (a ``ValueError``) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    blob = _load_plain(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is not a bayesclust model file: a torch file without the bayesclust header "
            f"(format={FORMAT!r})."
        )
    version = blob.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise ModelFileError(
            f"{path} has model file format version {version!r}; this bayesclust reads version {VERSION}"
            + (" (the file was written by a newer bayesclust; upgrade to load it)." if newer else ".")
        )
    missing = [k for k in _KEYS if k not in blob]
    if missing:
        raise ModelFileError(f"{path} is incomplete: it lacks the part(s) {missing}.")
    try:
        out = {k: decode(blob[k], k) for k in _KEYS}
    except ModelFileError as exc:
        raise ModelFileError(f"{path} is corrupt: {exc}") from exc
    except RecursionError as exc:
        raise ModelFileError(f"{path} is corrupt: it is nested too deeply.") from exc
    for key, kind in (("class", str), ("params", dict), ("fitted", dict), ("extra", dict), ("unsaved", list)):
        if not isinstance(out[key], kind):
            raise ModelFileError(f"{path} is corrupt: its {key!r} part is a {type(out[key]).__name__}, "
                                 f"not a {kind.__name__}.")
    return out


def _load_plain(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a torch zip archive, with every failure a ModelFileError."""
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty; it is not a bayesclust model file.")
    if not zipfile.is_zipfile(path):  # checked first: nothing else (e.g. a bare pickle) is unpickled
        raise ModelFileError(
            f"{path} is not a bayesclust model file, or it is truncated or corrupt: it is not a "
            "complete torch archive."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"{path} was refused: it holds Python objects other than tensors and plain values, which "
            "could run code when loaded (a file written by an older bayesclust, or a crafted file). "
            "It was not loaded; load it only with torch.load(weights_only=False) if you trust it."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile, RecursionError) as exc:
        raise ModelFileError(f"{path} is truncated or corrupt: {exc}") from exc


# ---------------------------------------------------------------------------------------- estimators
def saveable_params(params: Mapping[str, Any], owner: str) -> tuple[dict[str, Any], list[str]]:
    """The parameters a model file can hold, and the names of ``nn.Module`` parameters to give back
    at load. A module or a value the format cannot store (a callable) is saved as None, with a
    UserWarning naming it."""
    out: dict[str, Any] = {}
    unsaved: list[str] = []
    for name, value in params.items():
        out[name] = value
        if isinstance(value, torch.nn.Module):
            out[name] = None
            unsaved.append(name)
            warnings.warn(
                f"{owner}({name}=<{type(value).__name__}>): a user-given nn.Module cannot be stored in a "
                f"model file; its trained weights are saved, and load(path, {name}=module) needs an "
                "instance of the same architecture to load them into.",
                UserWarning,
                stacklevel=3,
            )
            continue
        try:
            encode(value, name)
        except EncodeError as exc:
            out[name] = None
            warnings.warn(
                f"{owner}: parameter {name!r} is not saved ({exc}); the file stores {name}=None. Give it "
                f"again at load if needed: load(path, {name}=...).",
                UserWarning,
                stacklevel=3,
            )
    return out, unsaved


def load_params(path: str | os.PathLike, blob: Mapping[str, Any], cls_name: str, names: Iterable[str],
                given: Mapping[str, Any]) -> dict[str, Any]:
    """The ``__init__`` parameters of a loaded model: the saved ones, replaced by those ``given``."""
    names = list(names)
    unknown = sorted(k for k in given if k not in names)
    if unknown:
        raise ValueError(f"Invalid parameter(s) {unknown} for {cls_name}.load; valid parameters are "
                         f"{sorted(names)}.")
    foreign = sorted(k for k in blob["params"] if k not in names)
    if foreign:
        raise ModelFileError(f"{path} holds parameter(s) {foreign} that {cls_name} does not have (a file "
                             "written by another bayesclust version?).")
    needed = [k for k in blob["unsaved"] if k not in given]
    if needed:
        raise ModelFileError(
            f"{path} was fitted with a user-given nn.Module as {needed[0]!r}, which a model file cannot "
            f"hold; give a module of the same architecture to load its weights into: "
            f"{cls_name}.load(path, {needed[0]}=module)."
        )
    return {**blob["params"], **given}


def check_fitted_names(path: str | os.PathLike, fitted: Mapping[str, Any]) -> None:
    """Fitted attribute names must be public trailing-underscore identifiers (nothing else is set)."""
    bad = [k for k in fitted if not (k.isidentifier() and k.endswith("_") and not k.startswith("_"))]
    if bad:
        raise ModelFileError(f"{path} is corrupt: {bad} are not fitted attribute names.")


def require_keys(mapping: Mapping[str, Any], names: Iterable[str], what: str) -> None:
    """Raise ModelFileError naming the ``names`` missing from ``mapping`` (described as ``what``)."""
    missing = [n for n in names if n not in mapping]
    if missing:
        raise ModelFileError(f"it lacks {missing} in its {what}")


def require_attributes(obj: Any, names: Iterable[str]) -> None:
    """Raise ModelFileError naming the fitted attributes in ``names`` that ``obj`` lacks."""
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise ModelFileError(f"it lacks the fitted attribute(s) {missing}")
