"""The network of contrastive clustering (SwAV, CLOT): a backbone, a projection head and prototypes.

``ContrastiveNet(x)`` returns the backbone features h (B, F) (what ``transform_embedding`` gives),
the L2-normalised projection z (B, P) (what NT-Xent compares) and the cluster scores
``<z, c_k / |c_k|>`` (B, K), cosines to the L2-normalised prototypes (SwAV's scores; divided by a
temperature they are the logits of the cluster softmax).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .heads import build_head

__all__ = ["ContrastiveNet"]


class ContrastiveNet(nn.Module):
    """Backbone (``build_head`` with ``embedding_dim`` outputs and CNN ``width``, or a module), projection MLP
    F -> F -> P (batch norm, ReLU) and K prototypes in the projection space."""

    def __init__(
        self,
        backbone: str | nn.Module,
        in_shape: tuple[int, ...],
        n_clusters: int,
        embedding_dim: int = 128,
        projection_dim: int = 64,
        hidden: int = 256,
        width: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = build_head(backbone, in_shape, embedding_dim, hidden=hidden, width=width)
        self.projection = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
            nn.ReLU(),
            nn.Linear(embedding_dim, projection_dim),
        )
        self.prototypes = nn.Parameter(torch.randn(n_clusters, projection_dim) * projection_dim**-0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        z = F.normalize(self.projection(h), dim=1)
        return h, z, z @ F.normalize(self.prototypes, dim=1).T
