"""The Bayesian GMM Pyro program and its SVI / NUTS routes (models.gmm_model, inference.svi / .nuts)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from scipy import stats

from bayesclust.inference.engine import Engine
from bayesclust.inference.nuts import NUTSResult, fit_nuts, match_to_reference, relabel_samples
from bayesclust.inference.svi import SVIResult, fit_svi, svi_labels
from bayesclust.models.gmm_model import (
    COVARIANCE_TYPES,
    GMMPrior,
    PrecisionCholeskyTransform,
    covariances_to_precisions,
    make_gmm_model,
    mixture_log_prob,
    precisions_to_covariances,
)
from bayesclust.posterior import _arviz, gmm_inference_data

az = _arviz()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny Pyro graphs run fastest on one thread (and the CPU is shared); restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------- helpers
def blobs(n_per=60, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_per, 2, generator=g, dtype=dtype) * torch.tensor([0.5, 0.8], dtype=dtype) + 3.0
    b = torch.randn(n_per, 2, generator=g, dtype=dtype) @ torch.tensor([[1.0, 0.3], [0.0, 0.7]], dtype=dtype)
    b = b - 3.0
    return torch.cat([a, b]), torch.cat([torch.zeros(n_per), torch.ones(n_per)]).long()


def default_cov(K, D, ct, dtype=torch.float64):
    return {
        "full": torch.eye(D, dtype=dtype).expand(K, D, D).clone(),
        "tied": torch.eye(D, dtype=dtype),
        "diag": torch.ones(K, D, dtype=dtype),
        "spherical": torch.ones(K, dtype=dtype),
    }[ct]


def rough_init(X, labels, K, ct):
    means = torch.stack([X[labels == k].mean(0) for k in range(K)]) + 0.3
    return {"weights": torch.full((K,), 1.0 / K, dtype=X.dtype), "means": means,
            "covariances": default_cov(K, X.shape[1], ct, X.dtype)}


def closed_form_map_em(X, K, ct, prior, init, n_iter=500):
    """Reference joint-MAP EM in the precision parametrisation (formulas derived independently).

    weights (N_k + a - 1) / (N + K (a - 1)); mu_k = m_n; full Psi_n / (nu0 + N_k - D);
    tied Psi_tot / (nu0 + N + K - D - 1); diag Psi_n,dd / (nu0 + N_k - D);
    spherical tr(Psi_n) / (D (nu0 + N_k - D)).
    """
    N, D = X.shape
    a, m0, k0, nu0, psi0 = prior.alpha, prior.m0, prior.kappa0, prior.nu0, prior.psi0
    w, mu, cov = init["weights"].clone(), init["means"].clone(), init["covariances"].clone()
    for _ in range(n_iter):
        full = {"full": cov, "tied": cov.expand(K, D, D), "diag": torch.diag_embed(cov),
                "spherical": cov[:, None, None] * torch.eye(D, dtype=X.dtype)}[ct]
        logp = torch.distributions.MultivariateNormal(mu, covariance_matrix=full).log_prob(X[:, None, :])
        r = torch.softmax(logp + w.log(), dim=1)
        nk = r.sum(0)
        xbar = (r.T @ X) / nk[:, None]
        diff = X[:, None, :] - xbar[None]
        S = torch.einsum("nk,nki,nkj->kij", r, diff, diff)
        kn = k0 + nk
        mu = (k0 * m0 + nk[:, None] * xbar) / kn[:, None]
        d0 = xbar - m0
        psin = psi0 + S + (k0 * nk / kn)[:, None, None] * d0[:, :, None] * d0[:, None, :]
        w = (nk + a - 1) / (N + K * (a - 1))
        if ct == "full":
            cov = psin / (nu0 + nk - D)[:, None, None]
        elif ct == "tied":
            cov = (psi0 + (psin - psi0).sum(0)) / (nu0 + N + K - D - 1)
        elif ct == "diag":
            cov = torch.diagonal(psin, dim1=-2, dim2=-1) / (nu0 + nk - D)[:, None]
        else:
            cov = torch.diagonal(psin, dim1=-2, dim2=-1).sum(-1) / (D * (nu0 + nk - D))
    return {"weights": w, "means": mu, "covariances": cov, "resp": r}


def engine(max_iter=2000, tol=1e-9, seed=0):
    return Engine(maximize=False, dtype="float64", device="cpu", max_iter=max_iter, tol=tol,
                  random_state=seed, warn_not_converged=False)


# ------------------------------------------------------------------------------------------- the model
@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_precision_transform_jacobian_and_inverse(d, seed):
    t = PrecisionCholeskyTransform()
    v = torch.randn(d * (d + 1) // 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows, cols = torch.tril_indices(d, d)

    def free_entries(u):  # the SPD matrix's D(D+1)/2 free (lower-triangular) entries
        return t(u)[rows, cols]

    jac = torch.autograd.functional.jacobian(free_entries, v)
    assert torch.allclose(t.log_abs_det_jacobian(v, t(v)), torch.linalg.slogdet(jac)[1], atol=1e-8)
    y = t(v)
    assert torch.allclose(y, y.T) and bool((torch.linalg.eigvalsh(y) > 0).all())
    assert torch.allclose(t.inv(y), v, atol=1e-8)
    assert t.forward_shape((5, v.shape[0])) == (5, d, d) and t.inverse_shape((5, d, d)) == (5, v.shape[0])


@pytest.mark.filterwarnings("ignore:Singular sample detected")  # torch Wishart.rsample of a prior draw
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_model_sites_and_prior_densities_vs_scipy(ct):
    X, _ = blobs(10)
    K, D = 3, 2
    prior = GMMPrior.from_data(X, alpha=1.5)
    model = make_gmm_model(K, ct, prior)
    trace = poutine.trace(model).get_trace(X)
    shapes = {n: tuple(s["value"].shape) for n, s in trace.nodes.items()
              if s["type"] == "sample" and n not in ("components", "data")}
    prec_shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[ct]
    assert shapes == {"weights": (K,), "precisions": prec_shape, "means": (K, D), "assignment": (len(X),),
                      "obs": (len(X), D)}
    trace.compute_log_prob()
    site = {n: trace.nodes[n] for n in ("weights", "means", "precisions")}
    w, mu, prec = (site[n]["value"].numpy() for n in ("weights", "means", "precisions"))
    m0, psi0, k0, nu0 = prior.m0.numpy(), prior.psi0.numpy(), prior.kappa0, prior.nu0
    assert math.isclose(site["weights"]["log_prob_sum"].item(), stats.dirichlet(np.full(K, 1.5)).logpdf(w),
                        rel_tol=1e-9)
    if ct in ("full", "tied"):
        lam = prec if ct == "full" else np.broadcast_to(prec, (K, D, D))
        wishart = stats.wishart(df=nu0, scale=np.linalg.inv(psi0))
        ref_prec = sum(wishart.logpdf(p) for p in prec.reshape(-1, D, D))
        ref_mu = sum(stats.multivariate_normal(m0, np.linalg.inv(k0 * lam[k])).logpdf(mu[k])
                     for k in range(K))
    elif ct == "diag":
        ref_prec = stats.gamma((nu0 - D + 1) / 2, scale=2 / np.diag(psi0)).logpdf(prec).sum()
        ref_mu = stats.norm(m0, 1 / np.sqrt(k0 * prec)).logpdf(mu).sum()
    else:
        ref_prec = stats.gamma(D * (nu0 - D - 1) / 2 + 1, scale=2 / np.trace(psi0)).logpdf(prec).sum()
        ref_mu = sum(stats.multivariate_normal(m0, np.eye(D) / (k0 * prec[k])).logpdf(mu[k])
                     for k in range(K))
    assert math.isclose(site["precisions"]["log_prob_sum"].item(), ref_prec, rel_tol=1e-8)
    assert math.isclose(site["means"]["log_prob_sum"].item(), ref_mu, rel_tol=1e-8)
    # marginal likelihood of the data given the parameters vs scipy
    cov = precisions_to_covariances(site["precisions"]["value"], ct).numpy()
    if ct == "full":
        full = cov
    elif ct == "tied":
        full = np.broadcast_to(cov, (K, D, D))
    elif ct == "diag":
        full = np.stack([np.diag(c) for c in cov])
    else:
        full = np.stack([c * np.eye(D) for c in cov])
    ref = np.log(sum(w[k] * stats.multivariate_normal(mu[k], full[k]).pdf(X.numpy()) for k in range(K)))
    values = [site[n]["value"] for n in ("weights", "means", "precisions")]
    got = mixture_log_prob(X, *values, ct)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-8)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_precision_covariance_round_trip(ct):
    cov = default_cov(3, 2, ct) * 2.0
    if ct in ("full", "tied"):
        cov = cov + 0.5 * torch.ones(2, 2, dtype=cov.dtype)
    prec = covariances_to_precisions(cov, ct)
    assert prec.shape == cov.shape
    assert torch.allclose(precisions_to_covariances(prec, ct), cov, atol=1e-12)


# ------------------------------------------------------------------------------------------- SVI
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_svi_map_equals_closed_form_map(ct):
    X, y = blobs()
    prior = GMMPrior.from_data(X, alpha=2.0)
    init = rough_init(X, y, 2, ct)
    ref = closed_form_map_em(X, 2, ct, prior, init)
    res = fit_svi(X, 2, ct, prior, init, engine(tol=1e-12), guide="map", lr=0.02)
    assert isinstance(res, SVIResult) and res.fit.converged
    assert res.history[-1] <= res.history[0]
    np.testing.assert_allclose(res.means.numpy(), ref["means"].numpy(), atol=1e-4)
    np.testing.assert_allclose(res.weights.numpy(), ref["weights"].numpy(), atol=1e-4)
    np.testing.assert_allclose(res.covariances.numpy(), ref["covariances"].numpy(), rtol=1e-3, atol=1e-4)
    labels = svi_labels(res, X)
    assert torch.equal(labels, ref["resp"].argmax(1))
    assert torch.equal(labels, y)


@pytest.mark.parametrize("ct", ["full", "tied"])
def test_svi_map_equals_estimator_em_map(ct):
    """Cross-check with the estimator's closed-form MAP-EM route (bayesclust.estimators.gaussian_mixture)."""
    gmm = pytest.importorskip("bayesclust.estimators.gaussian_mixture")
    X, y = blobs()
    em = gmm.GaussianMixture(2, covariance_type=ct, inference="em", dtype="float64", random_state=0,
                             tol=1e-12, max_iter=1000, reg_covar=0.0).fit(X.numpy())
    res = fit_svi(X, 2, ct, GMMPrior.from_data(X), rough_init(X, y, 2, ct), engine(tol=1e-12), lr=0.02)
    order = match_to_reference(torch.as_tensor(em.means_)[None], res.means)[0]
    np.testing.assert_allclose(res.means.numpy(), em.means_[order], atol=1e-4)
    np.testing.assert_allclose(res.weights.numpy(), em.weights_[order], atol=1e-4)
    em_cov = em.covariances_ if ct == "tied" else em.covariances_[order]
    np.testing.assert_allclose(res.covariances.numpy(), em_cov, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_svi_meanfield_every_covariance_type(ct):
    X, y = blobs(40)
    prior = GMMPrior.from_data(X)
    init = rough_init(X, y, 2, ct)
    ref = closed_form_map_em(X, 2, ct, prior, init)
    res = fit_svi(X, 2, ct, prior, init, engine(max_iter=120, tol=0), guide="meanfield", lr=0.05)
    assert len(res.history) == 120 and all(math.isfinite(h) for h in res.history)
    # the posterior mean of the means lies near the MAP (posterior sd of a mean here is ~0.1)
    np.testing.assert_allclose(res.means.numpy(), ref["means"].numpy(), atol=0.25)
    draws = res.sample_posterior(50, torch.Generator().manual_seed(0))
    assert draws["means"].shape == (50, 2, 2) and draws["weights"].shape == (50, 2)
    assert draws["covariances"].shape == (50, *init["covariances"].shape)
    assert torch.allclose(draws["weights"].sum(-1), torch.ones(50, dtype=X.dtype))
    assert draws["means"].std(0).min() > 0
    assert torch.equal(svi_labels(res, X), y)


def test_svi_minibatch_reaches_map():
    X, y = blobs()
    prior = GMMPrior.from_data(X)
    init = rough_init(X, y, 2, "full")
    ref = closed_form_map_em(X, 2, "full", prior, init)
    res = fit_svi(X, 2, "full", prior, init, engine(max_iter=40, tol=0), lr=0.02, batch_size=40)
    np.testing.assert_allclose(res.means.numpy(), ref["means"].numpy(), atol=0.1)


def test_svi_lr_decay_settles_on_map_and_threads_restored():
    X, y = blobs()
    prior = GMMPrior.from_data(X)
    ref = closed_form_map_em(X, 2, "full", prior, rough_init(X, y, 2, "full"))
    start = {k: ref[k] for k in ("weights", "means", "covariances")}
    torch.set_num_threads(2)
    before = {k: v.clone() for k, v in start.items()}
    res = fit_svi(X, 2, "full", prior, start, engine(max_iter=150, tol=0), lr=0.05, lr_decay=0.95)
    assert torch.get_num_threads() == 2
    for k, v in before.items():  # the caller's init is never modified in place
        assert torch.equal(start[k], v)
    np.testing.assert_allclose(res.means.numpy(), ref["means"].numpy(), atol=1e-4)
    np.testing.assert_allclose(res.covariances.numpy(), ref["covariances"].numpy(), atol=1e-4)


def test_svi_checkpoint_resume_matches_uninterrupted(tmp_path):
    X, y = blobs(30)
    prior = GMMPrior.from_data(X)
    init = rough_init(X, y, 2, "diag")
    straight = fit_svi(X, 2, "diag", prior, init, engine(max_iter=20, tol=0))
    ckpt = tmp_path / "svi.pt"

    def eng(n, resume):
        return Engine(maximize=False, dtype="float64", device="cpu", max_iter=n, tol=0, random_state=0,
                      checkpoint_path=ckpt, checkpoint_every=5, resume=resume)

    fit_svi(X, 2, "diag", prior, init, eng(10, False))
    resumed = fit_svi(X, 2, "diag", prior, init, eng(20, True))
    assert len(resumed.history) == 20
    np.testing.assert_allclose(resumed.history, straight.history, rtol=1e-10)
    torch.testing.assert_close(resumed.means, straight.means)


def test_svi_inference_data():
    X, y = blobs(30)
    prior = GMMPrior.from_data(X)
    init = rough_init(X, y, 2, "diag")
    res = fit_svi(X, 2, "diag", prior, init, engine(max_iter=60, tol=0), guide="meanfield")
    idata = gmm_inference_data(res, X, num_samples=200, generator=torch.Generator().manual_seed(1))
    assert idata.posterior["means"].shape == (1, 200, 2, 2)
    assert idata.posterior["covariances"].dims == ("chain", "draw", "component", "feature")
    assert idata.log_likelihood["X"].shape == (1, 200, len(X))
    assert not bool(idata.sample_stats["diverging"].any())
    assert idata.attrs["inference"] == "svi-meanfield"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isfinite(az.loo(idata).elpd_loo)
    res_map = fit_svi(X, 2, "diag", prior, init, engine(max_iter=20, tol=0), guide="map")
    idata_map = gmm_inference_data(res_map, X)
    np.testing.assert_allclose(idata_map.posterior["means"].values[0, 0], res_map.means.numpy())


def test_svi_errors():
    X, y = blobs(10)
    prior = GMMPrior.from_data(X)
    init = rough_init(X, y, 2, "full")
    with pytest.raises(ValueError, match=r"guide='laplace' is not supported; choose one of \['map', 'meanf"):
        fit_svi(X, 2, "full", prior, init, engine(), guide="laplace")
    with pytest.raises(ValueError, match="maximize=False"):
        fit_svi(X, 2, "full", prior, init, Engine(maximize=True))
    with pytest.raises(TypeError, match="engine must be a bayesclust Engine"):
        fit_svi(X, 2, "full", prior, init, engine=None)
    with pytest.raises(ValueError, match=r"init is missing \['covariances'\]"):
        fit_svi(X, 2, "full", prior, {"weights": init["weights"], "means": init["means"]}, engine())
    with pytest.raises(ValueError, match=r"init\['means'\] must have shape \(2, 2\)"):
        fit_svi(X, 2, "full", prior, {**init, "means": init["means"][:1]}, engine())
    with pytest.raises(ValueError, match=r"init\['weights'\] must have shape \(3,\)"):
        fit_svi(X, 3, "full", prior, init, engine())
    with pytest.raises(ValueError, match=r"init\['covariances'\] must have shape \(2, 2\)"):
        fit_svi(X, 2, "diag", prior, init, engine())
    with pytest.raises(ValueError, match="covariance_type='banana' is not supported"):
        fit_svi(X, 2, "banana", prior, init, engine())
    with pytest.raises(ValueError, match="lr_decay must be > 0"):
        fit_svi(X, 2, "full", prior, init, engine(), lr_decay=0.0)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        fit_svi(X, 2, "full", prior, init, engine(), num_threads=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        fit_svi(X, 2, "full", prior, init, engine(), lr=0.0)
    with pytest.raises(ValueError, match="n_samples=20 should be >= K=30"):
        fit_svi(X, 30, "full", prior, init, engine())
    with pytest.raises(TypeError, match="prior must be a GMMPrior"):
        make_gmm_model(2, "full", prior={"alpha": 1.0})
    with pytest.raises(ValueError, match="K must be a positive int"):
        make_gmm_model(0, "full", prior)
    with pytest.raises(ValueError, match="X has 3 features but the prior was built for 2"):
        poutine.trace(make_gmm_model(2, "full", prior)).get_trace(torch.zeros(5, 3, dtype=X.dtype))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        GMMPrior(0.0, prior.m0, 1.0, 4.0, prior.psi0)
    with pytest.raises(ValueError, match=r"nu0 must be > 1"):
        GMMPrior(1.0, prior.m0, 1.0, 0.5, prior.psi0)
    with pytest.raises(ValueError, match=r"psi0 must be \(D, D\) = \(2, 2\)"):
        GMMPrior(1.0, prior.m0, 1.0, 4.0, torch.eye(3))
    with pytest.raises(ValueError, match="temperature=2 is not supported"):
        svi_labels(fit_svi(X, 2, "full", prior, init, engine(max_iter=2)), X, temperature=2)


# ------------------------------------------------------------------------------------------- relabelling
def test_relabelling_recovers_synthetic_permutations():
    g = torch.Generator().manual_seed(3)
    K, D, C, S = 4, 3, 2, 50
    ref = torch.tensor([[0.0, 0, 0], [5, 0, 0], [0, 5, 0], [0, 0, 5]], dtype=torch.float64)
    means = ref + 0.3 * torch.randn(C, S, K, D, generator=g, dtype=torch.float64)
    weights = torch.softmax(torch.randn(C, S, K, generator=g, dtype=torch.float64), -1)
    covs = torch.rand(C, S, K, D, generator=g, dtype=torch.float64) + 0.1
    tied = torch.rand(C, S, D, generator=g, dtype=torch.float64)
    perms = torch.stack([torch.stack([torch.randperm(K, generator=g) for _ in range(S)]) for _ in range(C)])
    perms[0, :5] = torch.arange(K)  # a few draws already in the reference order
    gather = lambda v: torch.gather(v, 2, perms.reshape(C, S, K, *([1] * (v.ndim - 3))).expand(v.shape))  # noqa: E731
    scrambled = {"means": gather(means), "weights": gather(weights), "covariances": gather(covs), "nu": tied}
    out, found = relabel_samples(scrambled, ref, "diag")
    torch.testing.assert_close(out["means"], means)
    torch.testing.assert_close(out["weights"], weights)
    torch.testing.assert_close(out["covariances"], covs)
    torch.testing.assert_close(out["nu"], tied)
    # found[c, s, k] is the scrambled index holding reference component k, i.e. the inverse of perms
    assert torch.equal(torch.gather(perms, 2, found), torch.arange(K).expand(C, S, K))
    n_moved = int((perms != torch.arange(K)).any(-1).sum())
    assert 0 < n_moved <= C * S - 5
    assert n_moved == int((found != torch.arange(K)).any(-1).sum())
    with pytest.raises(ValueError, match=r"means must be \(S, K, D\) and reference \(K, D\)"):
        match_to_reference(means[0], ref[:3])
    with pytest.raises(ValueError, match="samples must contain 'means'"):
        relabel_samples({"weights": weights}, ref, "full")


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_relabelling_is_invariant_to_draw_permutations(k, seed):
    """Permuting the components of any draw never changes the relabelled result (generic means)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(1, 6, k, 2, generator=g, dtype=torch.float64)
    weights = torch.softmax(torch.randn(1, 6, k, generator=g, dtype=torch.float64), -1)
    ref = torch.randn(k, 2, generator=g, dtype=torch.float64)
    perm = torch.stack([torch.randperm(k, generator=g) for _ in range(6)])[None]
    a, _ = relabel_samples({"means": means, "weights": weights}, ref, "full")
    b, _ = relabel_samples({"means": torch.gather(means, 2, perm[..., None].expand(means.shape)),
                            "weights": torch.gather(weights, 2, perm)}, ref, "full")
    torch.testing.assert_close(a["means"], b["means"])
    torch.testing.assert_close(a["weights"], b["weights"])


# ------------------------------------------------------------------------------------------- NUTS
@pytest.fixture(scope="module")
def faithful_nuts(shared_data):
    path = shared_data / "tabular" / "datasets_faithful.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    df = pd.read_csv(path)
    X = torch.tensor(df[["eruptions", "waiting"]].to_numpy(), dtype=torch.float64)
    X = (X - X.mean(0)) / X.std(0)
    prior = GMMPrior.from_data(X)
    y = (X[:, 0] > 0).long()
    ref = closed_form_map_em(X, 2, "full", prior, rough_init(X, y, 2, "full"), n_iter=300)
    init = {k: ref[k] for k in ("weights", "means", "covariances")}
    res = fit_nuts(X, 2, "full", prior, init, num_samples=100, warmup_steps=100, num_chains=2,
                   random_state=0, jit_compile=True)
    return X, ref, res


def test_nuts_faithful_rhat_and_means_near_map(faithful_nuts):
    X, ref, res = faithful_nuts
    assert isinstance(res, NUTSResult)
    assert res.samples["means"].shape == (2, 100, 2, 2)
    assert res.samples["covariances"].shape == (2, 100, 2, 2, 2)
    assert res.divergences.shape == (2, 100) and res.divergences.dtype == torch.bool
    assert 0 <= res.relabelled_fraction <= 1 and res.n_relabelled == int(
        (res.permutations != torch.arange(2)).any(-1).sum())
    sd = res.samples["means"].std((0, 1))
    assert bool(((res.means - ref["means"]).abs() < 3 * sd + 1e-3).all())
    np.testing.assert_allclose(res.weights.numpy(), ref["weights"].numpy(), atol=0.05)
    idata = gmm_inference_data(res, X)
    rhat = az.rhat(idata)
    worst = max(float(rhat[v].max()) for v in ("weights", "means", "covariances"))
    assert worst < 1.05, f"max R-hat {worst:.3f}"
    summary = az.summary(idata, var_names=["means"])
    np.testing.assert_allclose(summary["mean"].to_numpy(), res.means.numpy().ravel(), atol=1e-3)
    assert idata.log_likelihood["X"].shape == (2, 100, len(X))
    assert idata.sample_stats["diverging"].shape == (2, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata)
    # the LOO estimate is below the in-sample fit at the MAP
    prec_map = covariances_to_precisions(ref["covariances"], "full")
    ll_map = mixture_log_prob(X, ref["weights"], ref["means"], prec_map, "full").sum()
    assert np.isfinite(loo.elpd_loo) and loo.elpd_loo < float(ll_map)


@pytest.mark.parametrize("ct", ["tied", "diag", "spherical"])
def test_nuts_runs_every_covariance_type(ct):
    X, y = blobs(15)
    prior = GMMPrior.from_data(X)
    init = rough_init(X, y, 2, ct)
    res = fit_nuts(X, 2, ct, prior, init, num_samples=20, warmup_steps=20, num_chains=1, random_state=1)
    assert res.samples["covariances"].shape == (1, 20, *init["covariances"].shape)
    assert bool(torch.isfinite(res.samples["means"]).all())
    assert res.n_relabelled == 0  # well-separated blobs: every draw already matches the reference
    np.testing.assert_allclose(res.means.numpy(), X.reshape(2, 15, 2).mean(1).numpy(), atol=0.6)
    idata = gmm_inference_data(res, X)
    expected_dims = {"tied": ("feature", "feature_bis"), "diag": ("component", "feature"),
                     "spherical": ("component",)}[ct]
    assert idata.posterior["covariances"].dims[2:] == expected_dims
    assert idata.log_likelihood["X"].shape == (1, 20, len(X))
    np.testing.assert_allclose(idata.posterior["covariances"].values, res.samples["covariances"].numpy())


def test_nuts_label_switch_against_reference_is_undone_and_reported():
    X, y = blobs(15)
    prior = GMMPrior.from_data(X)
    init = rough_init(X, y, 2, "spherical")
    truth = X.reshape(2, 15, 2).mean(1)
    # chains start in one labelling, the reference is the other: every draw must be permuted back
    res = fit_nuts(X, 2, "spherical", prior, init, num_samples=15, warmup_steps=15, num_chains=1,
                   random_state=2, reference_means=init["means"].flip(0))
    assert res.n_relabelled == 15 and res.relabelled_fraction == 1.0
    assert torch.equal(res.permutations[0], torch.tensor([1, 0]).expand(15, 2))
    np.testing.assert_allclose(res.means.numpy(), truth.flip(0).numpy(), atol=0.6)
    with pytest.raises(ValueError, match=r"reference_means must be \(K, D\) = \(2, 2\)"):
        fit_nuts(X, 2, "spherical", prior, init, num_samples=1, warmup_steps=0, reference_means=truth[:1])
    short = fit_nuts(X, 2, "spherical", prior, init, num_samples=2, warmup_steps=2, num_chains=2)
    assert short.divergences.shape == (2, 2) and short.samples["means"].shape == (2, 2, 2, 2)


def test_nuts_errors():
    X, y = blobs(5)
    prior = GMMPrior.from_data(X)
    init = rough_init(X, y, 2, "full")
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        fit_nuts(X, 2, "full", prior, init, num_samples=0)
    with pytest.raises(ValueError, match="target_accept must be < 1"):
        fit_nuts(X, 2, "full", prior, init, target_accept=1.0)
    with pytest.raises(ValueError, match=r"X must be \(N, D\) with N >= K=2"):
        fit_nuts(X[:1], 2, "full", prior, init)
    with pytest.raises(TypeError, match="init must be a dict"):
        fit_nuts(X, 2, "full", prior, [1, 2])
    with pytest.raises(TypeError, match="result must be a NUTSResult or SVIResult"):
        gmm_inference_data(object(), X, "full")
    with pytest.raises(ValueError, match="covariance_type=None is not supported"):
        gmm_inference_data(object(), X)


def test_diag_and_spherical_priors_share_the_full_prior_mean_of_sigma():
    # E[Sigma] = psi0 / (nu0 - D - 1) for every covariance type: the inverse-Wishart mean (full), the
    # mean of its marginal InvGamma((nu0 - D + 1) / 2, psi0_dd / 2) (diag), and of the tied product
    # Gamma(D (nu0 - D - 1) / 2 + 1, tr(psi0) / 2) on a shared precision (spherical)
    from bayesclust.models.priors import gamma_shape

    D, nu0 = 5, 9.0
    psi = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    iw_mean = psi / (nu0 - D - 1)
    a = gamma_shape(nu0, D, "diag")
    np.testing.assert_allclose(stats.invgamma(a, scale=psi / 2).mean(), iw_mean)
    a_s = gamma_shape(nu0, D, "spherical")
    assert math.isclose(stats.invgamma(a_s, scale=psi.sum() / 2).mean(), iw_mean.mean())
    with pytest.raises(ValueError, match=r"covariance_type='spherical' needs degrees_of_freedom_prior"):
        gamma_shape(D - 0.5, D, "spherical")
