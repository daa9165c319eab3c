"""Multi-crop views of image batches on the device (SwAV / CLOT style augmentations).

A :class:`ViewSpec` says how many global and local (small, zoomed) views to draw and at which sizes;
:func:`multi_crop` draws them for a batch (N, C, H, W) in one ``affine_grid`` / ``grid_sample`` pass per
view, so the crops are computed where the batch lives (CPU or GPU). Caron et al. (2020, SwAV, Sec. 3.2):
two global views plus several low-resolution views of small regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ViewSpec", "intensity_jitter", "multi_crop", "random_resized_crops"]


@dataclass(frozen=True)
class ViewSpec:
    """How to draw views of an image batch.

    n_global, global_size, global_scale : global views, their side in pixels (None: the images') and
        the range of the share of the image area each one covers.
    n_local, local_size, local_scale : the same for the small views (None: 3/7 of the image side,
        SwAV's 96 / 224).
    ratio : range of the crops' aspect ratios (log-uniform). flip : random horizontal flips (off
        for digits and text). jitter : brightness and contrast factors drawn in [1 - jitter, 1 + jitter].
    """

    n_global: int = 2
    global_size: int | None = None
    global_scale: tuple[float, float] = (0.4, 1.0)
    n_local: int = 0
    local_size: int | None = None
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    jitter: float = 0.4

    def __post_init__(self) -> None:
        if self.n_global < 1 or self.n_local < 0:
            raise ValueError(f"a view spec needs n_global >= 1 and n_local >= 0, got {self.n_global} and "
                             f"{self.n_local}.")
        for name in ("global_scale", "local_scale", "ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi or (name != "ratio" and hi > 1):
                bound = " <= 1" if name != "ratio" else ""
                raise ValueError(f"{name} must be a range 0 < low <= high{bound}, got {getattr(self, name)}.")
        for name in ("global_size", "local_size"):
            size = getattr(self, name)
            if size is not None and size < 1:
                raise ValueError(f"{name} must be a positive number of pixels, got {size}.")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}.")

    def sizes(self, side: int) -> list[int]:
        """The side in pixels of every view, global views first, for images of side ``side``."""
        g = self.global_size or side
        loc = self.local_size or max(1, round(side * 3 / 7))
        return [g] * self.n_global + [loc] * self.n_local


def _uniform(
    n: int, lo: float, hi: float, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    return (torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo) + lo).to(like)


def random_resized_crops(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One random crop of every image of ``x`` (N, C, H, W), resized to (N, C, size, size): area share
    in ``scale``, aspect ratio log-uniform in ``ratio``, placed uniformly where it fits (bilinear)."""
    n = x.shape[0]
    area = _uniform(n, *scale, generator, x)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, x)
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)  # width and height as shares of the image's
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (_uniform(n, -1.0, 1.0, generator, x)) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (_uniform(n, -1.0, 1.0, generator, x)) * (1 - h)
    sign = torch.ones(n, dtype=x.dtype, device=x.device)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator).to(x.device) < 0.5, -sign, sign)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = nn.functional.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def intensity_jitter(
    x: torch.Tensor, strength: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random brightness (a factor) and contrast (around each image's mean) of ``x`` (N, C, H, W),
    both factors uniform in ``[1 - strength, 1 + strength]``."""
    if strength == 0:
        return x
    n = x.shape[0]
    b = _uniform(n, 1 - strength, 1 + strength, generator, x).view(n, 1, 1, 1)
    c = _uniform(n, 1 - strength, 1 + strength, generator, x).view(n, 1, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean) * b


def multi_crop(
    x: torch.Tensor, spec: ViewSpec, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """The views of ``spec`` of the batch ``x`` (N, C, H, W): ``spec.n_global`` global views then
    ``spec.n_local`` local ones, each (N, C, s, s) with s from :meth:`ViewSpec.sizes`."""
    if x.ndim != 4:
        raise ValueError(f"multi_crop needs images (N, C, H, W), got shape {tuple(x.shape)}.")
    side = min(x.shape[-2:])
    views = []
    for i, size in enumerate(spec.sizes(side)):
        scale = spec.global_scale if i < spec.n_global else spec.local_scale
        v = random_resized_crops(x, size, scale, spec.ratio, spec.flip, generator)
        views.append(intensity_jitter(v, spec.jitter, generator))
    return views
