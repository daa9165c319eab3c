"""Chunked access to data and its feature map: the one seam every pass over the data goes through."""

from __future__ import annotations

import torch

from ..models.gaussian import full_feature_map


class Features:
    """Chunked access to phi(X); cached when it fits in ``cache_bytes``."""

    def __init__(self, X: torch.Tensor, chunk_size: int, cache_bytes: float = 4e8) -> None:
        self.X = X
        self.n, self.d = X.shape
        self.q = self.d * (self.d + 1) // 2 + self.d + 1
        self.chunk_size = max(1, int(chunk_size))
        big = self.n * self.q * X.element_size() > cache_bytes
        self.cache = None if big else full_feature_map(X)
        self._buf = None if not big else X.new_empty(min(self.n, self.chunk_size), self.q)

    def slices(self):
        for start in range(0, self.n, self.chunk_size):
            yield slice(start, min(self.n, start + self.chunk_size))

    def __call__(self, sl: slice) -> torch.Tensor:
        """phi of the rows ``sl``; without a cache, a view of a reused buffer (valid until the next call)."""
        return self.cache[sl] if self.cache is not None else full_feature_map(self.X[sl], self._buf)
