"""bc.compare: rows per model x seed, mean +- std, agreement, exports, determinism, input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bayesclust as bc


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.4, (40, 2)) for c in ([0, 0], [4, 0], [0, 4])])
    return X, np.repeat([0, 1, 2], 40)


@pytest.fixture(scope="module")
def comp(blobs):
    X, y = blobs
    head = bc.EntropyClustering(3, head="linear", max_iter=15)
    return bc.compare(
        ["gmm", bc.DPGMM(max_iter=30), head], X, y, seeds=(0, 1), names=["gmm", "dpgmm", "head"]
    )


def test_rows_summary_and_agreement(comp):
    assert [r["model"] for r in comp.rows] == ["gmm", "gmm", "dpgmm", "dpgmm", "head", "head"]
    row = comp.rows[0]
    for key in ("acc", "nmi", "ari", "k", "score", "score_kind", "fit_time_s", "peak_mem_mb", "seed"):
        assert key in row
    assert comp.rows[0]["score_kind"] == "mean log-likelihood"
    assert comp.rows[-1]["score_kind"] == "mutual information"
    summ = {d["model"]: d for d in comp.summary()}
    assert summ["gmm"]["acc_mean"] == pytest.approx(1.0) and summ["gmm"]["n_seeds"] == 2
    assert summ["dpgmm"]["k_mean"] == pytest.approx(3.0)
    assert comp.agreement.shape == (3, 3)
    assert np.allclose(np.diag(comp.agreement), 1.0)
    assert comp.agreement[0, 1] == pytest.approx(1.0)
    assert comp.labels["gmm"].shape == (2, 120)
    assert comp.best("ari") in ("gmm", "dpgmm")


def test_exports(comp, tmp_path):
    md = comp.to_markdown()
    assert md.startswith("| model | acc | nmi | ari | k |") and "±" in md and "Pairwise agreement" in md
    html = comp.to_html()
    assert "<table" in html and "<th>dpgmm</th>" in html
    data = json.loads(comp.to_json(tmp_path / "c.json"))
    assert data["names"] == ["gmm", "dpgmm", "head"] and len(data["rows"]) == 6
    assert json.loads((tmp_path / "c.json").read_text()) == data
    paths = comp.figures(tmp_path)
    names = {p.name for p in paths}
    assert {"metrics.png", "agreement.png", "decision_regions.png", "confusion_gmm.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)


def test_deterministic_for_fixed_seeds(blobs):
    X, y = blobs
    a = bc.compare(["gmm", "entropy-linear"], X, y, seeds=(3,))
    b = bc.compare(["gmm", "entropy-linear"], X, y, seeds=(3,))
    for n in a.names:
        assert np.array_equal(a.labels[n], b.labels[n])
    assert [r["score"] for r in a.rows] == [r["score"] for r in b.rows]


def test_without_labels_and_configured_instance_untouched(blobs):
    X, _ = blobs
    gmm = bc.GaussianMixture(3, random_state=123)
    c = bc.compare({"mine": gmm}, X)
    assert "acc" not in c.rows[0] and c.columns[0] == "k"
    assert gmm.get_params()["random_state"] == 123 and not hasattr(gmm, "labels_")
    assert c.models["mine"][0].random_state == 0
    with pytest.raises(ValueError, match="metric 'ari' not in this comparison"):
        c.best("ari")


def test_images_for_dti_and_rows_for_others():
    rng = np.random.default_rng(0)
    imgs = rng.random((24, 8, 8)).astype(np.float32)
    est = bc.DTIKMeans(2, transforms=("affine",), max_iter=3, batch_size=8)
    c = bc.compare([est, "gmm-diag"], imgs, n_components=2, names=["dti", "gmm"])
    assert c.labels["dti"].shape == (1, 24) and c.labels["gmm"].shape == (1, 24)
    with pytest.raises(ValueError, match="needs images"):
        bc.compare(["dti-kmeans"], rng.random((10, 4)))


def test_contrastive_short_names_take_images():
    from bayesclust.compare import SHORT_NAMES, make_estimator

    assert {"clot", "swav"} <= set(SHORT_NAMES)
    clot = make_estimator("clot", 4)
    assert isinstance(clot, bc.ContrastiveClustering) and clot.method == "clot" and clot.n_components == 4
    imgs = np.random.default_rng(0).random((24, 8, 8)).astype(np.float32)
    small = bc.ContrastiveClustering(2, "swav", max_iter=1, batch_size=8, embedding_dim=8, projection_dim=4,
                                     hidden=8, width=4)
    c = bc.compare([small, "gmm-diag"], imgs, n_components=2, names=["swav", "gmm"])
    assert c.labels["swav"].shape == (1, 24)
    with pytest.raises(ValueError, match="needs images"):
        bc.compare(["clot"], np.random.default_rng(0).random((10, 4)))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"estimators": ["nope"]}, ValueError, "unknown model 'nope'"),
        ({"estimators": []}, ValueError, "estimators is empty"),
        ({"estimators": [object()]}, TypeError, "not an estimator or short name"),
        ({"estimators": ["gmm", "gmm"]}, ValueError, "must be unique"),
        ({"estimators": ["gmm"], "names": ["a", "b"]}, ValueError, "names has 2 entries"),
        ({"estimators": ["gmm"], "seeds": ()}, ValueError, "seeds is empty"),
        ({"estimators": ["gmm"], "X": np.array([[np.nan, 1.0], [1.0, 2.0]])}, ValueError, "NaN"),
        ({"estimators": ["gmm"], "X": np.zeros(5)}, ValueError, "must be \\(N, D\\)"),
        ({"estimators": ["gmm"], "X": [["a", "b"], ["c", "d"]]}, TypeError, "numeric array"),
        ({"estimators": ["gmm"], "y": [0, 1]}, ValueError, "y"),
    ],
)
def test_bad_inputs(blobs, kwargs, exc, match):
    X, _ = blobs
    kwargs = {"X": X, **kwargs}
    with pytest.raises(exc, match=match):
        bc.compare(kwargs.pop("estimators"), kwargs.pop("X"), **kwargs)
