"""Contrastive and swapped-prediction losses, multi-crop views (the building blocks of CLOT / SwAV)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesclust import losses as L
from bayesclust.inference.sinkhorn import swav_codes
from bayesclust.models.views import ViewSpec, intensity_jitter, multi_crop, random_resized_crops


# ------------------------------------------------------------------ NT-Xent
def test_nt_xent_by_hand_on_two_pairs():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 2.0]])  # normalised: (1, 1)/sqrt2 and (0, 1)
    tau = 0.5
    e = torch.cat([z1, z2 / z2.norm(dim=1, keepdim=True)])
    s = (e @ e.T / tau).tolist()
    pos = {0: 2, 1: 3, 2: 0, 3: 1}
    expected = 0.0
    for i in range(4):
        denom = sum(math.exp(s[i][j]) for j in range(4) if j != i)
        expected += -math.log(math.exp(s[i][pos[i]]) / denom)
    assert float(L.nt_xent(z1, z2, tau)) == pytest.approx(expected / 4, rel=1e-6)


def test_nt_xent_is_lowest_when_pairs_agree():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    aligned = L.nt_xent(z, z + 0.01 * torch.randn(16, 8))
    shuffled = L.nt_xent(z, z[torch.randperm(16)])
    assert float(aligned) < float(shuffled)


@pytest.mark.parametrize("bad, match", [
    ((torch.zeros(3, 2), torch.zeros(4, 2), 0.5), "two \\(B, F\\) batches of the same shape"),
    ((torch.zeros(3, 2), torch.zeros(3, 2), 0.0), "temperature must be > 0"),
])
def test_nt_xent_refuses_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        L.nt_xent(*bad)


# ------------------------------------------------------------------ swapped prediction
def test_swapped_prediction_gradient_reaches_prototypes_and_backbone():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, 4)
    prototypes = torch.nn.Parameter(torch.randn(3, 4))
    x = torch.randn(10, 6)
    views = [x + 0.1 * torch.randn_like(x) for _ in range(4)]  # 2 global + 2 local
    logits = [L.prototype_logits(backbone(v), prototypes, 0.1) for v in views]
    codes = [swav_codes(z.detach(), 0.05) for z in logits[:2]]
    loss = L.multi_view_swapped_loss(logits, codes)
    loss.backward()
    assert float(prototypes.grad.abs().sum()) > 0 and float(backbone.weight.grad.abs().sum()) > 0
    # 2 coded views x 3 predicting views each = the mean of 6 cross-entropies
    terms = [L.cross_entropy(logits[t], codes[s]) for s in range(2) for t in range(4) if t != s]
    assert float(loss.detach()) == pytest.approx(float(torch.stack(terms).mean().detach()), rel=1e-6)


def test_two_view_swapped_loss_equals_swav_two_view_form():
    torch.manual_seed(1)
    z1, z2 = torch.randn(8, 3), torch.randn(8, 3)
    q1, q2 = torch.softmax(torch.randn(8, 3), 1), torch.softmax(torch.randn(8, 3), 1)
    a = L.multi_view_swapped_loss([z1, z2], [q1, q2])
    b = L.swapped_prediction_loss((z1, z2), (q1, q2))
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_swapped_loss_refuses_too_few_views():
    with pytest.raises(ValueError, match="needs >= 2 views and 1..1 coded views"):
        L.multi_view_swapped_loss([torch.zeros(2, 2)], [torch.zeros(2, 2)])


def test_prototype_logits_are_scaled_cosines():
    z, p = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(L.prototype_logits(z, p, 0.5), [[0.6 / 0.5, 0.8 / 0.5]], rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 10), st.integers(2, 6), st.floats(0.05, 0.5))
def test_swav_codes_have_equal_partition_marginals(per_cluster, k, eps):
    b = per_cluster * k
    torch.manual_seed(b * k)
    scores = torch.randn(b, k, dtype=torch.float64)
    errors = []
    for n_iter in (1, 3, 10, 30, 100, 300, 2000):
        q = swav_codes(scores, eps, n_iter=n_iter)
        np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-12)  # Sinkhorn ends on the row step
        errors.append(float((q.sum(0) - b / k).abs().sum()))
    # the columns' L1 violation never grows with more iterations, and the plan converges to B / K
    # per prototype (at eps = 0.05 a few hundred iterations can still leave it a few % off)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:])), errors
    np.testing.assert_allclose(q.sum(0), b / k, rtol=1e-2)


# ------------------------------------------------------------------ views
def test_multi_crop_gives_the_requested_views_and_sizes():
    x = torch.rand(5, 1, 28, 28)
    spec = ViewSpec(n_global=2, n_local=4, local_size=12)
    views = multi_crop(x, spec, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 1, 28, 28)] * 2 + [(5, 1, 12, 12)] * 4
    assert spec.sizes(28) == [28, 28, 12, 12, 12, 12]
    assert ViewSpec(n_local=1).sizes(224)[-1] == 96  # SwAV's 96 / 224 by default


def test_full_crop_without_jitter_is_the_image():
    x = torch.rand(3, 2, 9, 9)
    out = random_resized_crops(x, 9, (1.0, 1.0), (1.0, 1.0), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(out, x, atol=1e-5)
    flipped = random_resized_crops(x, 9, (1.0, 1.0), (1.0, 1.0), flip=True,
                                   generator=torch.Generator().manual_seed(3))
    per_image = [torch.allclose(f, i, atol=1e-5) or torch.allclose(f, i.flip(-1), atol=1e-5)
                 for f, i in zip(flipped, x, strict=True)]
    assert all(per_image)


def test_small_crops_zoom_into_part_of_the_image():
    x = torch.zeros(1, 1, 20, 20)
    x[..., :, 10:] = 1.0  # left half dark, right half bright
    gen = torch.Generator().manual_seed(0)
    crops = torch.cat([random_resized_crops(x, 8, (0.05, 0.1), generator=gen) for _ in range(30)])
    means = crops.mean((1, 2, 3))
    assert float(means.min()) < 0.1 and float(means.max()) > 0.9  # some crops see one half only


def test_intensity_jitter_keeps_the_range_of_factors():
    x = torch.rand(50, 1, 4, 4) + 1.0
    out = intensity_jitter(x, 0.2, torch.Generator().manual_seed(0))
    ratio = out.mean((1, 2, 3)) / x.mean((1, 2, 3))  # the contrast factor keeps each image's mean
    assert float(ratio.min()) >= 0.8 - 1e-6 and float(ratio.max()) <= 1.2 + 1e-6
    assert torch.equal(intensity_jitter(x, 0.0), x)


@pytest.mark.parametrize("kw, match", [
    ({"n_global": 0}, "n_global >= 1"),
    ({"local_scale": (0.5, 0.2)}, "local_scale must be a range 0 < low <= high <= 1"),
    ({"ratio": (0.0, 1.0)}, "ratio must be a range 0 < low <= high,"),
    ({"local_size": 0}, "local_size must be a positive number of pixels"),
    ({"jitter": 1.0}, "jitter must be in \\[0, 1\\)"),
])
def test_view_spec_refuses_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        ViewSpec(**kw)


def test_multi_crop_needs_image_batches():
    with pytest.raises(ValueError, match="multi_crop needs images \\(N, C, H, W\\)"):
        multi_crop(torch.zeros(4, 16), ViewSpec())


# ------------------------------------------------------------------ the estimator
def _glyphs(n=60, side=10, seed=0):
    rng = np.random.default_rng(seed)
    protos = np.zeros((3, side, side))
    protos[0, 1:-1, side // 2 - 1 : side // 2 + 1] = 1.0
    protos[1, side // 2 - 1 : side // 2 + 1, 1:-1] = 1.0
    protos[2, 2:-2, 2:-2] = 1.0
    y = rng.integers(0, 3, n)
    return protos[y] + 0.05 * rng.normal(size=(n, side, side)), y


SMALL = dict(max_iter=3, batch_size=30, embedding_dim=16, projection_dim=8, hidden=16, random_state=0)


@pytest.mark.parametrize("method", ["swav", "clot"])
def test_contrastive_clustering_fits_predicts_embeds_and_round_trips(method, tmp_path):
    import bayesclust as bc

    X, _ = _glyphs()
    est = bc.ContrastiveClustering(3, method, **SMALL).fit(X)
    assert est.labels_.shape == (60,) and est.n_components_ == 3 and len(est.history_) == 3
    assert np.isfinite(est.history_).all()
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    emb = est.transform_embedding(X)
    assert emb.shape == (60, 16) and np.isfinite(emb).all()
    path = tmp_path / "m.bc"
    est.save(path)
    back = bc.ContrastiveClustering.load(path)
    np.testing.assert_allclose(back.predict_proba(X), proba, atol=1e-6)
    np.testing.assert_allclose(back.transform_embedding(X), emb, atol=1e-5)


def test_contrastive_labels_do_not_depend_on_units():
    import bayesclust as bc

    X, _ = _glyphs(40)
    a = bc.ContrastiveClustering(3, "clot", **SMALL).fit(X)
    b = bc.ContrastiveClustering(3, "clot", **SMALL).fit(X * 1e-6 + 100.0)
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_swav_multi_crop_uses_the_local_views():
    import bayesclust as bc

    est = bc.ContrastiveClustering(3, "swav", n_local_views=3, local_size=8)
    spec = est._views(16)
    assert spec.sizes(16) == [16, 16, 8, 8, 8]
    assert bc.ContrastiveClustering(3, "clot")._views(16).n_local == 0
    assert bc.ContrastiveClustering(3, "swav")._views(16).sizes(16)[-1] == 8  # 3/7 of 16, at least 8


@pytest.mark.parametrize("kw, match", [
    ({"method": "simclr"}, "method='simclr' is not supported; choose one of \\['swav', 'clot'\\]"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"queue_length": -1}, "queue_length must be >= 0"),
    ({"jitter": 1.5}, "jitter must be in \\[0, 1\\)"),
    ({"pseudo_labels": "soft"}, "pseudo_labels='soft' is not supported; choose one of \\['ot', 'argmax'\\]"),
    ({"width": 0}, "width must be >= 1"),
])
def test_contrastive_clustering_refuses_bad_settings(kw, match):
    import bayesclust as bc

    with pytest.raises(ValueError, match=match):
        bc.ContrastiveClustering(3, **{**SMALL, **kw}).fit(_glyphs()[0])


def test_cnn_width_sets_the_backbone_channels_and_round_trips(tmp_path):
    import bayesclust as bc

    X, _ = _glyphs(30)
    est = bc.ContrastiveClustering(3, "clot", width=4, **{**SMALL, "max_iter": 1}).fit(X)
    convs = [m for m in est.module_.backbone if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 16]
    est.save(tmp_path / "m.bc")
    back = bc.ContrastiveClustering.load(tmp_path / "m.bc")
    np.testing.assert_allclose(back.predict_proba(X), est.predict_proba(X), atol=1e-6)


def test_contrastive_clustering_needs_images():
    import bayesclust as bc

    with pytest.raises(ValueError, match="X must have 3 or 4 dimensions, got 2"):
        bc.ContrastiveClustering(3, **SMALL).fit(np.zeros((20, 16)))


def test_clot_ablation_without_ot_trains_on_its_own_argmax():
    import bayesclust as bc
    from bayesclust.inference import contrastive as C

    X, _ = _glyphs(30)
    est = bc.ContrastiveClustering(3, "clot", pseudo_labels="argmax", **{**SMALL, "max_iter": 2}).fit(X)
    assert np.isfinite(est.history_).all()
    state = C.initial_state(est.module_, None)
    cfg = C.ContrastiveConfig("clot", est._views(10), pseudo_labels="argmax")
    x = torch.tensor(X, dtype=torch.float32)[:, None]
    C.clot_label_step(state, 0, x, cfg)
    np.testing.assert_array_equal(state["y"].numpy(), C.predict_scores(est.module_, x).argmax(1).numpy())
    cfg_ot = C.ContrastiveConfig("clot", est._views(10), sela_lambda=25.0)
    C.clot_label_step(state, 0, x, cfg_ot)  # equal partition (hard labels: the plan's row argmax)
    counts = np.bincount(state["y"].numpy(), minlength=3)
    assert np.abs(counts - 10).max() <= 2, counts


def test_learned_embedding_feeds_dpgmm():
    import bayesclust as bc

    X, _ = _glyphs(60)
    est = bc.ContrastiveClustering(3, "clot", **SMALL).fit(X)
    emb = est.transform_embedding(X)
    dp = bc.DPGMM(random_state=0, max_iter=10).fit(emb)
    assert dp.labels_.shape == (60,) and 1 <= dp.n_components_ <= 60
    np.testing.assert_array_equal(dp.predict(emb), dp.labels_)
