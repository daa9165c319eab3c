"""Differentiable image transformations for DTI clustering (Monnier, Groueix, Aubry 2020).

Each module maps a prototype batch ``x`` (M, C, H, W) and predicted parameters ``p`` (M, P) to the
transformed batch. Every module is exactly the identity at ``p = 0``, and the parameters are
predicted by :class:`ClusterHeads` whose last layer starts at zero, so a freshly added module does
not change the reconstruction. Spatial modules warp with ``torch.nn.functional.grid_sample`` and,
for the DTI GMM, warp a per-pixel variance image with the same sampling grid.

Modules: ``"colour"`` (per-channel scale and shift), ``"affine"``, ``"projective"`` (homography),
``"tps"`` (thin-plate spline on a control-point grid) and ``"morpho"`` (soft dilation / erosion by a
log-sum-exp pooling written as a box convolution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SPATIAL = ("affine", "projective", "tps")
ALL_TRANSFORMS = ("colour", "affine", "projective", "tps", "morpho")
_ALIASES = {"color": "colour", "morphological": "morpho", "homography": "projective", "thinplate": "tps"}


def canonical_name(name: str) -> str:
    """Canonical module name (``"color"`` -> ``"colour"`` ...) or a ``ValueError``."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in ALL_TRANSFORMS:
        raise ValueError(
            f"unknown transformation {name!r}; choose from {list(ALL_TRANSFORMS)} (or 'identity' alone)."
        )
    return key


def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1] (align_corners=False), shape (H*W, 2) as (x, y)."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def _sample(x: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


class Transform(nn.Module):
    """Base class: ``n_params`` numbers per image, identity at zero."""

    name = "transform"
    spatial = False
    n_params = 0

    def forward(
        self, x: torch.Tensor, params: torch.Tensor, var: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class ColourTransform(Transform):
    """``x * (1 + a_c) + b_c`` per channel; a variance image is scaled by ``(1 + a_c)^2``."""

    name = "colour"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.n_params = 2 * channels

    def forward(self, x, params, var=None):
        c = self.channels
        scale = (1 + params[:, :c]).view(-1, c, 1, 1)
        shift = params[:, c:].view(-1, c, 1, 1)
        out = x * scale + shift
        return out, (var * scale.square() if var is not None else None)


class _GridTransform(Transform):
    spatial = True

    def __init__(self, padding: str = "border") -> None:
        super().__init__()
        self.padding = padding

    def grid(self, params: torch.Tensor, h: int, w: int) -> torch.Tensor:  # (M, H, W, 2)
        raise NotImplementedError

    def forward(self, x, params, var=None):
        m, _, h, w = x.shape
        grid = self.grid(params, h, w)
        out = _sample(x, grid, self.padding)
        return out, (_sample(var, grid, "border") if var is not None else None)


class AffineTransform(_GridTransform):
    """Sampling grid ``(I + A) g + t`` with the 2 x 3 matrix ``[A | t]`` predicted (6 numbers)."""

    name = "affine"
    n_params = 6

    def grid(self, params, h, w):
        g = _base_grid(h, w, params.device, params.dtype)  # (HW, 2)
        theta = params.view(-1, 2, 3)
        out = g + torch.einsum("mij,nj->mni", theta[:, :, :2], g) + theta[:, None, :, 2]
        return out.view(-1, h, w, 2)


class ProjectiveTransform(_GridTransform):
    """Homography ``H = I + [p; 0]`` (8 numbers, ``H_33 = 1``) applied to homogeneous coordinates."""

    name = "projective"
    n_params = 8

    def grid(self, params, h, w):
        g = _base_grid(h, w, params.device, params.dtype)
        gh = torch.cat([g, torch.ones_like(g[:, :1])], dim=1)  # (HW, 3)
        delta = torch.cat([params, torch.zeros_like(params[:, :1])], dim=1).view(-1, 3, 3)
        # (I + delta) gh = gh + delta gh, so p = 0 gives the base grid exactly.
        proj = gh + torch.einsum("mij,nj->mni", delta, gh)
        denom = proj[..., 2:]
        denom = torch.where(denom.abs() < 1e-3, torch.full_like(denom, 1e-3), denom)  # keep it finite
        return (proj[..., :2] / denom).view(-1, h, w, 2)


class TPSTransform(_GridTransform):
    """Thin-plate spline: the ``grid_size^2`` control points move by predicted offsets.

    The dense displacement is linear in the control-point offsets ``d`` (Bookstein 1989): with the
    TPS system ``L = [[K, P], [P^T, 0]]``, ``K_ij = U(|c_i - c_j|)``, ``U(r) = r^2 log r^2``, the
    warp of pixel ``g`` is ``g + M(g) d`` where ``M = [U(g, c), 1, g] L^{-1}[:, :n]``; ``M`` is
    precomputed per image size.
    """

    name = "tps"

    def __init__(self, grid_size: int = 4, padding: str = "border") -> None:
        super().__init__(padding)
        self.grid_size = int(grid_size)
        self.n_params = 2 * self.grid_size**2
        lin = torch.linspace(-1, 1, self.grid_size, dtype=torch.float64)
        cy, cx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("ctrl", torch.stack([cx.reshape(-1), cy.reshape(-1)], 1), persistent=False)
        self._cache: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def _u(d2: torch.Tensor) -> torch.Tensor:
        return torch.where(d2 > 0, d2 * torch.log(d2.clamp(min=1e-12)), torch.zeros_like(d2))

    def _matrix(self, h: int, w: int, device, dtype) -> torch.Tensor:
        key = (h, w, str(device), dtype)
        if key not in self._cache:
            c = self.ctrl.to(torch.float64).cpu()
            n = c.shape[0]
            k = self._u(torch.cdist(c, c).square())
            p = torch.cat([torch.ones(n, 1, dtype=torch.float64), c], 1)
            L = torch.zeros(n + 3, n + 3, dtype=torch.float64)
            L[:n, :n], L[:n, n:], L[n:, :n] = k, p, p.T
            g = _base_grid(h, w, torch.device("cpu"), torch.float64)
            ones = torch.ones(g.shape[0], 1, dtype=torch.float64)
            a = torch.cat([self._u(torch.cdist(g, c).square()), ones, g], 1)
            m = a @ torch.linalg.inv(L)[:, :n]  # (HW, n)
            self._cache[key] = m.to(device=device, dtype=dtype)
        return self._cache[key]

    def grid(self, params, h, w):
        g = _base_grid(h, w, params.device, params.dtype)
        m = self._matrix(h, w, params.device, params.dtype)
        d = params.view(-1, self.grid_size**2, 2)
        return (g + torch.einsum("pn,mnj->mpj", m, d)).view(-1, h, w, 2)


class MorphologicalTransform(Transform):
    """Soft dilation (``a > 0``) or erosion (``a < 0``) blended with the input, ``a = tanh(p)``.

    ``y = x + a (D(x) - x)`` for ``a >= 0`` and ``y = x + a (x - E(x))`` for ``a < 0``, where
    ``D(x) = x_max + log(mean_window exp(beta (x - x_max))) / beta`` is a soft max pooling computed
    by a box convolution (``avg_pool2d`` with stride 1) of ``exp`` (no unfold), and ``E(x) = -D(-x)``.
    At ``p = 0`` the output equals the input exactly, and ``dy/da = D(x) - x`` is non-zero.
    """

    name = "morpho"
    n_params = 1

    def __init__(self, channels: int, kernel_size: int = 3, beta: float = 20.0) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"morpho_kernel must be odd, got {kernel_size}.")
        self.channels = channels
        self.kernel_size = kernel_size
        self.beta = float(beta)

    def _dilate(self, x: torch.Tensor) -> torch.Tensor:
        xmax = x.amax(dim=(2, 3), keepdim=True).detach()
        e = torch.exp(self.beta * (x - xmax))
        pad = self.kernel_size // 2
        e = F.pad(e, (pad, pad, pad, pad), mode="replicate")
        s = F.avg_pool2d(e, self.kernel_size, stride=1)  # the box convolution, one pass per channel
        return xmax + torch.log(s.clamp(min=1e-30)) / self.beta

    def forward(self, x, params, var=None):
        a = torch.tanh(params[:, :1]).view(-1, 1, 1, 1)
        # s = sign(a) (+1 at 0): a >= 0 gives x + a (D(x) - x); a < 0 gives x + a (x - E(x)) with
        # E(x) = -D(-x); both are x + a (D(s x) - s x), so one pooling pass serves the whole batch.
        s = torch.where(a >= 0, 1.0, -1.0).to(x.dtype).detach()
        return x + a * (self._dilate(s * x) - s * x), var


def build_transform(name: str, channels: int, *, tps_grid: int = 4, morpho_kernel: int = 3) -> Transform:
    """Instantiate a module by (canonical or alias) name."""
    key = canonical_name(name)
    if key == "colour":
        return ColourTransform(channels)
    if key == "affine":
        return AffineTransform()
    if key == "projective":
        return ProjectiveTransform()
    if key == "tps":
        return TPSTransform(tps_grid)
    return MorphologicalTransform(channels, morpho_kernel)


class ClusterHeads(nn.Module):
    """K independent MLP heads ``feature (F) -> hidden -> P`` evaluated in one batched einsum.

    The weights are stacked with the cluster as leading dimension, so reassigning a cluster copies a
    slice. The last layer starts at zero: every head predicts the identity at initialisation.
    """

    def __init__(self, n_clusters: int, in_features: int, n_params: int, hidden: int = 64) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.w1 = nn.Parameter(torch.empty(n_clusters, in_features, hidden).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.zeros(n_clusters, hidden))
        self.w2 = nn.Parameter(torch.zeros(n_clusters, hidden, n_params))
        self.b2 = nn.Parameter(torch.zeros(n_clusters, n_params))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat (B, F) -> parameters (B, K, P)."""
        h = torch.relu(torch.einsum("bf,kfh->bkh", feat, self.w1) + self.b1)
        return torch.einsum("bkh,khp->bkp", h, self.w2) + self.b2
