"""NIW and Dirichlet priors against SciPy densities and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from bayesclust.models.priors import (
    NIW,
    Dirichlet,
    WishartScalePrior,
    _cholesky_psd,
    mvlgamma,
    sample_wishart,
)

F64 = torch.float64


def _prior(d=3, kappa0=0.5):
    torch.manual_seed(0)
    X = torch.randn(30, d, dtype=F64) * torch.tensor([1.0, 2.0, 0.5][:d], dtype=F64)
    return NIW.from_data(X, kappa0=kappa0), X


def test_log_prob_matches_scipy_normal_times_invwishart():
    p, _ = _prior()
    mu = torch.tensor([0.3, -1.0, 0.2], dtype=F64)
    sigma = torch.tensor([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.7]], dtype=F64)
    ref = st.multivariate_normal(p.m0.numpy(), sigma.numpy() / float(p.kappa0)).logpdf(mu.numpy())
    ref += st.invwishart(df=float(p.nu0), scale=p.psi0.numpy()).logpdf(sigma.numpy())
    assert float(p.log_prob(mu, sigma)) == pytest.approx(ref, rel=1e-10)


def test_log_marginal_likelihood_equals_product_of_predictives():
    p, X = _prior()
    lml = p.log_marginal_likelihood(torch.tensor(30.0, dtype=F64), X.sum(0), X.T @ X)
    total, d = 0.0, 3
    for i in range(30):  # chain rule with the Student-t posterior predictive (Murphy 2007, eq. 258)
        Xi = X[:i]
        post = p.posterior(torch.tensor(float(i), dtype=F64), Xi.sum(0), Xi.T @ Xi)
        df = float(post.nu0) - d + 1
        scale = post.psi0.numpy() * (float(post.kappa0) + 1) / (float(post.kappa0) * df)
        total += st.multivariate_t(post.m0.numpy(), scale, df=df).logpdf(X[i].numpy())
    assert float(lml) == pytest.approx(total, rel=1e-10)


def test_batched_posterior_equals_one_by_one():
    p, X = _prior()
    labels = torch.arange(30) % 3
    n = torch.bincount(labels).to(F64)
    sx = torch.zeros(3, 3, dtype=F64).index_add_(0, labels, X)
    sxx = torch.zeros(3, 3, 3, dtype=F64).index_add_(0, labels, X[:, :, None] * X[:, None, :])
    batched = p.log_marginal_likelihood(n, sx, sxx)
    for k in range(3):
        Xk = X[labels == k]
        single = p.log_marginal_likelihood(torch.tensor(float(len(Xk)), dtype=F64), Xk.sum(0), Xk.T @ Xk)
        assert float(batched[k]) == pytest.approx(float(single), rel=1e-12)


def test_mvlgamma_matches_scipy():
    a = torch.tensor([2.5, 4.0, 10.3], dtype=F64)
    from scipy.special import multigammaln

    assert np.allclose(mvlgamma(a, 3).numpy(), [multigammaln(float(v), 3) for v in a])


def test_modes_and_sampling_moments():
    p, _ = _prior(d=2)
    p = NIW(p.m0[:2], p.kappa0, torch.tensor(8.0, dtype=F64), p.psi0[:2, :2])
    _, s_prec = p.mode("precision")
    _, s_cov = p.mode("covariance")
    assert torch.allclose(s_prec, p.psi0 / (8.0 - 2))
    assert torch.allclose(s_cov, p.psi0 / (8.0 + 2 + 2))
    batch = NIW(
        p.m0.expand(20000, 2), p.kappa0.expand(20000), p.nu0.expand(20000), p.psi0.expand(20000, 2, 2)
    )
    mu, sigma = batch.sample(torch.Generator().manual_seed(0))
    assert torch.allclose(sigma.mean(0), p.mean_covariance(), rtol=0.05, atol=0.02)
    assert torch.allclose(mu.mean(0), p.m0, atol=0.1)
    with pytest.raises(ValueError, match="parametrization='x' is not supported"):
        p.mode("x")


def test_niw_validation_messages():
    m0 = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="kappa0 must be > 0"):
        NIW(m0, 0.0, 5.0, torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="nu0 must be > D - 1 = 1"):
        NIW(m0, 1.0, 0.5, torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match=r"psi0 must be \(D, D\)"):
        NIW(m0, 1.0, 5.0, torch.eye(3, dtype=F64))


@settings(max_examples=30, deadline=None)
@given(hs.lists(hs.floats(0.2, 10.0), min_size=2, max_size=6), hs.integers(0, 10_000))
def test_dirichlet_log_prob_and_marginal_match_scipy(alpha, seed):
    a = torch.tensor(alpha, dtype=F64)
    w = torch.from_numpy(np.random.default_rng(seed).dirichlet(alpha))
    w = w.clamp(min=1e-12) / w.clamp(min=1e-12).sum()
    assert float(Dirichlet(a).log_prob(w)) == pytest.approx(st.dirichlet(alpha).logpdf(w.numpy()), rel=1e-8)
    counts = torch.tensor(np.random.default_rng(seed).integers(0, 5, len(alpha)), dtype=F64)
    # Dirichlet-multinomial probability of one particular labelling with these counts
    total = int(counts.sum())
    ref = st.dirichlet_multinomial(alpha, total).logpmf(counts.numpy()) if total > 0 else 0.0
    from scipy.special import gammaln

    c = counts.numpy()
    multinom = gammaln(c.sum() + 1) - gammaln(c + 1).sum()
    got = float(Dirichlet(a).log_marginal_likelihood(counts))
    assert got == pytest.approx(float(ref - multinom), abs=1e-8)


def test_dirichlet_mode():
    d = Dirichlet(torch.tensor([2.0, 3.0, 5.0], dtype=F64))
    assert torch.allclose(d.mode(), torch.tensor([1.0, 2.0, 4.0], dtype=F64) / 7)
    post = d.posterior(torch.ones(3, dtype=F64))
    assert torch.allclose(post.alpha, torch.tensor([3.0, 4.0, 6.0], dtype=F64))


def test_wishart_draws_match_scipy_mean_and_variance():
    rng = np.random.default_rng(0)
    scale = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    draws = torch.stack([sample_wishart(6.0, scale, rng) for _ in range(20000)]).numpy()
    ref = st.wishart(df=6.0, scale=scale.numpy())
    assert np.allclose(draws.mean(0), ref.mean(), rtol=0.03, atol=0.02)
    assert np.allclose(draws.var(0), ref.var(), rtol=0.08, atol=0.02)


def test_wishart_scale_conditional_is_the_conjugate_update():
    # p(psi | Sigma_1..K) ∝ W(psi; df, mean/df) prod_k IW(Sigma_k; nu0, psi): compare the log density
    # of two psi values with the claimed Wishart conditional, up to the same constant
    rng = np.random.default_rng(1)
    mean = torch.tensor([[1.0, 0.2], [0.2, 2.0]], dtype=F64)
    prior = WishartScalePrior(4.0, mean)
    sigmas = [st.invwishart(df=5.0, scale=np.eye(2)).rvs(random_state=rng) for _ in range(3)]
    prec = torch.tensor(np.array([np.linalg.inv(s) for s in sigmas]))
    df, scale = prior.conditional(prec, 5.0)
    assert df == 4.0 + 3 * 5.0

    def unnorm(psi):
        lp = st.wishart(df=4.0, scale=mean.numpy() / 4.0).logpdf(psi)
        return lp + sum(st.invwishart(df=5.0, scale=psi).logpdf(s) for s in sigmas)

    a, b = np.array([[1.0, 0.1], [0.1, 0.8]]), np.array([[0.5, -0.2], [-0.2, 1.5]])
    cond = st.wishart(df=df, scale=scale.numpy())
    assert unnorm(a) - unnorm(b) == pytest.approx(cond.logpdf(a) - cond.logpdf(b), rel=1e-8)


def test_wishart_scale_prior_validation_message():
    with pytest.raises(ValueError, match=r"needs df > D - 1 = 1, got 0.5"):
        WishartScalePrior(0.5, torch.eye(2, dtype=F64))


def test_cholesky_psd_projects_a_slightly_indefinite_matrix():
    a = torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-13]], dtype=F64)  # rounding made it indefinite
    chol = _cholesky_psd(a)
    assert torch.allclose(chol @ chol.T, a, atol=1e-10)
