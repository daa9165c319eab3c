"""The networks of the DeepDPM route (Ronen, Finder & Freifeld, CVPR 2022): the clustering MLP and
the K batched two-way sub-clustering MLPs. The training loop is ``inference/deepdpm.py``."""

from __future__ import annotations

import math

import torch
from torch import nn

# The nets' dtype, whatever the data's: they are fitted by stochastic gradients, whose noise is far
# above float32's rounding, and float32 halves their cost on the CPU. The Gaussians stay in float64.
NET_DTYPE = torch.float32


class ClusterNet(nn.Module):
    """MLP D -> H -> K (logits)."""

    def __init__(self, d: int, k: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def resize(self, keep: torch.Tensor, duplicate: torch.Tensor) -> None:
        """Output units ``keep`` (indices, in order) followed by copies of units ``duplicate``."""
        w, b = self.head.weight.data, self.head.bias.data
        idx = torch.cat([keep, duplicate])
        head = nn.Linear(w.shape[1], idx.numel()).to(w)
        head.weight.data.copy_(w[idx])
        head.bias.data.copy_(b[idx])
        self.head = head


class SubNets(nn.Module):
    """K two-way MLPs evaluated at once: logits (n, K, 2)."""

    def __init__(self, d: int, k: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        s1, s2 = 1 / math.sqrt(d), 1 / math.sqrt(hidden)
        self.w1 = nn.Parameter((torch.rand(k, d, hidden, generator=generator) * 2 - 1) * s1)
        self.b1 = nn.Parameter(torch.zeros(k, hidden))
        self.w2 = nn.Parameter((torch.rand(k, hidden, 2, generator=generator) * 2 - 1) * s2)
        self.b2 = nn.Parameter(torch.zeros(k, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, d, h = self.w1.shape
        # the K first layers side by side (one (D, K H) product, hidden units in (n, K H) layout) and
        # the K second layers as one block-diagonal (K H, 2 K) product: no permuted copy of the
        # hidden layer, which a batched (K, n, H) product would need
        hidden = torch.relu(torch.addmm(self.b1.reshape(-1), x, self.w1.permute(1, 0, 2).reshape(d, k * h)))
        return torch.addmm(self.b2.reshape(-1), hidden, torch.block_diag(*self.w2.unbind(0))).view(-1, k, 2)
