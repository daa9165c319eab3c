"""EntropyClustering: separation on small data, API conventions, images, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesclust.estimators.entropy import EntropyClustering
from bayesclust.metrics import accuracy, evaluate

# the settings these mechanism tests were written for: the head on X as given, PyTorch's
# initialisation, no neighbour view (the defaults for feature vectors: tests/test_feature_defaults.py)
LEGACY = {"preprocess": "none", "init": "random", "aug_weight": 0.0}


def _two_bands(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n)
    X = np.c_[rng.normal(0, 3, 2 * n), rng.normal(0, 0.3, 2 * n) + np.where(y == 0, -1.2, 1.2)]
    return (X - X.mean(0)) / X.std(0), y


def test_thesis_linear_example_beats_kmeans():
    """Two elongated parallel 2-D clusters (Fig. 3.1 of the seed): K-means cuts across the long
    axis; the linear softmax head trained on MI (with restarts, weight decay as the norm
    regulariser) separates them along the gap."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    n = 200
    y = np.repeat([0, 1], n)
    X = np.c_[rng.normal(0, 5, 2 * n), rng.normal(0, 0.3, 2 * n) + np.where(y == 0, -2.5, 2.5)]
    km = KMeans(2, n_init=10, random_state=0).fit_predict(X)
    m = EntropyClustering(
        2, loss="mi", n_init=10, max_iter=100, random_state=0, batch_size=None, learning_rate=0.05,
        weight_decay=1e-3,
        # the seed's setting: the head on X as given (its learning rate and weight decay are set for
        # these units), random initialisation, no neighbour view
        preprocess="none", init="random", aug_weight=0.0,
    )
    assert accuracy(y, km) < 0.8
    assert accuracy(y, m.fit_predict(X)) >= 0.95


@pytest.mark.parametrize("loss", ["mi", "rce"])
def test_linear_head_separates_parallel_bands(loss):
    X, y = _two_bands()
    m = EntropyClustering(
        2, loss=loss, max_iter=100, random_state=0, batch_size=None, learning_rate=0.1, weight_decay=1e-3
    )
    labels = m.fit_predict(X)
    assert accuracy(y, labels) >= 0.95
    assert np.array_equal(labels, m.predict(X)) and np.array_equal(labels, m.labels_)
    assert len(m.history_) == m.n_iter_ == 100
    assert m.history_[-1] < m.history_[0]
    assert m.score(X) > 0.6  # MI close to ln 2


def test_images_cnn_and_persistence(tmp_path):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(40, 8, 8, generator=g)
    X[:20, :4] += 1.0
    m = EntropyClustering(2, head="cnn", loss="collision", max_iter=2, batch_size=20, random_state=0)
    p = m.fit(X).predict_proba(X)
    assert p.shape == (40, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    m.save(tmp_path / "m.pt")
    m2 = EntropyClustering.load(tmp_path / "m.pt")
    assert np.allclose(m2.predict_proba(X), p, atol=1e-6)
    with pytest.raises(ValueError, match="as seen in fit|feature shape"):
        m.predict(torch.rand(5, 7, 7))


@pytest.mark.parametrize("loss", ["renyi", "sela", "swav", "ce"])
def test_every_loss_runs_and_is_deterministic(loss):
    X, _ = _two_bands(50)
    kw = dict(loss=loss, head="mlp", hidden=16, max_iter=2, batch_size=25, random_state=3, aug_weight=0.5)
    a = EntropyClustering(2, **kw).fit(X).predict_proba(X)
    b = EntropyClustering(2, **kw).fit(X).predict_proba(X)
    assert np.array_equal(a, b) and np.isfinite(a).all()


def test_errors():
    X, _ = _two_bands(10)
    with pytest.raises(ValueError, match="loss='kl' is not supported"):
        EntropyClustering(2, loss="kl").fit(X)
    with pytest.raises(ValueError, match="head='rnn' is not supported"):
        EntropyClustering(2, head="rnn").fit(X)
    with pytest.raises(ValueError, match="head='cnn' needs images"):
        EntropyClustering(2, head="cnn").fit(X)
    with pytest.raises(ValueError, match="at least 30 are needed"):
        EntropyClustering(30).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        EntropyClustering(2).fit(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="not fitted"):
        EntropyClustering(2).predict(X)


def test_warmup_runs_mi_before_self_labelling():
    X, _ = _two_bands(60)
    kw = dict(head="linear", max_iter=3, batch_size=30, random_state=1, learning_rate=0.05)
    mi = EntropyClustering(2, loss="mi", **kw).fit(X).predict_proba(X)
    only_warm = EntropyClustering(2, loss="collision", warmup=3, **kw).fit(X).predict_proba(X)
    started = EntropyClustering(2, loss="collision", warmup=1, **kw).fit(X).predict_proba(X)
    assert np.array_equal(mi, only_warm)  # the pseudo-label step never became due
    assert not np.allclose(mi, started)


def test_vat_view_is_adversarial_with_radius_eps():
    from bayesclust.models.heads import vat_view

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x = torch.randn(64, 5, generator=g)
    z = net(x)
    eps = torch.full((64,), 0.3)
    xa = vat_view(net, x, z, eps, generator=g)
    assert torch.allclose((xa - x).norm(dim=1), eps, atol=1e-5) and not xa.requires_grad

    def kl(v):
        p, q = z.log_softmax(1), net(v).log_softmax(1)
        return float((p.exp() * (p - q)).sum(1).mean().detach())

    unit = lambda: torch.nn.functional.normalize(torch.randn(64, 5, generator=g), dim=1)  # noqa: E731
    rand = [kl(x + 0.3 * unit()) for _ in range(40)]
    assert kl(xa) > max(rand)  # the power-iteration direction beats random ones of equal length
    X, _ = _two_bands(30)
    m = EntropyClustering(2, head="mlp", hidden=8, loss="collision", aug_weight=1.0, augmentation="vat",
                          max_iter=2, batch_size=20, random_state=0)
    assert np.isfinite(m.fit(X).predict_proba(X)).all()


def test_vat_plus_random_sums_both_views_on_images():
    """augmentation="vat+random": each batch adds the VAT KL and the random-affine KL."""
    import bayesclust.inference.discriminative as ent

    calls = {"vat": 0, "random": 0}
    orig_vat, orig_aug = ent.vat_view, ent.augment

    def spy_vat(*a, **kw):
        calls["vat"] += 1
        return orig_vat(*a, **kw)

    def spy_aug(x, *a, **kw):
        calls["random"] += 1
        assert x.ndim == 4  # images keep their shape, so the affine warp applies
        return orig_aug(x, *a, **kw)

    rng = np.random.default_rng(0)
    X = rng.random((40, 8, 8)).astype(np.float32)
    X[20:, :, :4] += 1.0  # two groups: bright left half or not
    ent.vat_view, ent.augment = spy_vat, spy_aug
    try:
        m = EntropyClustering(2, head="mlp", hidden=8, loss="mi", aug_weight=1.0,
                              augmentation="vat+random", vat_eps=0.5, vat_knn=3, max_iter=2,
                              batch_size=20, random_state=0).fit(X)
    finally:
        ent.vat_view, ent.augment = orig_vat, orig_aug
    assert calls == {"vat": 4, "random": 4}  # 2 epochs x 2 batches, one of each per batch
    assert np.isfinite(m.predict_proba(X)).all()


def test_new_parameter_errors():
    X, _ = _two_bands(10)
    with pytest.raises(ValueError, match="augmentation='mixup' is not supported"):
        EntropyClustering(2, augmentation="mixup").fit(X)
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        EntropyClustering(2, warmup=-1).fit(X)
    with pytest.raises(ValueError, match="vat_eps must be > 0"):
        EntropyClustering(2, vat_eps=0.0).fit(X)
    with pytest.raises(ValueError, match="vat_knn must be >= 1"):
        EntropyClustering(2, augmentation="vat", aug_weight=1.0, vat_knn=0).fit(X)
    with pytest.raises(TypeError, match="vat_knn must be an integer"):
        EntropyClustering(2, augmentation="vat", aug_weight=1.0, vat_knn=2.5).fit(X)
    with pytest.raises(ValueError, match="label_predictions='stale' is not supported"):
        EntropyClustering(2, loss="collision", label_predictions="stale").fit(X)


@pytest.mark.parametrize("loss", ["collision", "sela", "rce"])
def test_label_predictions_from_the_epoch(loss):
    """Pseudo-labels from the epoch's own batch predictions: without warm-up the first step still
    runs a fresh pass; "epoch" differs from "fresh" only through the (within-epoch) predictions it
    solves on, and clusters as well."""
    X, y = _two_bands(200)
    kw = dict(head="linear", loss=loss, max_iter=15, batch_size=50, random_state=0, learning_rate=0.05,
              lam=2.0, **LEGACY)
    for warmup in (0, 2):
        fresh = EntropyClustering(2, label_predictions="fresh", warmup=warmup, **kw).fit(X)
        epoch = EntropyClustering(2, label_predictions="epoch", warmup=warmup, **kw).fit(X)
        acc_fresh, acc_epoch = (evaluate(y, m.labels_)["acc"] for m in (fresh, epoch))
        assert acc_epoch >= acc_fresh - 0.05
        if warmup == 0:
            assert min(acc_fresh, acc_epoch) >= 0.95
        assert not np.allclose(fresh.predict_proba(X), epoch.predict_proba(X))


def test_kth_neighbor_distance_matches_brute_force():
    from bayesclust.inference.neighbors import kth_neighbor_distance

    rng = np.random.default_rng(0)
    X = rng.normal(size=(70, 3, 2))
    X[5] = X[6]  # a duplicate: its nearest neighbour is at distance 0
    flat = X.reshape(70, -1)
    d = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    for k in (1, 4):
        got = kth_neighbor_distance(torch.from_numpy(X), k, chunk_size=16).numpy()
        np.testing.assert_allclose(got, np.sort(d, 1)[:, k - 1], rtol=1e-9, atol=1e-6)
    assert kth_neighbor_distance(torch.from_numpy(X), 1)[5] < 1e-6
    with pytest.raises(ValueError, match="k=70 neighbours need at least 71 samples"):
        kth_neighbor_distance(torch.from_numpy(X), 70)


def test_vat_knn_radius_follows_local_density():
    # a dense and a sparse band: the per-sample radius (vat_eps x 3rd-neighbour distance) is what
    # vat_view receives, so it must be larger in the sparse band
    X, _ = _two_bands(40)
    X[40:] = X[40:] * 4.0
    seen = []
    import bayesclust.inference.discriminative as ent

    orig = ent.vat_view

    def spy(module, x, z, eps, **kw):
        seen.append(torch.as_tensor(eps).reshape(-1).clone())
        return orig(module, x, z, eps, **kw)

    ent.vat_view = spy
    try:
        m = EntropyClustering(2, head="mlp", hidden=8, loss="mi", aug_weight=1.0, augmentation="vat",
                              vat_eps=0.25, vat_knn=3, max_iter=1, batch_size=None, random_state=0,
                              preprocess="none")  # the radius in X's units
        m.fit(X)
    finally:
        ent.vat_view = orig
    from bayesclust.inference.neighbors import kth_neighbor_distance

    expect = 0.25 * kth_neighbor_distance(torch.as_tensor(X, dtype=torch.float32), 3)
    assert len(seen) == 1 and seen[0].shape == (80,)
    assert torch.allclose(torch.sort(seen[0]).values, torch.sort(expect).values)
    assert expect[40:].mean() > 2 * expect[:40].mean()


def test_vat_probes_leave_batchnorm_running_stats_alone():
    from bayesclust.models.heads import build_head, frozen_batchnorm_stats, vat_view

    g = torch.Generator().manual_seed(0)
    net = build_head("mlp", (6,), 3, hidden=8).train()
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    x = torch.randn(32, 6, generator=g)
    z = net(x)  # a clean pass updates the running statistics
    before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bn]
    view = vat_view(net, x, z, 0.5, generator=g)
    with frozen_batchnorm_stats(net):
        out = net(view)
    for m, (mean, var, count) in zip(bn, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert torch.equal(m.num_batches_tracked, count)
        assert m.momentum == 0.1  # restored
    # inside, training mode still normalises with the batch's own statistics
    assert torch.allclose(out, net(view), atol=1e-6)
    assert not torch.equal(bn[0].running_mean, before[0][0])  # and outside, updates resume


def test_screened_restarts_continue_the_highest_mi_restart():
    """n_init restarts trained init_epochs epochs; the highest-MI one is trained on to max_iter and
    equals a single fit from that restart's seed (restarts are deterministic given their seed)."""
    X, _ = _two_bands(60, seed=2)
    kw = dict(head="mlp", hidden=8, loss="collision", warmup=2, batch_size=40, learning_rate=0.05,
              aug_weight=0.5)
    screened_mi = [
        EntropyClustering(2, max_iter=2, random_state=10 + i, **kw).fit(X).score(X) for i in range(3)
    ]
    assert len(set(screened_mi)) == 3  # the restarts differ, so the choice is not a tie
    best = int(np.argmax(screened_mi))
    m = EntropyClustering(2, max_iter=5, n_init=3, init_epochs=2, random_state=10, **kw).fit(X)
    single = EntropyClustering(2, max_iter=5, random_state=10 + best, **kw).fit(X)
    assert m.n_iter_ == len(m.history_) == 5
    assert m.history_ == single.history_
    assert np.array_equal(m.predict_proba(X), single.predict_proba(X))
    # init_epochs >= max_iter: plain restarts, each trained to the end
    full = EntropyClustering(2, max_iter=5, n_init=3, random_state=10, **kw).fit(X)
    same = EntropyClustering(2, max_iter=5, n_init=3, init_epochs=9, random_state=10, **kw).fit(X)
    assert full.history_ == same.history_


def test_fairness_kinds():
    """kl_uniform = -H(mean) + ln K has the entropy fairness' gradients (identical fits); the
    zero-avoiding KL(u || mean) trains differently."""
    X, _ = _two_bands(60)
    kw = dict(loss="mi", head="mlp", hidden=8, max_iter=3, batch_size=30, random_state=1, learning_rate=0.05,
              lam=2.0)
    ent = EntropyClustering(2, fairness="entropy", **kw).fit(X)
    klu = EntropyClustering(2, fairness="kl_uniform", **kw).fit(X)
    klr = EntropyClustering(2, fairness="kl_reverse", **kw).fit(X)
    assert np.allclose(ent.predict_proba(X), klu.predict_proba(X), atol=1e-6)
    assert not np.allclose(ent.predict_proba(X), klr.predict_proba(X), atol=1e-3)
    with pytest.raises(ValueError, match="fairness='gini' is not supported"):
        EntropyClustering(2, fairness="gini").fit(X)
    with pytest.raises(ValueError, match="init_epochs must be >= 1"):
        EntropyClustering(2, n_init=2, init_epochs=0).fit(X)


def test_label_predictions_auto_switches_to_epoch_on_large_data(monkeypatch):
    """"auto" is "fresh" below EPOCH_PREDICTIONS_FROM rows and "epoch" from there on."""
    import bayesclust.inference.discriminative as ent

    X, _ = _two_bands(100)
    kw = dict(head="linear", loss="collision", max_iter=4, batch_size=50, random_state=0, learning_rate=0.05,
              warmup=1)
    fit = {mode: EntropyClustering(2, label_predictions=mode, **kw).fit(X).predict_proba(X)
           for mode in ("auto", "fresh", "epoch")}
    assert np.array_equal(fit["auto"], fit["fresh"]) and not np.allclose(fit["fresh"], fit["epoch"])
    monkeypatch.setattr(ent, "EPOCH_PREDICTIONS_FROM", len(X))
    auto_large = EntropyClustering(2, label_predictions="auto", **kw).fit(X).predict_proba(X)
    assert np.array_equal(auto_large, fit["epoch"])


def test_renamed_parameters_warn_and_fit_identically():
    """n_clusters, lr and alpha still work (FutureWarning naming the new parameter) and give the fit
    of n_components, learning_rate and renyi_order."""
    X, _ = _two_bands(40)
    kw = dict(loss="renyi", max_iter=3, batch_size=20, random_state=0)
    current = {"n_components": 2, "learning_rate": 0.05, "renyi_order": 3.0}
    new = EntropyClustering(**current, **kw).fit(X)
    for old, renamed in [("n_clusters", "n_components"), ("lr", "learning_rate"), ("alpha", "renyi_order")]:
        given = {k: v for k, v in current.items() if k != renamed}
        message = rf"EntropyClustering\({old}=\.\.\.\) is deprecated; use {renamed}=\.\.\. instead\."
        with pytest.warns(FutureWarning, match=message):
            m = EntropyClustering(**{old: current[renamed]}, **given, **kw)
        assert m.get_params()[renamed] == current[renamed]
        assert EntropyClustering().get_params()[old] == "deprecated"  # not given: no warning, no effect
        m.fit(X)
        assert m.history_ == new.history_ and np.array_equal(m.labels_, new.labels_)
        assert np.array_equal(m.predict_proba(X), new.predict_proba(X))
    with pytest.warns(FutureWarning) as record:
        all_old = EntropyClustering(n_clusters=2, lr=0.05, alpha=3.0, **kw).fit(X)
    assert len([w for w in record if issubclass(w.category, FutureWarning)]) == 3
    assert all_old.history_ == new.history_
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_cluster'"):
        EntropyClustering(n_cluster=2)


def test_fitted_attributes_and_sklearn_clone():
    from sklearn.base import clone

    X, _ = _two_bands(30)
    m = EntropyClustering(2, loss="collision", max_iter=2, warmup=1, batch_size=20, random_state=0)
    m.fit(X)
    assert m.n_components_ == 2 and m.labels_.shape == (60,) and m.n_iter_ == 2 and not m.converged_
    assert isinstance(m.module_, torch.nn.Module) and m.n_features_in_ == 2
    p = m.predict_proba(X)
    assert np.array_equal(p.argmax(1), m.predict(X)) and np.array_equal(m.predict(X), m.labels_)
    c = clone(m)
    assert c.get_params() == m.get_params() and not hasattr(c, "module_")


def test_prediction_buffer_is_freed_after_each_stage():
    """The (N, K) prediction buffer does not outlive a stage (restarts do not hold one each)."""
    X, _ = _two_bands(40)
    kept = []
    m = EntropyClustering(2, loss="collision", label_predictions="epoch", warmup=1, max_iter=3, n_init=2,
                          init_epochs=1, batch_size=20, random_state=0)
    orig = m._after_stage

    def spy(run):
        had = run.state["probs"] is not None
        orig(run)
        kept.append((had, run.state["probs"]))

    m._after_stage = spy
    m.fit(X)
    assert [had for had, _ in kept] == [True, True, True]  # two screening stages, one continuation
    assert all(buf is None for _, buf in kept)


def test_a_registered_loss_trains_without_other_edits(monkeypatch):
    """A new loss is one CLUSTERING_LOSSES entry: here standard CE on the reverse-CE EM labels."""
    from bayesclust import losses as L
    from bayesclust.inference.discriminative import BATCH_CODES, LABEL_SOLVERS

    for name, spec in L.CLUSTERING_LOSSES.items():  # every solver named by the registry exists
        assert spec.pseudo_labels is None or spec.pseudo_labels in {*LABEL_SOLVERS, *BATCH_CODES}, name
    entry = L.ClusteringLoss(L.CLUSTERING_LOSSES["ce"].batch_loss, "em_reverse")
    monkeypatch.setitem(L.CLUSTERING_LOSSES, "ce_reverse", entry)
    X, y = _two_bands(100)
    kw = dict(max_iter=15, warmup=0, batch_size=50, random_state=0, learning_rate=0.05, lam=2.0, **LEGACY)
    m = EntropyClustering(2, loss="ce_reverse", **kw).fit(X)
    assert accuracy(y, m.labels_) >= 0.9 and len(m.history_) == 15
    ce = EntropyClustering(2, loss="ce", **kw).fit(X)
    assert m.history_ != ce.history_  # the same batch loss on other labels
    monkeypatch.setitem(L.CLUSTERING_LOSSES, "broken", L.ClusteringLoss(entry.batch_loss, "hungarian"))
    with pytest.raises(ValueError, match="pseudo_labels='hungarian'; known solvers are"):
        EntropyClustering(2, loss="broken", max_iter=1).fit(X)
