"""DTIKMeans / DTIGMM: synthetic transformed glyphs, reassignment, Pyro likelihood, API and errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bayesclust.estimators.dti import DTIGMM, DTIKMeans
from bayesclust.inference.dti_steps import reassign_clusters
from bayesclust.metrics import accuracy
from bayesclust.models.dti import DTINetwork, gmm_negative_log_likelihood


def _glyphs(n_per: int = 80, size: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three glyphs (cross, L, ring), each randomly shifted by up to 3 px and rotated by up to 25 deg."""
    base = torch.zeros(3, 1, size, size)
    m, a, b = size // 2, size // 2 - 5, size // 2 + 5
    base[0, 0, m - 1 : m + 1, a:b] = 1
    base[0, 0, a:b, m - 1 : m + 1] = 1
    base[1, 0, a:b, a : a + 2] = 1
    base[1, 0, b - 2 : b, a:b] = 1
    base[2, 0, a:b, a:b] = 1
    base[2, 0, a + 2 : b - 2, a + 2 : b - 2] = 0
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per)
    ang = (torch.rand(y.numel(), generator=gen) * 2 - 1) * math.radians(25)
    shift = (torch.rand(y.numel(), 2, generator=gen) * 2 - 1) * 3 * 2 / size
    theta = torch.stack(
        [
            torch.stack([ang.cos(), -ang.sin(), shift[:, 0]], 1),
            torch.stack([ang.sin(), ang.cos(), shift[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, (y.numel(), 1, size, size), align_corners=False)
    X = F.grid_sample(base[y], grid, align_corners=False)
    return X[:, 0].numpy(), y.numpy()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def glyphs():
    return _glyphs()


def test_dti_kmeans_beats_pixel_kmeans_on_transformed_glyphs(glyphs):
    from sklearn.cluster import KMeans

    X, y = glyphs
    pixel = KMeans(3, n_init=10, random_state=0).fit_predict(X.reshape(len(X), -1))
    # a single run falls into a two-glyphs-merged optimum now and then (ACC ~0.5-0.7): keep the
    # lowest-loss of three runs, as the paper does
    model = DTIKMeans(
        3, transforms=("affine",), curriculum=[40], max_iter=240, batch_size=32, learning_rate=3e-3,
        encoder_width=8, feature_dim=32, head_hidden=32, n_init=3, random_state=0,
    ).fit(X)
    acc_dti, acc_pix = accuracy(y, model.labels_), accuracy(y, pixel)
    assert acc_dti > acc_pix, (acc_dti, acc_pix)
    assert acc_dti >= 0.9, acc_dti
    assert model.prototypes_.shape == (3, 20, 20) and model.n_iter_ == 240
    assert model.converged_ and model.n_components_ == 3 and len(model.init_losses_) == 3
    # the aligned reconstructions explain the data better than the raw prototypes do
    err_aligned = model.transform(X).min(1).mean()
    err_raw = ((X[:, None] - model.prototypes_[None]) ** 2).reshape(len(X), 3, -1).mean(-1).min(1).mean()
    assert err_aligned < err_raw


def test_fit_predict_matches_and_save_load_roundtrip(glyphs, tmp_path):
    X, _ = glyphs
    m = DTIKMeans(3, transforms=("affine", "morpho"), max_iter=20, batch_size=32, encoder_width=8,
                  feature_dim=16, head_hidden=8, device="cpu", random_state=3)
    labels = m.fit_predict(X)
    np.testing.assert_array_equal(labels, m.labels_)
    assert m.curriculum_ == [2, 4] and len(m.history_) == 20  # stages of 10% of the run
    rec = m.reconstruct(X[:5])
    assert rec.shape == (5, 1, 20, 20) and m.reconstruct(X[:5], "all").shape == (5, 3, 1, 20, 20)
    m.save(tmp_path / "dti.pt")
    m2 = DTIKMeans.load(tmp_path / "dti.pt")
    np.testing.assert_allclose(m2.transform(X[:30]), m.transform(X[:30]), atol=1e-6)
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))


def test_lr_is_a_deprecated_alias_of_learning_rate():
    message = r"DTIKMeans\(lr=\.\.\.\) is deprecated; use learning_rate=\.\.\. instead"
    with pytest.warns(FutureWarning, match=message):
        m = DTIKMeans(2, lr=0.05)
    assert m.learning_rate == 0.05
    assert DTIKMeans(2).get_params()["lr"] == "deprecated"  # the old name stays a parameter until removed
    assert DTIGMM().device == "cpu" and DTIKMeans().get_params()["learning_rate"] == 1e-3


def test_float64_fit_round_trips(glyphs, tmp_path):
    X, _ = glyphs
    m = DTIGMM(3, transforms=("affine",), max_iter=10, batch_size=32, encoder_width=8, feature_dim=8,
               head_hidden=8, dtype="float64", random_state=1).fit(X[:60].astype(np.float64))
    assert next(m._net.parameters()).dtype == torch.float64
    m.save(tmp_path / "g.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated alias in a freshly saved file
        m2 = DTIGMM.load(tmp_path / "g.pt")
    assert next(m2._net.parameters()).dtype == torch.float64
    np.testing.assert_array_equal(m2.score_samples(X[:30]), m.score_samples(X[:30]))
    np.testing.assert_array_equal(m2.prototypes_, m.prototypes_)
    assert m2.loss_ == m.loss_ and m2.init_losses_ == m.init_losses_ and m2.converged_


def test_converged_means_the_schedule_ran_to_its_end(glyphs):
    X, _ = glyphs
    kw = dict(transforms="identity", max_iter=8, encoder_width=8, feature_dim=8, head_hidden=8,
              random_state=0)
    assert DTIKMeans(3, **kw).fit(X[:60]).converged_
    stopped = DTIKMeans(3, callbacks=[lambda engine, it, obj, state: it == 3], **kw).fit(X[:60])
    assert not stopped.converged_ and stopped.n_iter_ == 4


def test_same_seed_same_result(glyphs):
    X, _ = glyphs
    kw = dict(transforms=("affine",), max_iter=10, batch_size=32, encoder_width=8, feature_dim=16,
              head_hidden=8, device="cpu", random_state=5)
    a, b = DTIKMeans(3, **kw).fit(X[:90]), DTIKMeans(3, **kw).fit(X[:90])
    np.testing.assert_array_equal(a.prototypes_, b.prototypes_)
    assert a.history_ == b.history_


def test_n_init_keeps_the_lowest_loss_run(glyphs):
    X, _ = glyphs
    kw = dict(transforms=("affine",), max_iter=15, batch_size=32, encoder_width=8, feature_dim=16,
              head_hidden=8, device="cpu")
    multi = DTIKMeans(3, n_init=3, random_state=7, **kw).fit(X[:90])
    assert len(multi.init_losses_) == 3 and multi.loss_ == min(multi.init_losses_)
    assert multi.loss_ == pytest.approx(-multi.score(X[:90]), rel=1e-5)
    # run i of n_init uses seed random_state + i: each single run reproduces one entry
    for i, loss in enumerate(multi.init_losses_):
        single = DTIKMeans(3, random_state=7 + i, **kw).fit(X[:90])
        assert single.loss_ == pytest.approx(loss, rel=1e-5)
    gmm = DTIGMM(3, n_init=2, random_state=0, **kw).fit(X[:90])
    assert gmm.loss_ == min(gmm.init_losses_)
    assert gmm.loss_ == pytest.approx(-gmm.score(X[:90]), rel=1e-5)


def _state(net: DTINetwork, counts):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.rand(4, 1, 8, 8)
    net.active[:] = True
    ((net.reconstruct(x)[0] - x.unsqueeze(1)) ** 2).mean().backward()
    opt.step()
    counts = torch.tensor(counts, dtype=torch.float64)
    return {"net": net, "optimizer": opt, "counts": counts, "n_reassigned": 0}


def test_reassignment_copies_largest_cluster_heads_and_adam_state():
    torch.manual_seed(0)
    net = DTINetwork(torch.rand(3, 1, 8, 8), ["affine", "morpho"], gmm=True, encoder_width=8, feature_dim=8)
    state = _state(net, [70.0, 28.0, 2.0])  # cluster 2 holds 2% < 0.2 / 3
    moved = reassign_clusters(state, 0.2 / 3, 0.01, torch.Generator().manual_seed(0))
    assert moved == [2]
    head = net.heads["affine"]
    torch.testing.assert_close(head.w1[2], head.w1[0])
    moments = state["optimizer"].state[head.w1]["exp_avg"]
    torch.testing.assert_close(moments[2], moments[0])
    diff = (net.prototypes[2] - net.prototypes[0]).detach().abs()
    assert 0 < float(diff.max()) < 0.1
    torch.testing.assert_close(net.mix_logits[2], net.mix_logits[0])
    assert reassign_clusters(_state(net, [40.0, 30.0, 30.0]), 0.2 / 3, 0.01, torch.Generator()) == []


def test_reassignment_fires_during_fit_on_a_starved_cluster(glyphs):
    X, _ = glyphs
    init = np.stack([X[0], X[100], np.full_like(X[0], 50.0)])  # the third prototype wins no image
    m = DTIKMeans(3, transforms="identity", init=init, max_iter=12, batch_size=60, reassign_every=4,
                  encoder_width=8, feature_dim=8, head_hidden=8, device="cpu", random_state=0).fit(X)
    assert m.n_reassigned_ >= 1
    assert float(np.abs(m.prototypes_[2]).max()) < 5  # no longer the far-away constant image


def test_gmm_pyro_likelihood_equals_closed_form():
    torch.manual_seed(1)
    net = DTINetwork(torch.rand(4, 1, 6, 6), ["affine", "tps"], gmm=True, encoder_width=8, feature_dim=8)
    net.active[:] = True
    with torch.no_grad():
        net.mix_logits.copy_(torch.randn(4))
        net.log_sigma.add_(0.3 * torch.randn_like(net.log_sigma))
    x = torch.rand(5, 1, 6, 6)
    means, var = net.reconstruct(x)
    closed = -torch.logsumexp(net.gmm_log_prob(x, (means, var)), 1).sum()
    pyro_nll = gmm_negative_log_likelihood(x, means, var, net.mix_logits)
    torch.testing.assert_close(pyro_nll, closed, rtol=1e-5, atol=1e-3)


def test_dti_gmm_fits_and_gives_probabilities(glyphs):
    X, y = glyphs
    g = DTIGMM(3, transforms=("affine",), curriculum=[30], max_iter=120, batch_size=32, learning_rate=3e-3,
               encoder_width=8, feature_dim=32, head_hidden=32, device="cpu", random_state=0).fit(X)
    proba = g.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), g.predict(X))
    assert g.weights_.shape == (3,) and g.sigmas_.shape == (3, 20, 20) and (g.sigmas_ >= 0.05).all()
    assert np.isfinite(g.score(X)) and g.score_samples(X).shape == (len(X),)
    assert g.history_[-1] < g.history_[0]
    # bic / aic count every parameter of the network (the affine module is on at the end)
    n_params = sum(p.numel() for p in g._net.parameters())
    assert g._n_parameters() == n_params
    assert g.bic(X) == pytest.approx(-2 * g.score(X) * len(X) + n_params * math.log(len(X)))
    assert g.aic(X) == pytest.approx(-2 * g.score(X) * len(X) + 2 * n_params)
    # samples: untransformed prototypes plus per-pixel Gaussian noise, reproducible by random_state
    Xs, ls = g.sample(3000)
    assert Xs.shape == (3000, 20, 20) and Xs.dtype == np.float32 and set(np.unique(ls)) <= {0, 1, 2}
    np.testing.assert_array_equal(g.sample(5)[0], g.sample(5)[0])
    k = int(np.bincount(ls).argmax())
    z = (Xs[ls == k] - g.prototypes_[k]) / g.sigmas_[k]
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02


def test_identity_gmm_counts_only_prototypes_sigmas_and_weights(glyphs):
    X, _ = glyphs
    g = DTIGMM(3, transforms="identity", max_iter=5, encoder_width=8, feature_dim=8, head_hidden=8,
               random_state=0).fit(X)
    assert g._n_parameters() == 2 * 3 * 20 * 20 + 3  # the encoder is never used without a module


def test_default_run_plan_scales_with_the_data():
    """Run length, curriculum, reassignment period and restarts follow N, K and the image size;
    every explicit parameter wins (no fit: the plan only)."""
    from bayesclust.inference import dti_steps as steps

    usps_test = (2007, 1, 16, 16)
    it, starts, every, n_init = DTIKMeans(10)._plan(usps_test, 10, 64, 3)
    assert it == steps.MIN_STEPS == 3000 and starts == [300, 600, 900] and every == 32
    assert n_init == steps.default_n_init(3000, 10, 256, 64) and 2 <= n_init <= steps.MAX_AUTO_RESTARTS
    mnist_test = DTIKMeans(10)._plan((10000, 1, 28, 28), 10, 64, 3)
    assert mnist_test[0] == 20 * 157 and mnist_test[3] < n_init  # bigger images: fewer runs fit
    assert DTIKMeans(10)._plan((70000, 1, 28, 28), 10, 64, 3)[0] == steps.MAX_STEPS
    assert DTIKMeans(100)._plan(usps_test, 100, 64, 1)[2] == math.ceil(100 * 100 / 64)  # 100 K images
    # explicit values win; a run length given by the user means one run unless n_init says otherwise
    assert DTIKMeans(10, max_iter=50)._plan(usps_test, 10, 64, 3) == (50, [5, 10, 15], 32, 1)
    assert steps.default_curriculum(1000, 5) == [100, 200, 300, 400, 500]
    assert steps.default_curriculum(1000, 10)[-1] == 500  # all modules on for the second half
    assert DTIKMeans(10, n_epochs=2)._plan(usps_test, 10, 64, 1)[::3] == (64, 1)
    plan = DTIKMeans(10, max_iter=40, n_init=2, curriculum=[5], reassign_every=7)._plan(usps_test, 10, 64, 1)
    assert plan == (40, [5], 7, 2)
    with pytest.raises(ValueError, match="n_epochs must be"):
        DTIKMeans(2, n_epochs=0).fit(np.zeros((10, 8, 8)))


def test_errors():
    X = np.random.default_rng(0).random((10, 8, 8))
    with pytest.raises(ValueError, match="must have 3 or 4 dimensions"):
        DTIKMeans(2).fit(X.reshape(10, -1))
    with pytest.raises(ValueError, match=r"X has 10 sample\(s\) but at least 20 are needed"):
        DTIKMeans(20).fit(X)
    with pytest.raises(ValueError, match="unknown transformation 'shear'"):
        DTIKMeans(2, transforms=("shear",)).fit(X)
    with pytest.raises(ValueError, match="must be used alone"):
        DTIKMeans(2, transforms=("identity", "affine")).fit(X)
    with pytest.raises(ValueError, match="lists a module twice"):
        DTIKMeans(2, transforms=("affine", "affine")).fit(X)
    with pytest.raises(ValueError, match="one start iteration per module"):
        DTIKMeans(2, transforms=("affine",), curriculum=[1, 2]).fit(X)
    with pytest.raises(ValueError, match="non-negative and non-decreasing"):
        DTIKMeans(2, transforms=("affine", "tps"), curriculum=[5, 1]).fit(X)
    with pytest.raises(ValueError, match="init='bogus' is not supported"):
        DTIKMeans(2, init="bogus").fit(X)
    with pytest.raises(ValueError, match=r"init has shape \(3, 1, 8, 8\)"):
        DTIKMeans(2, init=X[:3]).fit(X)
    with pytest.raises(ValueError, match="encoder_width must be a multiple of 8"):
        DTIKMeans(2, encoder_width=12).fit(X)
    with pytest.raises(ValueError, match="n_init must be"):
        DTIKMeans(2, n_init=0).fit(X)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        DTIKMeans(2, learning_rate=0.0).fit(X)
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rat'"):
        DTIKMeans(2, learning_rat=0.1)
    with pytest.raises(ValueError, match="contains 1 NaN"):
        DTIKMeans(2).fit(np.where(np.arange(640).reshape(10, 8, 8) == 3, np.nan, X))
    with pytest.raises(ValueError, match="is not fitted yet"):
        DTIKMeans(2).predict(X)
    m = DTIKMeans(2, transforms="identity", max_iter=3, device="cpu", encoder_width=8, random_state=0).fit(X)
    assert m.prototypes_.shape == (2, 8, 8)
    m4 = DTIKMeans(2, transforms="identity", max_iter=3, device="cpu", encoder_width=8).fit(X[:, None])
    assert m4.prototypes_.shape == (2, 1, 8, 8) and m4.predict(X).shape == (10,)  # (N, H, W) == (N, 1, H, W)
    with pytest.raises(ValueError, match=r"X has shape \(9, 9\), but it is expecting shape \(8, 8\)"):
        m.predict(np.zeros((2, 9, 9)))
    with pytest.raises(ValueError, match=r"X has shape \(2, 8, 8\), but it is expecting shape \(1, 8, 8\)"):
        m.predict(np.zeros((2, 2, 8, 8)))
    assert m.predict(X.tolist()).shape == (10,)
    with pytest.raises(ValueError, match="cluster=5 is out of range"):
        m.reconstruct(X, cluster=5)
    with pytest.raises(ValueError, match="sigma_init must be > 0.5"):
        DTIGMM(2, sigma_min=0.5, sigma_init=0.4).fit(X)


def test_plotting_writes_figures(glyphs, tmp_path):
    from bayesclust.plotting import plot_confusion, plot_prototypes, plot_reconstructions

    X, y = glyphs
    m = DTIKMeans(3, transforms=("affine",), max_iter=4, batch_size=32, encoder_width=8, feature_dim=8,
                  head_hidden=8, device="cpu", random_state=0).fit(X)
    fig = plot_prototypes(m.prototypes_, path=tmp_path / "p.png", title="protos")
    assert len([a for a in fig.axes if a.images]) == 3
    fig = plot_reconstructions(m, X[:4], path=tmp_path / "r.png")
    assert len(fig.axes) == 4 * 4
    fig = plot_confusion(y, m.labels_, path=tmp_path / "c.png")
    assert int(fig.axes[0].images[0].get_array().sum()) == len(y)
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("p.png", "r.png", "c.png"))
    with pytest.raises(ValueError, match=r"prototypes must have shape \(K, H, W\)"):
        plot_prototypes(np.zeros(5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_matches_cpu_model_outputs(glyphs):
    """The same code trains on CUDA; the fitted network gives the same costs on either device."""
    X, _ = glyphs
    kw = dict(transforms=("affine", "morpho", "tps"), max_iter=30, batch_size=32, encoder_width=8,
              feature_dim=16, head_hidden=8, random_state=0)
    gpu = DTIKMeans(3, device="cuda", **kw).fit(X)
    assert next(gpu._net.parameters()).is_cuda and np.isfinite(gpu.history_).all()
    cost_gpu = gpu.transform(X[:20])
    gpu._net = gpu._net.cpu()
    np.testing.assert_allclose(gpu.transform(X[:20]), cost_gpu, rtol=1e-4, atol=1e-6)
    g = DTIGMM(3, device="cuda", **kw).fit(X)
    assert np.isfinite(g.score(X[:20]))
