"""``partial_fit``: stepwise online EM for GaussianMixture, epochs on batches for EntropyClustering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bayesclust as bc
from bayesclust.inference import em


def _blobs(n: int = 1500, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 6
    X = np.concatenate([rng.normal(size=(n // 3, d)) + c for c in centres]).astype(np.float32)
    return X[rng.permutation(len(X))]


def test_stepwise_statistics_follow_cappe_moulines():
    G1, G2 = torch.ones(2, 3), torch.full((2, 3), 3.0)
    s = em.stepwise_statistics(None, G1, 10, 0, 0.6)
    torch.testing.assert_close(s, G1.double() / 10)
    s2 = em.stepwise_statistics(s, G2, 10, 1, 0.6)
    gamma = 3.0**-0.6
    torch.testing.assert_close(s2, (1 - gamma) * s + gamma * G2.double() / 10)


def test_gmm_partial_fit_over_chunks_reaches_full_batch_loglik():
    X = _blobs()
    full = bc.GaussianMixture(3, random_state=0).fit(X)
    online = bc.GaussianMixture(3, random_state=0)
    for _ in range(4):  # epochs over 5 chunks
        for start in range(0, len(X), 300):
            online.partial_fit(X[start : start + 300])
    assert online.n_iter_ == 20 and len(online.history_) == 20
    assert online.labels_.shape == (300,)
    assert online.score(X) == pytest.approx(full.score(X), abs=0.01)


def test_gmm_partial_fit_continues_a_fit_and_reads_chunk_sources(tmp_path):
    X = _blobs()
    model = bc.GaussianMixture(3, random_state=0).fit(X)
    before = model.score(X)
    np.save(tmp_path / "batch.npy", X[:500])
    model.partial_fit(np.load(tmp_path / "batch.npy", mmap_mode="r"))
    assert model.n_iter_ == 1
    assert model.score(X) == pytest.approx(before, abs=0.02)
    model.partial_fit([X[500:700], X[700:900]])
    assert model.n_iter_ == 2


def test_gmm_partial_fit_errors():
    X = _blobs()
    model = bc.GaussianMixture(3, random_state=0).partial_fit(X[:300])
    with pytest.raises(ValueError, match="expecting 3 features"):
        model.partial_fit(X[:300, :2])
    with pytest.raises(ValueError, match="step_decay"):
        bc.GaussianMixture(3, step_decay=0.4).partial_fit(X)
    with pytest.raises(AttributeError, match="no partial_fit here: partial_fit runs stepwise EM: use infer"):
        bc.GaussianMixture(3, inference="svi").partial_fit(X)
    assert not hasattr(bc.GaussianMixture(3, inference="nuts"), "partial_fit")


def test_entropy_partial_fit_trains_on_batches():
    from sklearn.metrics import adjusted_rand_score

    X = _blobs(900)
    model = bc.EntropyClustering(3, head="linear", batch_size=100, random_state=0)
    for _ in range(8):
        for start in range(0, len(X), 300):
            model.partial_fit(X[start : start + 300])
    assert model.n_iter_ == 24 and len(model.history_) == 24
    assert model.labels_.shape == (300,)
    full = bc.EntropyClustering(3, head="linear", batch_size=100, random_state=0, max_iter=24).fit(X)
    assert adjusted_rand_score(model.predict(X), full.predict(X)) > 0.95
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[:300, :2])
