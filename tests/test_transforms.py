"""DTI transformation modules: identity at zero, known warps, gradients to every head."""

from __future__ import annotations

import math

import pytest
import torch

from bayesclust.models.dti import DTINetwork
from bayesclust.models.transforms import (
    ALL_TRANSFORMS,
    AffineTransform,
    ClusterHeads,
    MorphologicalTransform,
    ProjectiveTransform,
    TPSTransform,
    build_transform,
    canonical_name,
)


@pytest.mark.parametrize("name", ALL_TRANSFORMS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_module_is_identity_at_zero(name, channels):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, channels, 13, 17, generator=gen)
    var = torch.rand(4, channels, 13, 17, generator=gen) + 0.1
    t = build_transform(name, channels)
    y, v = t(x, torch.zeros(4, t.n_params), var)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(v, var, atol=1e-5, rtol=0)


def test_network_with_all_modules_active_reproduces_prototypes_at_init():
    protos = torch.rand(3, 1, 12, 12)
    net = DTINetwork(protos, list(ALL_TRANSFORMS), gmm=True, encoder_width=8)
    net.active[:] = True
    means, var = net.reconstruct(torch.rand(5, 1, 12, 12))
    torch.testing.assert_close(means, protos.unsqueeze(0).expand(5, -1, -1, -1, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(var, net.sigma().square().unsqueeze(0).expand_as(var), atol=1e-5, rtol=0)


def test_affine_translation_moves_image_by_whole_pixels():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 3] = 1.0
    # a grid offset of +2/W samples the pixel two to the right: the content moves two pixels left
    params = torch.tensor([[0.0, 0.0, 2 * 2 / 8, 0.0, 0.0, 0.0]])
    y, _ = AffineTransform()(x, params)
    assert y[0, 0, 3, 1] == pytest.approx(1.0, abs=1e-6)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-6)


def test_projective_with_affine_part_equals_affine():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 9, 9, generator=gen)
    a = 0.1 * torch.randn(2, 6, generator=gen)
    ya, _ = AffineTransform()(x, a)
    yp, _ = ProjectiveTransform()(x, torch.cat([a, torch.zeros(2, 2)], 1))
    torch.testing.assert_close(yp, ya, atol=1e-5, rtol=0)


def test_tps_uniform_offset_is_a_translation():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 10, 10, generator=gen)
    tps = TPSTransform(grid_size=3)
    shift = torch.tensor([0.2, -0.1]).repeat(9).view(1, -1)  # every control point moves the same
    aff = torch.tensor([[0.0, 0.0, 0.2, 0.0, 0.0, -0.1]])
    torch.testing.assert_close(tps(x, shift)[0], AffineTransform()(x, aff)[0], atol=1e-5, rtol=0)


def test_morphological_dilation_grows_and_erosion_shrinks():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 3:6, 3:6] = 1.0
    morph = MorphologicalTransform(1, kernel_size=3)
    big = 3.0  # tanh(3) ~ 0.995: nearly full dilation / erosion
    grown, _ = morph(x, torch.tensor([[big]]))
    shrunk, _ = morph(x, torch.tensor([[-big]]))
    assert float(grown[0, 0, 2, 2]) > 0.5 and float(grown[0, 0, 4, 4]) > 0.95
    assert float(shrunk[0, 0, 3, 3]) < 0.5 and float(shrunk[0, 0, 4, 4]) > 0.95
    assert float(grown.sum()) > float(x.sum()) > float(shrunk.sum())


def test_gradients_flow_to_every_head_and_every_cluster():
    torch.manual_seed(0)
    protos = torch.rand(3, 1, 12, 12)
    net = DTINetwork(protos, list(ALL_TRANSFORMS), encoder_width=8, gmm=True)
    net.active[:] = True
    x = torch.rand(6, 1, 12, 12)
    means, var = net.reconstruct(x)
    # every cluster's reconstruction enters the loss (as in the GMM likelihood)
    ((means - x.unsqueeze(1)).square() / var).sum().backward()
    for name, head in net.heads.items():
        g = head.w2.grad.flatten(1).abs().sum(1) + head.b2.grad.abs().sum(1)
        assert bool((g > 0).all()), f"no gradient reached a head of module {name}: {g}"
    assert net.prototypes.grad.abs().sum() > 0 and net.log_sigma.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.encoder.parameters())


def test_cluster_heads_start_at_zero_and_shapes():
    heads = ClusterHeads(4, 10, 6, hidden=5)
    out = heads(torch.randn(7, 10))
    assert out.shape == (7, 4, 6) and bool((out == 0).all())


def test_names_and_errors():
    assert canonical_name("Color") == "colour" and canonical_name("homography") == "projective"
    with pytest.raises(ValueError, match="unknown transformation 'rotate'"):
        build_transform("rotate", 1)
    with pytest.raises(ValueError, match="morpho_kernel must be odd"):
        MorphologicalTransform(1, kernel_size=4)


def test_rotation_by_affine_is_exact_on_a_symmetric_pattern():
    x = torch.zeros(1, 1, 11, 11)
    x[0, 0, 5, :] = 1.0  # horizontal bar through the centre
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    y, _ = AffineTransform()(x, torch.tensor([[c - 1, -s, 0.0, s, c - 1, 0.0]]))
    torch.testing.assert_close(y[0, 0, :, 5], torch.ones(11), atol=1e-4, rtol=0)
