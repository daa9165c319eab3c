"""Losses: closed forms, torch peers and hypothesis properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesclust import losses as L

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def logits_st(draw, max_n=6, max_k=7, scale=8.0):
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(2, max_k))
    seed = draw(st.integers(0, 2**31 - 1))
    s = draw(st.floats(0.1, scale))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * s


def _soft(logits: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(logits.shape, generator=g, dtype=logits.dtype).mul(2).softmax(-1)


@SETTINGS
@given(logits_st(), st.integers(0, 10_000))
def test_collision_ce_equals_ce_for_one_hot(z, seed):
    labels = torch.randint(0, z.shape[1], (z.shape[0],), generator=torch.Generator().manual_seed(seed))
    onehot = F.one_hot(labels, z.shape[1]).double()
    want = F.cross_entropy(z, labels)
    assert torch.allclose(L.collision_cross_entropy(z, onehot), want, atol=1e-10)
    assert torch.allclose(L.collision_cross_entropy(z, labels), want, atol=1e-10)
    assert torch.allclose(L.cross_entropy(z, onehot), want, atol=1e-10)


@SETTINGS
@given(logits_st())
def test_uniform_target_gives_zero_gradient(z):
    z = z.clone().requires_grad_(True)
    u = torch.full_like(z, 1.0 / z.shape[1])
    loss = L.collision_cross_entropy(z, u)
    (g,) = torch.autograd.grad(loss, z)
    assert torch.allclose(loss, torch.tensor(math.log(z.shape[1]), dtype=z.dtype), atol=1e-10)
    assert g.abs().max() < 1e-10


@SETTINGS
@given(logits_st(), st.integers(0, 10_000))
def test_collision_ce_symmetric(z, seed):
    y = _soft(z, seed)
    a = L.collision_cross_entropy(z, y, reduction="none")
    b = L.collision_cross_entropy(y.log(), z.softmax(-1), reduction="none")
    assert torch.allclose(a, b, atol=1e-10)
    # bounded below by Shannon CE? no: by Jensen, H_C <= H(y, sigma) (log of an average >= average log)
    assert bool((a <= L.cross_entropy(z, y, reduction="none") + 1e-10).all())


@SETTINGS
@given(logits_st())
def test_renyi_tends_to_shannon(z):
    h1 = L.shannon_entropy(z)
    for a in (1 - 1e-6, 1 + 1e-6):
        assert torch.allclose(L.renyi_entropy(z, a), h1, atol=1e-4)
    # Renyi entropy decreases in alpha; collision entropy at alpha = 2
    h2 = L.renyi_entropy(z, 2.0)
    assert bool((h2 <= h1 + 1e-10).all())
    p = z.softmax(-1)
    assert torch.allclose(h2, -(p**2).sum(-1).log(), atol=1e-10)
    assert torch.allclose(L.renyi_entropy(z, 0.5), 2 * p.sqrt().sum(-1).log(), atol=1e-10)


@SETTINGS
@given(logits_st())
def test_fairness_forms(z):
    p = z.softmax(-1).mean(0)
    k = z.shape[1]
    h = -(p * p.log()).sum()
    assert torch.allclose(L.fairness(z, "entropy"), -h, atol=1e-10)
    assert torch.allclose(L.fairness(z, "kl_uniform"), math.log(k) - h, atol=1e-10)
    u = torch.full_like(p, 1 / k)
    assert torch.allclose(L.fairness(z, "kl_reverse"), (u * (u.log() - p.log())).sum(), atol=1e-10)
    assert L.fairness(z, "kl_uniform") >= -1e-12 and L.fairness(z, "kl_reverse") >= -1e-12


@SETTINGS
@given(logits_st())
def test_mi_loss_is_negative_mutual_information(z):
    p = z.softmax(-1)
    pm = p.mean(0)
    mi = -(pm * pm.log()).sum() + (p * p.log()).sum(-1).mean()
    assert torch.allclose(L.mi_loss(z), -mi, atol=1e-10)
    assert L.mi_loss(z) <= 1e-10  # MI >= 0
    # the fairness term can be swapped: KL(u || mean) instead of -H(mean)
    want = L.decisiveness(z, 2.0) + 3.0 * L.fairness(z, "kl_reverse")
    assert torch.allclose(L.mi_loss(z, 3.0, 2.0, "kl_reverse"), want, atol=1e-12)
    with pytest.raises(ValueError, match="kind='gini' is not supported"):
        L.mi_loss(z, fairness_kind="gini")


@SETTINGS
@given(logits_st(), st.integers(0, 10_000))
def test_reverse_ce_and_self_augmentation(z, seed):
    y = _soft(z, seed)
    p = z.softmax(-1)
    assert torch.allclose(
        L.reverse_cross_entropy(z, y, min_log_target=-1e9), -(p * y.log()).sum(-1).mean(), atol=1e-10
    )
    labels = y.argmax(-1)
    rce = L.reverse_cross_entropy(z, labels, reduction="none")
    assert torch.allclose(rce, 4.0 * (1 - p.gather(1, labels[:, None])[:, 0]), atol=1e-10)
    w = _soft(z, seed + 1).log()
    sym = L.self_augmentation_loss(z, w, reduction="none")
    q = w.softmax(-1)
    kl = 0.5 * ((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1))
    assert torch.allclose(sym, kl, atol=1e-10)
    assert torch.allclose(L.self_augmentation_loss(z, z), torch.zeros((), dtype=z.dtype), atol=1e-12)


def test_log_space_is_stable_for_confident_logits():
    z = torch.tensor([[1000.0, 0.0, -1000.0]])
    y = torch.tensor([[0.0, 0.5, 0.5]])
    for fn in (L.collision_cross_entropy, L.cross_entropy, L.reverse_cross_entropy):
        assert torch.isfinite(fn(z, y))
    assert torch.allclose(L.collision_cross_entropy(z, y), torch.tensor(1000.0 + math.log(2.0)))
    assert torch.isfinite(L.renyi_entropy(z, 3.0)).all() and torch.isfinite(L.mi_loss(z))


def test_batched_leading_dimensions():
    z = torch.randn(3, 4, 5, dtype=torch.float64)
    y = torch.randn(3, 4, 5, dtype=torch.float64).softmax(-1)
    assert L.collision_cross_entropy(z, y, reduction="none").shape == (3, 4)
    assert torch.allclose(
        L.collision_cross_entropy(z, y), L.collision_cross_entropy(z.reshape(12, 5), y.reshape(12, 5))
    )
    assert L.log_mean_prediction(z).shape == (5,)


def test_errors():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="alpha must be"):
        L.renyi_entropy(z, 0.0)
    with pytest.raises(ValueError, match="reduction="):
        L.cross_entropy(z, z.softmax(-1), reduction="avg")
    with pytest.raises(ValueError, match="kind="):
        L.fairness(z, "gini")
    with pytest.raises(ValueError, match="same shape"):
        L.collision_cross_entropy(z, torch.rand(4, 2))
    with pytest.raises(ValueError, match="one label per row"):
        L.cross_entropy(z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        L.cross_entropy(z, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="must match"):
        L.self_augmentation_loss(z, torch.randn(4, 2))


def _noisy_fit(fn, Xtr, tgt, d, k):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, k))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        fn(net(Xtr), tgt).backward()
        opt.step()
    return net


def test_label_noise_robustness_collision_and_reverse_ce():
    """Supervised MLP on 4 Gaussian classes; a fraction eta of training labels is resampled uniformly
    and the targets are softened to (1 - eta) y + eta u. Standard CE fits the noise; collision and
    reverse CE keep test accuracy (the thesis' Figure 2.2 in miniature)."""
    torch.manual_seed(0)
    n, d, k = 600, 10, 4
    means = torch.randn(k, d) * 1.5
    yt = torch.randint(0, k, (2 * n,))
    X = means[yt] + torch.randn(2 * n, d)
    Xtr, ytr, Xte, yte = X[:n], yt[:n], X[n:], yt[n:]
    g = torch.Generator().manual_seed(1)
    for eta in (0.0, 0.5, 0.8):
        flip = torch.rand(n, generator=g) < eta
        noisy = torch.where(flip, torch.randint(0, k, (n,), generator=g), ytr)
        tgt = (1 - eta) * F.one_hot(noisy, k).float() + eta / k
        acc = {}
        for name, fn in (
            ("ce", L.cross_entropy),
            ("collision", L.collision_cross_entropy),
            ("rce", L.reverse_cross_entropy),
        ):
            net = _noisy_fit(fn, Xtr, tgt, d, k)
            with torch.no_grad():
                acc[name] = float((net(Xte).argmax(1) == yte).float().mean())
        if eta == 0.0:
            assert min(acc.values()) > 0.95
        else:
            assert acc["collision"] > acc["ce"] + 0.15 and acc["rce"] > acc["ce"] + 0.15, (eta, acc)


def test_swapped_prediction_loss_is_the_mean_of_the_crossed_ces():
    z1, z2 = _soft(torch.zeros(5, 4), 1).log() * 3, _soft(torch.zeros(5, 4), 2).log()
    q1, q2 = _soft(z1, 3), _soft(z2, 4)
    want = 0.5 * (F.cross_entropy(z2, q1) + F.cross_entropy(z1, q2))
    assert torch.allclose(L.swapped_prediction_loss((z1, z2), (q1, q2)), want, atol=1e-12)


def test_clustering_loss_registry_entries():
    """Every registry entry computes its named loss; the self-labelling ones name their solver."""
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = _soft(z, 5)
    w = L.LossWeights(lam=1.5, renyi_order=3.0, fairness="kl_reverse")
    reg = L.CLUSTERING_LOSSES
    assert list(reg) == ["mi", "renyi", "collision", "sela", "swav", "ce", "rce"]
    assert torch.equal(reg["mi"].batch_loss(z, None, w), L.mi_loss(z, 1.5, 1.0, "kl_reverse"))
    assert torch.equal(reg["renyi"].batch_loss(z, None, w), L.mi_loss(z, 1.5, 3.0, "kl_reverse"))
    assert torch.equal(reg["collision"].batch_loss(z, y, w), L.collision_cross_entropy(z, y))
    assert torch.equal(reg["ce"].batch_loss(z, y, w), L.cross_entropy(z, y))
    assert torch.equal(reg["sela"].batch_loss(z, y, w), L.cross_entropy(z, y))
    assert torch.equal(reg["rce"].batch_loss(z, y, w), L.reverse_cross_entropy(z, y))
    assert torch.equal(reg["swav"].batch_loss((z, 2 * z), (y, y), w),
                       L.swapped_prediction_loss((z, 2 * z), (y, y)))
    solvers = {name: spec.pseudo_labels for name, spec in reg.items()}
    assert solvers == {"mi": None, "renyi": None, "collision": "em_collision", "sela": "sela",
                       "swav": "swav", "ce": "em_collision", "rce": "em_reverse"}
