"""The model-family seam: a second family, defined only here, runs through EM and the split/merge
sampler of ``bayesclust/inference/`` unchanged.

The family: isotropic Gaussian components with a known variance s2, x | mu_k ~ N(mu_k, s2 I), and a
conjugate prior mu_k ~ N(m0, t2 I) on the means. Its statistics map is phi(x) = [|x|^2, x] (Q = D + 1),
so a group's statistics are [sum |x|^2, sum x, n].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bayesclust import metrics
from bayesclust.inference import em, splitmerge
from bayesclust.inference.engine import Engine, Step
from bayesclust.inference.streaming import Features
from bayesclust.models.family import ConjugateFamily, EMFamily


@dataclass
class IsoParams:
    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)


@dataclass
class FixedVarianceFamily:
    d: int
    s2: float = 1.0
    t2: float = 100.0

    # -------------------------------------------------------------- EMFamily
    def feature_dim(self, d: int) -> int:
        return d + 1

    def feature_map(self, X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        phi = torch.cat([(X * X).sum(1, keepdim=True), X], 1)
        return phi if out is None else out[: X.shape[0]].copy_(phi)

    def log_prob_coefficients(self, params: IsoParams) -> tuple[torch.Tensor, torch.Tensor]:
        mu = params.means
        A = torch.cat([torch.full((1, mu.shape[0]), -0.5 / self.s2, dtype=mu.dtype), mu.T / self.s2])
        c = (
            torch.log(params.weights)
            - 0.5 * (mu * mu).sum(1) / self.s2
            - 0.5 * self.d * math.log(2 * math.pi * self.s2)
        )
        return A, c

    def m_step(self, G: torch.Tensor, previous: IsoParams) -> IsoParams:  # MAP of the means
        n, sx = G[:, -1], G[:, 1 : 1 + self.d]
        prec = n / self.s2 + 1.0 / self.t2
        return IsoParams(n / n.sum(), (sx / self.s2) / prec[:, None])

    def log_prior(self, params: IsoParams) -> float:
        return float(torch.distributions.Normal(0.0, math.sqrt(self.t2)).log_prob(params.means).sum())

    # -------------------------------------------------------------- ConjugateFamily
    @property
    def dim(self) -> int:
        return self.d

    def statistics_map(self, X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        phi = torch.cat([self.feature_map(X), torch.ones_like(X[:, :1])], 1)
        return phi if out is None else out[: X.shape[0]].copy_(phi)

    def _posterior(self, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, sx = G[:, -1], G[:, 1 : 1 + self.d]
        prec = n / self.s2 + 1.0 / self.t2
        return (sx / self.s2) / prec[:, None], prec

    def log_marginal_likelihood(self, G: torch.Tensor) -> torch.Tensor:
        n, s2sum = G[:, -1], G[:, 0]
        mean, prec = self._posterior(G)
        return (
            -0.5 * n * self.d * math.log(2 * math.pi * self.s2)
            - 0.5 * s2sum / self.s2
            - 0.5 * self.d * torch.log(self.t2 * prec)
            + 0.5 * prec * (mean * mean).sum(1)
        )

    def sample_coefficients(self, G: torch.Tensor, log_weights: torch.Tensor):
        mean, prec = self._posterior(G)
        mu = mean + torch.randn_like(mean) / prec.sqrt()[:, None]
        A, c = self.log_prob_coefficients(IsoParams(torch.exp(log_weights), mu))
        return torch.cat([A, c[None]]), mu

    def moments(self, G: torch.Tensor):
        n = G[:, -1].clamp(min=1.0)
        mean = G[:, 1 : 1 + self.d] / n[:, None]
        var = (G[:, 0] / n - (mean * mean).sum(1)) / self.d
        return G[:, -1], mean, var[:, None, None] * torch.eye(self.d, dtype=G.dtype)


def _blobs(n=300, k=3, d=2, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])[:k, :d]
    y = rng.integers(0, k, n)
    return torch.as_tensor(centres[y] + rng.normal(size=(n, d))), y


def test_the_family_implements_both_interfaces():
    fam = FixedVarianceFamily(2)
    assert isinstance(fam, EMFamily) and isinstance(fam, ConjugateFamily)


def test_marginal_likelihood_matches_the_gaussian_integral():
    fam = FixedVarianceFamily(2, s2=0.7, t2=3.0)
    X = torch.as_tensor(np.random.default_rng(1).normal(size=(5, 2)))
    G = fam.statistics_map(X).sum(0, keepdim=True)
    # x (5 x 2, flattened per dimension) ~ N(0, s2 I + t2 11^T), independently in each dimension
    cov = 0.7 * torch.eye(5, dtype=torch.float64) + 3.0 * torch.ones(5, 5, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=torch.float64), cov)
    ref = sum(mvn.log_prob(X[:, j]) for j in range(2))
    assert float(fam.log_marginal_likelihood(G)[0]) == pytest.approx(float(ref), rel=1e-10)


def test_em_runs_the_new_family():
    X, y = _blobs()
    fam = FixedVarianceFamily(2)
    feats = Features(X, fam.feature_map, 64)
    start = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    params = IsoParams(torch.full((3,), 1 / 3, dtype=torch.float64), start)
    state = {"params": params}
    result = Engine(dtype="float64", max_iter=50, tol=1e-8, random_state=0).run(
        [Step("em", em.em_step(fam, feats))], state
    )
    h = np.array(result.history)
    assert np.all(np.diff(h) >= -1e-9)  # EM (MAP) never decreases its objective
    A, c = fam.log_prob_coefficients(state["params"])
    labels = em.argmax_chunks(feats, A, c).numpy()
    assert metrics.adjusted_rand_index(y, labels) > 0.98


def test_split_merge_runs_the_new_family_and_finds_k():
    X, y = _blobs(seed=2)
    fam = FixedVarianceFamily(2)
    feats = Features(X, fam.statistics_map, 64)
    engine = Engine(dtype="float64", max_iter=60, tol=0.0, random_state=0, keep_best=False)
    cfg = splitmerge.SamplerConfig(alpha=1.0, family=fam, burn_in=30)
    state = {"sampler": splitmerge.init_state(feats, fam, engine.generator, X.device)}
    engine.run([Step("splitmerge", lambda s, it: splitmerge.sweep(s["sampler"], cfg, it))], state)
    st = state["sampler"]
    assert st.k_trace[-1] == 3 and st.n_splits >= 2
    assert metrics.adjusted_rand_index(y, st.best_z.numpy()) > 0.98
