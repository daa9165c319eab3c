"""Softmax heads and backbones for discriminative clustering, and on-device augmentations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "ChannelsLast", "PrototypeHead", "augment", "build_head", "frozen_batchnorm_stats",
    "nearest_centroid_init", "vat_view",
]


class PrototypeHead(nn.Module):
    """Logits ``scale * <f/|f|, w_k/|w_k|>`` (L2-normalised features and prototypes, SwAV style)."""

    def __init__(self, in_features: int, n_clusters: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_clusters, in_features) * in_features**-0.5)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.weight, dim=1).T


class ChannelsLast(nn.Module):
    """Puts image batches (N, C, H, W) in channels-last memory (same values): with the convolution
    weights in that layout too, CPU convolutions and max pooling run in oneDNN's faster NHWC kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def nearest_centroid_init(module: nn.Module, centers: torch.Tensor, temperature: float) -> nn.Module:
    """Set a ``"linear"`` head (its last layer an ``nn.Linear``) to the nearest-centroid classifier of
    ``centers`` (K, D): logits ``-|x - c_k|^2 / (2 T)`` up to a per-row constant, i.e. weight
    ``c_k / T`` and bias ``-|c_k|^2 / (2 T)``; its softmax is the posterior of an isotropic Gaussian
    mixture with equal weights and variance ``T`` per dimension. Returns ``module``."""
    last = module[-1] if isinstance(module, nn.Sequential) else None
    if not isinstance(last, nn.Linear) or tuple(last.weight.shape) != tuple(centers.shape):
        raise ValueError(
            "init='kmeans' sets a linear head (an nn.Linear last layer of shape (K, D)); use "
            "head='linear' without normalize_prototypes, or init='random'."
        )
    c = centers.to(last.weight)
    with torch.no_grad():
        last.weight.copy_(c / temperature)
        last.bias.copy_(-(c * c).sum(1) / (2.0 * temperature))
    return module


def build_head(
    head: str | nn.Module,
    in_shape: tuple[int, ...],
    n_clusters: int,
    *,
    hidden: int = 256,
    normalize_prototypes: bool = False,
    width: int = 32,
) -> nn.Module:
    """``"linear"`` / ``"mlp"`` on flattened inputs, ``"cnn"`` (VGG-4-like) on (C, H, W) images, or a module.

    The module maps (N, *in_shape) to (N, n_clusters) logits. ``"mlp"`` is IMSAT's
    D-hidden-hidden-K with batch normalisation and ReLU; ``"cnn"`` has ``width``, 2, 4 and 4 x ``width``
    channels in its four 3 x 3 convolutions (its cost grows as width squared).
    """
    if isinstance(head, nn.Module):
        return head
    d = int(torch.tensor(in_shape).prod())
    last = (
        (lambda f: PrototypeHead(f, n_clusters))
        if normalize_prototypes
        else (lambda f: nn.Linear(f, n_clusters))
    )
    if head == "linear":
        return nn.Sequential(nn.Flatten(), last(d))
    if head == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            last(hidden),
        )
    if head == "cnn":
        if len(in_shape) != 3:
            raise ValueError(
                f"head='cnn' needs images (N, C, H, W) or (N, H, W); got feature shape {in_shape}."
            )
        c = in_shape[0]
        if min(in_shape[1:]) < 8:
            raise ValueError(
                "head='cnn' needs images of at least 8 x 8 pixels (it pools three times by 2); got "
                f"{in_shape[1]} x {in_shape[2]}."
            )

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

        w = int(width)
        cnn = nn.Sequential(
            ChannelsLast(),
            *block(c, w),
            *block(w, 2 * w),
            *block(2 * w, 4 * w),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            last(4 * w),
        )
        return cnn.to(memory_format=torch.channels_last)
    raise ValueError(f"head={head!r} is not supported; choose 'linear', 'mlp', 'cnn' or pass an nn.Module.")


def augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    noise: float = 0.1,
    max_shift: float = 0.1,
    max_rotate: float = 0.2,
) -> torch.Tensor:
    """A random view on the device: Gaussian noise for vectors; random affine + noise for images."""
    if x.ndim == 4:
        n = x.shape[0]
        r = lambda *s: torch.rand(*s, generator=generator).to(x) * 2 - 1  # noqa: E731
        ang = r(n) * max_rotate
        sc = 1 + 0.1 * r(n)
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1] = sc * ang.cos(), -sc * ang.sin()
        theta[:, 1, 0], theta[:, 1, 1] = sc * ang.sin(), sc * ang.cos()
        theta[:, :, 2] = r(n, 2) * max_shift * 2
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = nn.functional.grid_sample(x, grid, align_corners=False)
    eps = torch.randn(x.shape, generator=generator).to(x)
    return x + noise * eps


@contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Forward passes inside keep every BatchNorm's running mean / variance unchanged.

    The batch statistics are still used in training mode; only the running averages used at
    prediction time are not updated (momentum 0), as VAT implementations do for perturbed inputs
    (``update_batch_stats=False``): otherwise the noisy probe ``x + xi d`` and the adversarial view
    would shift the statistics that ``predict`` normalises clean inputs with.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        # num_batches_tracked too: with momentum=None the running average is cumulative over it
        for m, (mom, count) in zip(norms, saved, strict=True):
            m.momentum = mom
            if count is not None:
                m.num_batches_tracked.copy_(count)


def vat_view(
    module: nn.Module,
    x: torch.Tensor,
    logits: torch.Tensor,
    eps: float | torch.Tensor = 1.0,
    xi: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A virtual-adversarial view ``x + eps * r`` (VAT, Miyato et al. 2018; IMSAT's self-augmentation).

    ``r`` is the unit direction (per sample, over all feature dimensions) that most increases
    :math:`KL(\sigma(x) \| \sigma(x + r))`, found by one power iteration from a random direction
    scaled to length ``xi``. ``logits`` (N, K) are the module's outputs on ``x`` (used as the fixed
    target); ``eps`` a scalar or an (N,) per-sample radius. Returns a detached tensor shaped like ``x``.
    """
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    d = torch.randn(x.shape, generator=generator).to(x)
    d = (xi * nn.functional.normalize(flat(d), dim=1)).reshape(x.shape).requires_grad_(True)
    target = logits.detach().log_softmax(1)
    with frozen_batchnorm_stats(module):
        out = module(x + d).log_softmax(1)
    kl = (target.exp() * (target - out)).sum(1).sum()
    (g,) = torch.autograd.grad(kl, d)
    r = nn.functional.normalize(flat(g), dim=1)
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device).reshape(-1, 1)
    return (flat(x) + e * r).reshape(x.shape).detach()
