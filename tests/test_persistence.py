"""The model file format (bayesclust/_persist.py): safe to open, complete, atomic, every failure clear.

Every estimator x route round-trips through ``save`` / ``load`` with identical predictions, scores,
samples and ``to_inference_data``, and with every fitted attribute of the same type and dtype. Bad
files (crafted to run code, truncated, random bytes, wrong version, missing parts, other torch
files) are refused with a ValueError naming the file.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import bayesclust as bc
from bayesclust import _persist

K = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0]])
    return centres[rng.integers(0, K, n)] + rng.normal(size=(n, 3))


def _images(n: int = 45, seed: int = 1, channels: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    protos = np.zeros((K, 10, 10), np.float32)
    protos[0, 2:8, 4:6] = 1.0
    protos[1, 4:6, 1:9] = 1.0
    protos[2, 2:8, 2:8] = 1.0
    X = (protos[rng.integers(0, K, n)] + 0.05 * rng.normal(size=(n, 10, 10))).astype(np.float32)
    return X[:, None] if channels else X


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]
    data: Callable[[], np.ndarray]

    def __repr__(self) -> str:
        return self.id


_DTI = {"transforms": ("affine",), "max_iter": 4, "batch_size": 30, "encoder_width": 8, "feature_dim": 8,
        "head_hidden": 8, "random_state": 0}
_ENT = {"max_iter": 2, "batch_size": 30, "random_state": 0}
_NUTS = {"inference": "nuts", "max_iter": 5, "num_samples": 4, "warmup_steps": 4, "num_chains": 1}

CASES = [
    Case("gmm-em-full", lambda: bc.GaussianMixture(K, max_iter=10, random_state=0), _blobs),
    Case("gmm-em-diag-f64", lambda: bc.GaussianMixture(K, covariance_type="diag", dtype="float64",
                                                       max_iter=10, random_state=0), _blobs),
    Case("gmm-em-array-params", lambda: bc.GaussianMixture(
        K, init=np.array([[0.0, 0, 0], [6, 0, 1], [0, 7, -2]]), mean_prior=np.zeros(3, np.float32),
        covariance_prior=np.ones(3), max_iter=10, random_state=0), _blobs),
    Case("gmm-svi-map", lambda: bc.GaussianMixture(K, inference="svi", max_iter=5, random_state=0), _blobs),
    *(
        Case(f"gmm-svi-meanfield-{cov}", lambda cov=cov: bc.GaussianMixture(
            K, covariance_type=cov, inference="svi", svi_guide="meanfield", max_iter=5, random_state=0),
            _blobs)
        for cov in ("full", "diag", "spherical")
    ),
    Case("gmm-nuts", lambda: bc.GaussianMixture(K, covariance_type="spherical", random_state=0, **_NUTS),
         lambda: _blobs(30)),
    Case("dpgmm-splitmerge", lambda: bc.DPGMM(max_iter=10, random_state=0), _blobs),
    Case("dpgmm-vi", lambda: bc.DPGMM(inference="vi", max_iter=20, random_state=0), _blobs),
    Case("dpgmm-deep", lambda: bc.DPGMM(inference="deep", max_iter=2, hidden=8, batch_size=64,
                                        random_state=0), _blobs),
    Case("dtikmeans", lambda: bc.DTIKMeans(K, **_DTI), _images),
    Case("dtikmeans-f64-chw", lambda: bc.DTIKMeans(K, dtype="float64", **_DTI),
         lambda: _images(channels=True)),
    Case("dtigmm-f64", lambda: bc.DTIGMM(K, dtype="float64", **_DTI), _images),
    Case("entropy-linear", lambda: bc.EntropyClustering(K, **_ENT), _blobs),
    Case("entropy-mlp-f64", lambda: bc.EntropyClustering(K, head="mlp", hidden=8, loss="collision",
                                                         dtype="float64", **_ENT), _blobs),
    Case("entropy-cnn", lambda: bc.EntropyClustering(K, head="cnn", **_ENT), _images),
]


def _assert_same(a: Any, b: Any, where: str) -> None:
    """Same type, dtype and value (NaN equal to NaN), recursively."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype, f"{where}: {a.dtype} != {b.dtype}"
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float | np.floating) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _outputs(est: Any, X: np.ndarray) -> dict[str, Any]:
    out = {"predict": est.predict(X)}
    for name in ("predict_proba", "score_samples", "transform", "score"):
        if hasattr(est, name):
            out[name] = getattr(est, name)(X)
    if hasattr(est, "sample"):
        out["sample"] = est.sample(7)
    return out


def _inference_data(est: Any) -> Any:
    if not hasattr(est, "to_inference_data"):
        return None
    torch.manual_seed(0)  # the mean-field SVI posterior is sampled from torch's global generator
    try:
        return est.to_inference_data()
    except ValueError:  # EM: no posterior
        return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_round_trip_is_identical(case, tmp_path):
    import xarray as xr

    X = case.data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = case.make().fit(X)
    path = tmp_path / "model.bc"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: every parameter is saved
        est.save(path)
        loaded = type(est).load(path)
    assert sorted(os.listdir(tmp_path)) == ["model.bc"]  # no temporary file left behind
    _assert_same(est.get_params(), loaded.get_params(), "params")
    for name in est._fitted_attributes():
        _assert_same(getattr(est, name), getattr(loaded, name), name)
    _assert_same(_outputs(est, X), _outputs(loaded, X), "outputs")
    idata, idata2 = _inference_data(est), _inference_data(loaded)
    assert (idata is None) == (idata2 is None)
    if idata is not None:
        assert idata.groups() == idata2.groups()
        for group in idata.groups():
            xr.testing.assert_equal(idata[group], idata2[group])


def test_float64_fits_come_back_float64(tmp_path):
    X = _images()
    est = bc.DTIGMM(K, dtype="float64", **_DTI).fit(X)
    est.save(tmp_path / "m.bc")
    loaded = bc.DTIGMM.load(tmp_path / "m.bc")
    assert {p.dtype for p in loaded._net.parameters()} == {torch.float64}
    assert loaded.prototypes_.dtype == np.float64 and loaded.predict_proba(X).dtype == np.float64


def test_nuts_keeps_its_posterior(tmp_path):
    X = _blobs(30)
    est = bc.GaussianMixture(K, covariance_type="spherical", random_state=0, **_NUTS).fit(X)
    est.save(tmp_path / "m.bc")
    loaded = bc.GaussianMixture.load(tmp_path / "m.bc")
    _assert_same(est.posterior_samples_, loaded.posterior_samples_, "posterior_samples_")
    assert loaded.to_inference_data().posterior["means"].shape == (1, 4, K, 3)


# ------------------------------------------------------------------------------------------ bad files
@pytest.fixture(scope="module")
def gmm() -> bc.GaussianMixture:
    return bc.GaussianMixture(K, max_iter=10, random_state=0).fit(_blobs())


@pytest.fixture
def saved(gmm, tmp_path) -> Path:
    path = tmp_path / "gmm.bc"
    gmm.save(path)
    return path


def _rewrite(path: Path, edit: Callable[[dict], Any]) -> None:
    """Apply ``edit`` to the raw (encoded) content of a model file and write it back."""
    blob = torch.load(path, weights_only=True)
    edit(blob)
    torch.save(blob, path)


class _RunsCode:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_file_crafted_to_run_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    # the payload does run code when unpickled the unsafe way
    pickle.loads(pickle.dumps(_RunsCode(marker)))
    assert marker.exists()
    marker.unlink()
    as_torch, as_pickle = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"format": _persist.FORMAT, "version": 1, "x": _RunsCode(marker)}, as_torch)
    as_pickle.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(ValueError, match=r"evil\.pt was refused: it holds Python objects .* could run code"):
        bc.GaussianMixture.load(as_torch)
    with pytest.raises(ValueError, match=r"evil\.pkl is not a bayesclust model file, or it is truncated"):
        bc.GaussianMixture.load(as_pickle)
    assert not marker.exists()


def test_old_unsafe_format_is_refused(gmm, tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"class": "bayesclust.GaussianMixture", "params": {}, "fitted": {"means_": gmm.means_}}, path)
    with pytest.raises(ValueError, match=r"old\.pt was refused: .*older bayesclust"):
        bc.GaussianMixture.load(path)


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"gmm\.bc is not a bayesclust model file, or it is truncated"):
        bc.GaussianMixture.load(saved)


def test_corrupt_archive_member(saved):
    data = bytearray(saved.read_bytes())
    start = data.find(b"PK\x03\x04", 100)  # the second member: damage its bytes, keep the directory
    data[start + 40 : start + 200] = os.urandom(160)
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"gmm\.bc (is truncated or corrupt|was refused|is corrupt)"):
        bc.GaussianMixture.load(saved)


def test_random_bytes_and_empty_file(tmp_path):
    path = tmp_path / "noise.bc"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"noise\.bc is not a bayesclust model file"):
        bc.GaussianMixture.load(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"noise\.bc is empty"):
        bc.GaussianMixture.load(path)


def test_other_torch_files(tmp_path):
    for i, obj in enumerate(({"weights": torch.ones(3)}, torch.zeros(2), [1, 2])):
        path = tmp_path / f"other{i}.pt"
        torch.save(obj, path)
        with pytest.raises(ValueError, match=rf"other{i}\.pt is not a bayesclust model file: a torch file"):
            bc.GaussianMixture.load(path)


def test_wrong_version(saved):
    _rewrite(saved, lambda b: b.update(version=99))
    with pytest.raises(ValueError, match=r"gmm\.bc has model file format version 99; .* reads version 1 "
                                         r"\(the file was written by a newer bayesclust"):
        bc.GaussianMixture.load(saved)
    _rewrite(saved, lambda b: b.update(version="1"))
    with pytest.raises(ValueError, match=r"gmm\.bc has model file format version '1'"):
        bc.GaussianMixture.load(saved)


def test_missing_parts_fail_at_load(saved):
    _rewrite(saved, lambda b: b.pop("fitted"))
    with pytest.raises(ValueError, match=r"gmm\.bc is incomplete: it lacks the part\(s\) \['fitted'\]"):
        bc.GaussianMixture.load(saved)


@pytest.mark.parametrize("attr", ["means_", "n_features_in_", "shift_"])
def test_missing_fitted_attribute_fails_at_load(saved, attr):
    _rewrite(saved, lambda b: b["fitted"].pop(attr))
    with pytest.raises(ValueError, match=rf"gmm\.bc is incomplete .*lacks the fitted attribute.*{attr}"):
        bc.GaussianMixture.load(saved)


@pytest.mark.parametrize(
    ("make", "data", "edit", "message"),
    [
        (lambda: bc.GaussianMixture(K, covariance_type="spherical", random_state=0, **_NUTS),
         lambda: _blobs(30), lambda b: b["extra"].pop("nuts"), r"lacks \['nuts'\] in its extra state"),
        (lambda: bc.DTIKMeans(K, **_DTI), _images, lambda b: b["extra"].pop("net"), r"lacks \['net'\]"),
        (lambda: bc.EntropyClustering(K, **_ENT), _blobs, lambda b: b["extra"]["module"].popitem(),
         r"EntropyClustering: .*Missing key"),
        (lambda: bc.DPGMM(inference="deep", max_iter=2, hidden=8, random_state=0), _blobs,
         lambda b: b["fitted"].pop("net_state_"), r"lacks the fitted attribute\(s\) \['net_state_'\]"),
    ],
    ids=["gmm-nuts", "dti", "entropy", "dpgmm-deep"],
)
def test_missing_route_parts_fail_at_load(make, data, edit, message, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = make().fit(data())
    path = tmp_path / "m.bc"
    est.save(path)
    _rewrite(path, edit)
    with pytest.raises(ValueError, match=r"(?s)m\.bc is incomplete or does not match .*" + message):
        type(est).load(path)


def test_malformed_content(saved):
    bad = {_persist.TAG: "ndarray", "dtype": "<f8", "data": "x"}
    _rewrite(saved, lambda b: b["fitted"].update(means_=bad))
    with pytest.raises(ValueError, match=r"gmm\.bc is corrupt: fitted\['means_'\] holds a malformed"):
        bc.GaussianMixture.load(saved)
    bad = {_persist.TAG: "ndarray", "dtype": "|O", "data": torch.zeros(2)}
    _rewrite(saved, lambda b: b["fitted"].update(means_=bad))
    with pytest.raises(ValueError, match=r"gmm\.bc is corrupt: .*dtype '\|O' is not one a model file holds"):
        bc.GaussianMixture.load(saved)
    _rewrite(saved, lambda b: b["fitted"].update(means_=np.zeros(1).tolist(), __class__=1))
    with pytest.raises(ValueError, match=r"gmm\.bc is corrupt: \['__class__'\] are not fitted attribute"):
        bc.GaussianMixture.load(saved)
    _rewrite(saved, lambda b: b.update(fitted=[1]))
    with pytest.raises(ValueError, match=r"gmm\.bc is corrupt: its 'fitted' part is a list, not a dict"):
        bc.GaussianMixture.load(saved)


def test_foreign_parameter(saved):
    _rewrite(saved, lambda b: b["params"].update(bogus=1))
    with pytest.raises(ValueError, match=r"gmm\.bc holds parameter\(s\) \['bogus'\] that GaussianMixture"):
        bc.GaussianMixture.load(saved)


def test_class_mismatch_and_bad_load_parameter(saved):
    with pytest.raises(TypeError, match=r"gmm\.bc holds a .*GaussianMixture, not a DPGMM"):
        bc.DPGMM.load(saved)
    with pytest.raises(ValueError, match=r"Invalid parameter\(s\) \['bogus'\] for GaussianMixture.load"):
        bc.GaussianMixture.load(saved, bogus=1)


def test_missing_file_and_missing_folder(gmm, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No model file at .*absent\.bc"):
        bc.GaussianMixture.load(tmp_path / "absent.bc")
    target = tmp_path / "no_such_dir" / "m.bc"
    with pytest.raises(FileNotFoundError, match=r"the folder .*no_such_dir does not exist"):
        gmm.save(target)
    assert not (tmp_path / "no_such_dir").exists()


# ------------------------------------------------------------------------------------------ saving
def test_failed_save_leaves_nothing_half_written(gmm, tmp_path, monkeypatch):
    path = tmp_path / "m.bc"
    gmm.save(path)
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(_persist.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        gmm.save(path)
    with pytest.raises(OSError, match="disk full"):
        gmm.save(tmp_path / "new.bc")
    assert sorted(os.listdir(tmp_path)) == ["m.bc"] and path.read_bytes() == before


def test_unsavable_fitted_attribute(gmm, tmp_path):
    est = bc.GaussianMixture(K, max_iter=5, random_state=0).fit(_blobs())
    est.custom_ = object()
    with pytest.raises(ValueError, match=r"Cannot save GaussianMixture to .*m\.bc: fitted attribute"
                                         r"\['custom_'\] holds a object, which a model file cannot store"):
        est.save(tmp_path / "m.bc")
    assert os.listdir(tmp_path) == []


def test_callbacks_are_not_saved(tmp_path):
    est = bc.GaussianMixture(K, max_iter=5, random_state=0, callbacks=[lambda *a, **k: None]).fit(_blobs())
    with pytest.warns(UserWarning, match=r"parameter 'callbacks' is not saved .*stores callbacks=None"):
        est.save(tmp_path / "m.bc")
    loaded = bc.GaussianMixture.load(tmp_path / "m.bc")
    assert loaded.callbacks is None
    np.testing.assert_array_equal(loaded.predict_proba(_blobs()), est.predict_proba(_blobs()))


def test_user_head_module(tmp_path):
    def head() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, K))

    X = _blobs()
    est = bc.EntropyClustering(K, head=head(), **_ENT).fit(X)
    path = tmp_path / "m.bc"
    with pytest.warns(UserWarning, match=r"head=<Sequential>.*load\(path, head=module\)"):
        est.save(path)
    with pytest.raises(ValueError, match=r"m\.bc was fitted with a user-given nn.Module as 'head'.*"
                                         r"EntropyClustering.load\(path, head=module\)"):
        bc.EntropyClustering.load(path)
    loaded = bc.EntropyClustering.load(path, head=head())
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    wrong = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, K))
    with pytest.raises(ValueError, match=r"(?s)m\.bc is incomplete or does not match .*size mismatch"):
        bc.EntropyClustering.load(path, head=wrong)


# ------------------------------------------------------------------------------------------ encoding
def test_encode_decode_keeps_types_and_dtypes(tmp_path):
    value = {
        "arrays": [(np.arange(6) % 2).astype(dt).reshape(2, 3) for dt in ("f2", "f4", "f8", "i1", "u1", "?")],
        "big_endian": np.arange(4, dtype=">f8"),
        "complex": np.array([1 + 2j], dtype=np.complex64),
        "zero_d": np.array(3.5),
        "empty": np.zeros((0, 2)),
        "strings": np.array([["a", "bc"], ["d", "e"]]),
        "scalars": [np.float32(1.5), np.int64(3), np.bool_(True), 1, 2.5, "s", None, True],
        "int_keys": {1: 0.5, 2: 0.25},
        "tuple_keys": {(1, "a"): [1]},
        "tagged_key": {_persist.TAG: "x"},
        "tuple": (1, (2, 3), np.ones(2)),
        "tensors": {"f64": torch.arange(3, dtype=torch.float64), "view": torch.arange(10)[2:4]},
        "device": torch.device("cpu"),
        "dtype": torch.float16,
    }
    _persist.write_model(tmp_path / "v.bc", "x.Y", {"p": value}, {}, {})
    back = _persist.read_model(tmp_path / "v.bc")["params"]["p"]
    _assert_same(value, back, "value")
    assert back["big_endian"].dtype.str == ">f8" and back["arrays"][0].flags.writeable


def test_unencodable_values():
    with pytest.raises(ValueError, match=r"x\[0\] holds a function, which a model file cannot store"):
        _persist.encode([_blobs], "x")
    with pytest.raises(ValueError, match=r"x is a numpy array of dtype object"):
        _persist.encode(np.array([object()]), "x")
    with pytest.raises(ValueError, match=r"x has a frozenset key"):
        _persist.encode({frozenset(): 1}, "x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_loads_on_cpu(tmp_path):
    X = _blobs()
    est = bc.EntropyClustering(K, head="mlp", hidden=8, device="cuda", **_ENT).fit(X)
    est.save(tmp_path / "m.bc")
    on_gpu = bc.EntropyClustering.load(tmp_path / "m.bc")
    on_cpu = bc.EntropyClustering.load(tmp_path / "m.bc", device="cpu")
    assert next(on_gpu.module_.parameters()).is_cuda and not next(on_cpu.module_.parameters()).is_cuda
    np.testing.assert_allclose(on_cpu.predict_proba(X), est.predict_proba(X), atol=1e-5)
    np.testing.assert_array_equal(on_gpu.predict_proba(X), est.predict_proba(X))
