"""Metrics against scikit-learn and a brute-force matching, on random labelings (hypothesis)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesclust.metrics import (
    accuracy,
    adjusted_rand_index,
    contingency_matrix,
    evaluate,
    hungarian_mapping,
    inferred_k,
    normalized_mutual_info,
)

sk = pytest.importorskip("sklearn.metrics")


@st.composite
def labelings(draw, max_n: int = 40, max_classes: int = 6, max_clusters: int = 6):
    """(y_true, y_pred) with independently drawn numbers of classes and clusters."""
    n = draw(st.integers(1, max_n))
    n_classes = draw(st.integers(1, max_classes))
    n_clusters = draw(st.integers(1, max_clusters))
    y_true = draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.integers(0, n_clusters - 1), min_size=n, max_size=n))
    offset = draw(st.sampled_from([0, 3, -2]))  # labels need not start at 0
    return np.array(y_true) + offset, np.array(y_pred) * 7


def brute_force_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best fraction matched over every one-to-one map of clusters to classes (unmatched = wrong)."""
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    slots = list(classes) + [None] * max(0, len(clusters) - len(classes))
    best = 0
    for perm in itertools.permutations(slots, len(clusters)):
        mapping = dict(zip(clusters, perm))
        best = max(best, sum(mapping[p] == t for t, p in zip(y_true, y_pred)))
    return best / len(y_true)


@settings(max_examples=120, deadline=None)
@given(labelings())
def test_against_sklearn_and_brute_force(pair):
    y_true, y_pred = pair
    assert accuracy(y_true, y_pred) == pytest.approx(brute_force_accuracy(y_true, y_pred), abs=1e-12)
    nmi = normalized_mutual_info(y_true, y_pred)
    assert abs(nmi - sk.normalized_mutual_info_score(y_true, y_pred)) <= 1e-10
    assert abs(adjusted_rand_index(y_true, y_pred) - sk.adjusted_rand_score(y_true, y_pred)) <= 1e-10
    np.testing.assert_array_equal(
        contingency_matrix(y_true, y_pred), sk.cluster.contingency_matrix(y_true, y_pred)
    )
    assert inferred_k(y_pred) == len(np.unique(y_pred))


@settings(max_examples=60, deadline=None)
@given(labelings())
def test_invariances(pair):
    y_true, y_pred = pair
    rng = np.random.default_rng(0)
    relabel = rng.permutation(100)
    y_perm = relabel[np.unique(y_pred, return_inverse=True)[1]]  # renaming clusters changes nothing
    for f in (accuracy, normalized_mutual_info, adjusted_rand_index):
        assert f(y_true, y_perm) == pytest.approx(f(y_true, y_pred), abs=1e-12)
    # NMI and ARI are symmetric; all three are 1 for a perfect labelling
    assert normalized_mutual_info(y_pred, y_true) == pytest.approx(normalized_mutual_info(y_true, y_pred))
    assert adjusted_rand_index(y_pred, y_true) == pytest.approx(adjusted_rand_index(y_true, y_pred))
    perfect = evaluate(y_true, relabel[np.unique(y_true, return_inverse=True)[1]])
    assert perfect == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0, "k": len(np.unique(y_true))})


def test_more_clusters_than_classes_counts_unmatched_as_errors():
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 1, 2, 2, 3]  # each class split in two
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    mapping = hungarian_mapping(y_true, y_pred)
    assert mapping == {0: 0, 2: 1}
    # fewer clusters than classes: one class is left unmatched
    assert accuracy([0, 1, 2, 2], [0, 0, 1, 1]) == pytest.approx(3 / 4)


def test_larger_random_against_sklearn():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 10, size=5000)
    y_pred = np.where(rng.random(5000) < 0.7, y_true, rng.integers(0, 13, size=5000))
    r = evaluate(y_true, y_pred)
    assert abs(r["nmi"] - sk.normalized_mutual_info_score(y_true, y_pred)) <= 1e-10
    assert abs(r["ari"] - sk.adjusted_rand_score(y_true, y_pred)) <= 1e-10
    assert r["k"] == 13
    # Hungarian optimum vs an independent LP-free check: no single swap of two matches improves it
    c = sk.cluster.contingency_matrix(y_true, y_pred)
    m = hungarian_mapping(y_true, y_pred)
    assert r["acc"] == pytest.approx(sum(c[i, j] for j, i in m.items()) / 5000)
    pairs = list(m.items())
    for (j1, i1), (j2, i2) in itertools.combinations(pairs, 2):
        assert c[i1, j1] + c[i2, j2] >= c[i2, j1] + c[i1, j2]


def test_input_types():
    y = [0, 1, 1, 2]
    for y_pred in (np.array(["a", "b", "b", "c"]), torch.tensor([5, 3, 3, 1]), (1.0, 2.0, 2.0, 3.0)):
        assert evaluate(y, y_pred) == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0, "k": 3})


def test_label_errors():
    with pytest.raises(ValueError, match=r"y_true must be 1-D, got shape \(2, 2\)"):
        accuracy([[0, 1], [1, 0]], [0, 1, 1, 0])
    with pytest.raises(ValueError, match=r"y_pred must be 1-D, got shape \(\)"):
        normalized_mutual_info([0], 0)
    with pytest.raises(ValueError, match="y_true is empty; pass at least one label"):
        adjusted_rand_index([], [])
    msg = "y_pred has 2 labels but there are 3 samples; pass one label per sample"
    with pytest.raises(ValueError, match=msg):
        evaluate([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="y_pred contains NaN or infinite labels"):
        accuracy([0, 1], [0.0, np.nan])
    with pytest.raises(ValueError, match="y_true contains NaN or infinite labels"):
        contingency_matrix([np.inf, 1.0], [0, 1])
    with pytest.raises(ValueError, match="y_pred must be 1-D"):
        inferred_k(np.zeros((3, 1)))
