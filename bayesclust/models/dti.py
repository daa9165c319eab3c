"""The DTI networks and losses (Monnier, Groueix, Aubry 2020, "Deep Transformation-Invariant Clustering").

Each cluster k has a prototype ``c_k`` (C, H, W) and, for each transformation module, an MLP head
``f_k`` on a shared CNN encoder that predicts how to warp ``c_k`` towards an image ``x``
(:class:`DTINetwork`). The losses of one mini-batch:

- :func:`kmeans_loss`: ``mean_i min_k ||x_i - T_{f_k(x_i)}(c_k)||^2`` (mean over pixels);
- :func:`gmm_loss`: ``-mean_i log sum_k pi_k N(x_i | T(c_k), T(sigma_k^2))`` per pixel, with the
  per-pixel variances warped by the spatial modules; the likelihood is the Pyro mixture
  :func:`dti_gmm_model` with the assignment enumerated (``TraceEnum_ELBO``).

The training loop is in :mod:`bayesclust.inference.dti_steps`, the estimators in
:mod:`bayesclust.estimators.dti`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.ops.indexing import Vindex
from torch import nn

from .transforms import ClusterHeads, build_transform

# --------------------------------------------------------------------------------------------
# the network: prototypes, encoder, heads, modules
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Small CNN: 3 x (conv3x3 - GroupNorm - ReLU), two max-pools, adaptive pool to 3 x 3, linear."""

    def __init__(self, channels: int, width: int = 32, out_features: int = 128) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.GroupNorm(8, w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.GroupNorm(8, 4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(3), nn.Flatten(),
            nn.Linear(4 * w * 9, out_features), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DTINetwork(nn.Module):
    """Prototypes (K, C, H, W), a shared encoder, one :class:`ClusterHeads` per module.

    ``active`` (a bool buffer, one per module) is the curriculum state: inactive modules are skipped.
    With ``gmm=True`` it also holds per-pixel scales ``sigma = sigma_min + exp(log_sigma)`` and
    mixing logits.
    """

    def __init__(
        self,
        prototypes: torch.Tensor,
        transforms: Sequence[str],
        *,
        gmm: bool = False,
        encoder_width: int = 32,
        feature_dim: int = 128,
        head_hidden: int = 64,
        tps_grid: int = 4,
        morpho_kernel: int = 3,
        sigma_min: float = 0.05,
        sigma_init: float = 0.3,
    ) -> None:
        super().__init__()
        k, c, h, w = prototypes.shape
        if min(h, w) < 4:
            raise ValueError(
                f"DTI needs images of at least 4 x 4 pixels (its encoder pools twice by 2); got {h} x {w}."
            )
        self.names = list(transforms)
        self.prototypes = nn.Parameter(prototypes.clone())
        self.encoder = Encoder(c, encoder_width, feature_dim)
        self.transforms = nn.ModuleDict(
            {n: build_transform(n, c, tps_grid=tps_grid, morpho_kernel=morpho_kernel) for n in self.names}
        )
        self.heads = nn.ModuleDict(
            {n: ClusterHeads(k, feature_dim, self.transforms[n].n_params, head_hidden) for n in self.names}
        )
        self.register_buffer("active", torch.zeros(len(self.names), dtype=torch.bool))
        self.gmm = gmm
        self.sigma_min = float(sigma_min)
        if gmm:
            start = math.log(max(sigma_init - sigma_min, 1e-6))
            self.log_sigma = nn.Parameter(torch.full_like(prototypes, start))
            self.mix_logits = nn.Parameter(torch.zeros(k, dtype=prototypes.dtype))
        else:
            self.log_sigma = None
            self.mix_logits = None

    @property
    def n_clusters(self) -> int:
        return self.prototypes.shape[0]

    def cluster_parameters(self) -> list[nn.Parameter]:
        """Parameters whose leading dimension is the cluster (copied on reassignment)."""
        out = [self.prototypes]
        if self.log_sigma is not None:
            out.append(self.log_sigma)
        for h in self.heads.values():
            out.extend([h.w1, h.b1, h.w2, h.b2])
        return out

    def n_parameters(self) -> int:
        """Number of trainable parameters the reconstruction depends on: prototypes, (GMM) variances
        and mixing logits, and, once a module is active, the encoder and every active module's heads."""
        params = [self.prototypes]
        if self.gmm:
            params += [self.log_sigma, self.mix_logits]
        if bool(self.active.any()):
            params += list(self.encoder.parameters())
            for i, name in enumerate(self.names):
                if bool(self.active[i]):
                    params += [*self.heads[name].parameters(), *self.transforms[name].parameters()]
        return sum(p.numel() for p in params if p.requires_grad)

    def sigma(self) -> torch.Tensor:
        return self.sigma_min + torch.exp(self.log_sigma)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, C, H, W) -> transformed prototypes (B, K, C, H, W) and variances (or None)."""
        b = x.shape[0]
        k = self.n_clusters
        shape = self.prototypes.shape[1:]
        out = self.prototypes.unsqueeze(0).expand(b, *self.prototypes.shape).reshape(b * k, *shape)
        var = None
        if self.gmm:
            var = self.sigma().square().unsqueeze(0).expand(b, *self.prototypes.shape).reshape(b * k, *shape)
        if bool(self.active.any()):
            feat = self.encoder(x)
            for i, name in enumerate(self.names):
                if bool(self.active[i]):
                    params = self.heads[name](feat).reshape(b * k, -1)
                    out, var = self.transforms[name](out, params, var)
        out = out.view(b, k, *shape)
        return out, (var.view(b, k, *shape) if var is not None else None)

    def kmeans_cost(self, x: torch.Tensor, recon: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error per pixel between x (B, C, H, W) and each reconstruction: (B, K)."""
        if recon is None:
            recon = self.reconstruct(x)[0]
        return (recon - x.unsqueeze(1)).square().flatten(2).mean(-1)

    def gmm_log_prob(self, x: torch.Tensor, recon=None) -> torch.Tensor:
        """``log pi_k + log N(x | T(c_k), T(sigma_k^2))`` summed over pixels: (B, K)."""
        means, var = recon if recon is not None else self.reconstruct(x)
        diff = (x.unsqueeze(1) - means).square() / var + torch.log(2 * math.pi * var)
        return torch.log_softmax(self.mix_logits, 0) - 0.5 * diff.flatten(2).sum(-1)


@config_enumerate
def dti_gmm_model(x: torch.Tensor, means: torch.Tensor, scales: torch.Tensor, logits: torch.Tensor) -> None:
    """The DTI GMM in Pyro: ``z_i ~ Cat(softmax(logits))``, ``x_i ~ N(means[i, z_i], scales[i, z_i])``.

    ``means`` and ``scales`` (B, K, C, H, W) are the per-image transformed prototypes and standard
    deviations, so the assignment is enumerated in parallel over K.
    """
    b = x.shape[0]
    with pyro.plate("data", b, dim=-1):
        z = pyro.sample("z", dist.Categorical(logits=logits))
        idx = torch.arange(b, device=x.device)
        loc = Vindex(means)[idx, z]
        scale = Vindex(scales)[idx, z]
        pyro.sample("x", dist.Normal(loc, scale).to_event(3), obs=x)


def _empty_guide(*args: Any, **kwargs: Any) -> None:
    """No latent variable is left after the assignment is enumerated out."""


_ELBO = TraceEnum_ELBO(max_plate_nesting=1)


def gmm_negative_log_likelihood(x, means, var, logits) -> torch.Tensor:
    """``-sum_i log p(x_i)`` through ``TraceEnum_ELBO`` (exact: the only latent is enumerated)."""
    return _ELBO.differentiable_loss(dti_gmm_model, _empty_guide, x, means, var.sqrt(), logits)


def kmeans_loss(net: DTINetwork, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cost = net.kmeans_cost(x)
    best, assign = cost.min(1)
    return best.mean(), assign


def gmm_loss(net: DTINetwork, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, var = net.reconstruct(x)
    nll = gmm_negative_log_likelihood(x, means, var, net.mix_logits)
    with torch.no_grad():
        assign = net.gmm_log_prob(x, (means, var)).argmax(1)
    return nll / x[0].numel() / x.shape[0], assign
