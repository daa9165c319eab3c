"""EntropyClustering on feature vectors: the input map, k-means initialisation, the neighbour view."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import bayesclust as bc
from bayesclust import losses as L
from bayesclust._frame import InputMap
from bayesclust.inference import kmeans
from bayesclust.inference.discriminative import TrainConfig, build_schedule, neighbor_loss
from bayesclust.inference.engine import Engine
from bayesclust.inference.neighbors import kth_neighbor_distance, nearest_neighbors
from bayesclust.metrics import accuracy
from bayesclust.models.heads import build_head, nearest_centroid_init

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n=240, seed=0, d=4, k=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 6
    y = rng.integers(0, k, n)
    return centres[y] + rng.normal(size=(n, d)), y


# ------------------------------------------------------------------ the input map
def test_standard_map_centres_features_and_keeps_the_geometry():
    X = torch.tensor(_blobs()[0] * [1.0, 10.0, 0.1, 3.0] + 50.0)
    imap = InputMap.fit("standard", X)
    xw = imap.apply(X, torch.float64)
    np.testing.assert_allclose(xw.mean(0), 0.0, atol=1e-12)
    assert float(xw.var(0, unbiased=False).mean()) == pytest.approx(1.0)
    # one scalar scale: pairwise distances are those of X divided by it
    np.testing.assert_allclose(torch.cdist(xw, xw), torch.cdist(X, X) / imap.frame.scale, atol=1e-6)


def test_unit_range_map_leaves_pixels_in_unit_range_exactly_unchanged():
    X = torch.rand(20, 7, 7, dtype=torch.float32)
    X[0, 0, 0], X[1, 1, 1] = 0.0, 1.0
    imap = InputMap.fit("unit_range", X)
    assert torch.equal(imap.apply(X, torch.float32), X)


def test_l2_map_gives_unit_rows_and_ignores_units():
    X = torch.tensor(_blobs()[0])
    a = InputMap.fit("l2", X).apply(X, torch.float64)
    b = InputMap.fit("l2", X * 1e-8 + 3.0).apply(X * 1e-8 + 3.0, torch.float64)
    np.testing.assert_allclose(a.norm(dim=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_unknown_input_map_is_refused():
    with pytest.raises(ValueError, match="unknown input map 'zscore'; choose 'standard'"):
        InputMap.fit("zscore", torch.zeros(3, 2))


# ------------------------------------------------------------------ neighbours
@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(5, 30), st.integers(1, 4)),
              elements=st.floats(-100, 100, allow_nan=False)), st.integers(1, 4))
def test_nearest_neighbors_match_brute_force(x, k):
    x = torch.tensor(x)
    dist, index = nearest_neighbors(x, k, chunk_size=7)
    full = torch.cdist(x, x)
    full.fill_diagonal_(float("inf"))
    ref = full.topk(k, dim=1, largest=False).values
    np.testing.assert_allclose(dist, ref, atol=1e-6 * (1 + float(x.abs().max())))
    # the returned indices are at the returned distances, never the row itself
    np.testing.assert_allclose(full.gather(1, index), ref, atol=1e-6 * (1 + float(x.abs().max())))
    assert not bool((index == torch.arange(len(x))[:, None]).any())
    np.testing.assert_allclose(kth_neighbor_distance(x, k, chunk_size=7), ref[:, -1],
                               atol=1e-6 * (1 + float(x.abs().max())))


def test_neighbor_loss_is_scans_consistency_by_hand():
    torch.manual_seed(0)
    x = torch.randn(6, 3)
    neighbors = nearest_neighbors(x, 1)[1]  # one neighbour each: the pick is determined
    module = torch.nn.Linear(3, 4)
    cfg = TrainConfig(loss="mi", weights=L.LossWeights(), aug_weight=0.7, augmentation="neighbors")
    engine = Engine(random_state=0, max_iter=1)
    build_schedule(engine, x, 4, cfg, neighbors=neighbors)  # builds the context without error
    from bayesclust.inference.discriminative import _Context

    ctx = _Context(x, 4, cfg, L.CLUSTERING_LOSSES["mi"], None, None, neighbors, engine.generator, False,
                   torch.float32, torch.device("cpu"))
    idx = torch.arange(6)
    z = module(x)
    got = neighbor_loss(module, z, idx, ctx)
    p, q = z.softmax(1), module(x[neighbors[:, 0]]).softmax(1)
    expected = 0.7 * -(p * q).sum(1).log().mean()
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    got.backward()  # the gradient reaches the head through both predictions
    assert module.weight.grad is not None and float(module.weight.grad.abs().sum()) > 0


def test_neighbor_loss_stays_finite_with_saturated_predictions():
    x = torch.tensor([[0.0], [1.0], [100.0], [101.0]])
    neighbors = torch.tensor([[1], [0], [3], [2]])
    module = torch.nn.Linear(1, 2)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1e4], [-1e4]]))
    cfg = TrainConfig(loss="mi", weights=L.LossWeights(), aug_weight=1.0, augmentation="neighbors")
    from bayesclust.inference.discriminative import _Context

    gen = torch.Generator().manual_seed(0)
    ctx = _Context(x, 2, cfg, L.CLUSTERING_LOSSES["mi"], None, None, neighbors, gen, False, torch.float32,
                   torch.device("cpu"))
    loss = neighbor_loss(module, module(x), torch.arange(4), ctx)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(module.weight.grad).all())


# ------------------------------------------------------------------ k-means initialisation
def test_nearest_centroid_head_is_the_isotropic_mixture_posterior():
    centres, t = torch.tensor([[0.0, 0.0], [4.0, 1.0], [-2.0, 5.0]]), 0.8
    head = nearest_centroid_init(build_head("linear", (2,), 3), centres, t)
    x = torch.randn(50, 2) * 3
    post = torch.softmax(-torch.cdist(x, centres) ** 2 / (2 * t), 1)
    np.testing.assert_allclose(head(x).softmax(1).detach(), post, atol=1e-5)


def test_nearest_centroid_init_refuses_other_heads():
    with pytest.raises(ValueError, match="init='kmeans' sets a linear head"):
        nearest_centroid_init(build_head("mlp", (2,), 3, hidden=8), torch.zeros(3, 2), 1.0)


def test_kmeans_init_alone_gives_the_kmeans_labels():
    X, _ = _blobs()
    m = bc.EntropyClustering(3, max_iter=1, learning_rate=1e-12, aug_weight=0.0, random_state=5).fit(X)
    xw = InputMap.fit("standard", torch.tensor(X)).apply(torch.tensor(X), torch.float32)
    gen = torch.Generator().manual_seed(5)
    centres, _ = kmeans.kmeans(xw, 3, gen)
    np.testing.assert_array_equal(m.labels_, kmeans.nearest_center(xw, centres).numpy())


def test_estimator_refuses_kmeans_init_for_a_non_linear_head():
    with pytest.raises(ValueError, match="init='kmeans' sets a linear head to the k-means nearest-centroid"):
        bc.EntropyClustering(3, head="mlp", init="kmeans").fit(_blobs()[0])


@pytest.mark.parametrize("params, match", [
    ({"preprocess": "zscore"}, "preprocess='zscore' is not supported; choose one of \\['auto', 'standard'"),
    ({"init": "pca"}, "init='pca' is not supported; choose one of \\['auto', 'kmeans', 'random'\\]"),
    ({"augmentation": "mixup"}, "augmentation='mixup' is not supported; choose one of \\['auto'"),
    ({"aug_weight": -1.0}, "aug_weight must be >= 0"),
    ({"n_neighbors": 0}, "n_neighbors must be"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
])
def test_new_parameters_are_validated(params, match):
    with pytest.raises(ValueError, match=match):
        bc.EntropyClustering(3, **params).fit(_blobs()[0])


def test_weight_decay_must_be_a_number_or_auto():
    with pytest.raises(TypeError, match="weight_decay must be a real number, got str \\('strong'\\)"):
        bc.EntropyClustering(3, weight_decay="strong").fit(_blobs()[0])


def test_auto_weight_decay_is_off_for_a_linear_head_on_rows_only():
    def decay(est, x):
        return est._optimizer(torch.nn.Linear(4, 3), x).param_groups[0]["weight_decay"]

    rows, images = torch.zeros(5, 4), torch.zeros(5, 1, 2, 2)
    assert decay(bc.EntropyClustering(3), rows) == 0.0
    assert decay(bc.EntropyClustering(3), images) == 1e-4
    assert decay(bc.EntropyClustering(3, head="mlp"), rows) == 1e-4
    assert decay(bc.EntropyClustering(3, weight_decay=0.5), rows) == 0.5


# ------------------------------------------------------------------ the defaults on features
UNITS = {"x 1e-8": lambda X: X * 1e-8, "x 1e8": lambda X: X * 1e8, "+ 1e8": lambda X: X + 1e8}
ROUTES = {
    "defaults": {},
    "mi-random": {"init": "random", "aug_weight": 0.0},
    "collision-mlp": {"head": "mlp", "loss": "collision", "hidden": 16},
    "sela": {"loss": "sela"},
    "l2": {"preprocess": "l2"},
}


@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_entropy_labels_do_not_depend_on_units(route, unit):
    X, _ = _blobs(120)
    kw = {"max_iter": 5, "random_state": 0, **ROUTES[route]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = bc.EntropyClustering(3, **kw).fit(X)
        b = bc.EntropyClustering(3, **kw).fit(UNITS[unit](X))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.predict(X), b.predict(UNITS[unit](X)))
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(UNITS[unit](X)), atol=1e-4)


def test_entropy_partial_fit_maps_later_batches_like_the_first():
    X, _ = _blobs(300)
    a, b = bc.EntropyClustering(3, random_state=0), bc.EntropyClustering(3, random_state=0)
    for part in np.array_split(X, 3):
        a.partial_fit(part)
        b.partial_fit(part * 1e-8)
    np.testing.assert_array_equal(a.predict(X), b.predict(X * 1e-8))


def test_defaults_at_least_match_kmeans_on_unequal_anisotropic_blobs():
    rng = np.random.default_rng(11)
    k, d = 5, 8
    sizes = rng.integers(60, 300, k)
    X = np.concatenate([rng.normal(size=d) * 3 + rng.normal(size=(s, d)) @ (rng.normal(size=(d, d)) * 0.4)
                        for s in sizes])
    y = np.repeat(np.arange(k), sizes)
    ours = accuracy(y, bc.EntropyClustering(k, random_state=0).fit(X).labels_)
    xw = InputMap.fit("standard", torch.tensor(X)).apply(torch.tensor(X), torch.float64)
    centres, _ = kmeans.kmeans(xw, k, torch.Generator().manual_seed(0))
    km = accuracy(y, kmeans.nearest_center(xw, centres).numpy())
    assert ours >= km - 1e-9, (ours, km)


def test_linear_margins_are_reported_in_the_users_units():
    X, _ = _blobs(150, d=2)
    m = bc.EntropyClustering(3, max_iter=5, random_state=0).fit(X * 100.0 + 7.0)
    out = bc.uncertainty.linear_margins(m, X * 100.0 + 7.0)
    np.testing.assert_array_equal(out["labels"], m.predict(X * 100.0 + 7.0))
    with pytest.raises(TypeError, match="preprocess='l2' makes them"):
        bc.uncertainty.linear_margins(bc.EntropyClustering(3, max_iter=2, preprocess="l2").fit(X), X)
