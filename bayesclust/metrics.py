"""Clustering metrics: ACC (Hungarian matching), NMI, ARI, inferred K; :func:`evaluate`."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import comb

from ._validation import check_labels

__all__ = [
    "accuracy",
    "adjusted_rand_index",
    "contingency_matrix",
    "evaluate",
    "hungarian_mapping",
    "inferred_k",
    "normalized_mutual_info",
]


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = check_labels(y_true, name="y_true")
    p = check_labels(y_pred, name="y_pred", n_samples=t.shape[0])
    return t, p


def contingency_matrix(y_true: Any, y_pred: Any) -> np.ndarray:
    """Counts (n_classes, n_clusters) of samples with class i and cluster j."""
    t, p = _pair(y_true, y_pred)
    m = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


def hungarian_mapping(y_true: Any, y_pred: Any) -> dict[int, int]:
    """Cluster -> class map maximising matched samples (one class per cluster at most).

    With more clusters than classes the unmatched clusters map to nothing and count as errors
    in :func:`accuracy` (the usual convention; a many-to-one map would reward over-splitting).
    """
    t, p = _pair(y_true, y_pred)
    c = contingency_matrix(t, p)
    rows, cols = linear_sum_assignment(-c)
    return {int(j): int(i) for i, j in zip(rows, cols)}


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Best one-to-one matching accuracy (Hungarian algorithm on the contingency table)."""
    c = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(-c)
    return float(c[rows, cols].sum() / c.sum())


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(y_true: Any, y_pred: Any) -> float:
    """NMI with the arithmetic-mean normaliser (scikit-learn's default)."""
    c = contingency_matrix(y_true, y_pred).astype(np.float64)
    n = c.sum()
    h_t, h_p = _entropy(c.sum(1)), _entropy(c.sum(0))
    if h_t == 0.0 and h_p == 0.0:
        return 1.0
    nz = c > 0
    outer = np.outer(c.sum(1), c.sum(0))
    mi = float((c[nz] / n * (np.log(c[nz] * n) - np.log(outer[nz]))).sum())
    mi = max(mi, 0.0)
    denom = 0.5 * (h_t + h_p)
    return float(min(1.0, mi / denom)) if denom > 0 else 0.0


def adjusted_rand_index(y_true: Any, y_pred: Any) -> float:
    """Hubert-Arabie adjusted Rand index."""
    c = contingency_matrix(y_true, y_pred)
    n = c.sum()
    sum_comb = comb(c, 2).sum()
    a = comb(c.sum(1), 2).sum()
    b = comb(c.sum(0), 2).sum()
    expected = a * b / comb(n, 2) if n > 1 else 0.0
    max_index = 0.5 * (a + b)
    if max_index == expected:
        return 1.0
    return float((sum_comb - expected) / (max_index - expected))


def inferred_k(y_pred: Any) -> int:
    """Number of distinct clusters actually used."""
    return int(np.unique(check_labels(y_pred, name="y_pred")).size)


def evaluate(y_true: Any, y_pred: Any) -> dict[str, float]:
    """``{"acc", "nmi", "ari", "k"}`` for a predicted labelling against the truth."""
    return {
        "acc": accuracy(y_true, y_pred),
        "nmi": normalized_mutual_info(y_true, y_pred),
        "ari": adjusted_rand_index(y_true, y_pred),
        "k": inferred_k(y_pred),
    }
