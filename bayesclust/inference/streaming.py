"""The streaming seam: every pass over the data goes through :class:`Features`, and every sum of
sufficient statistics over the data through :func:`reduce_statistics`.

- :class:`Features` gives chunked access to a feature map ``phi(X)`` (a family's
  ``feature_map`` or ``statistics_map``), cached whole when it fits in ``FEATURE_CACHE_BYTES``,
  otherwise computed chunk by chunk into one reused buffer.
- :func:`scatter_statistics` and :func:`weighted_statistics` accumulate group statistics
  (M, Q) chunk by chunk (hard labels, or weights such as responsibilities).
- :func:`reduce_statistics` is applied to every accumulated total. It is the identity in one
  process; a distributed fit installs an all-reduce (sum over processes) with :func:`set_reduce`,
  and every route then sees the statistics of the whole data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .._device import empty_buffer

FEATURE_CACHE_BYTES = 1 << 30  # cache phi(X) whole when it takes at most 1 GiB

FeatureFn = Callable[..., torch.Tensor]  # fn(X (n, D), out=None) -> (n, Q)
Reduce = Callable[[torch.Tensor], torch.Tensor]

_reduce: Reduce | None = None


def set_reduce(fn: Reduce | None) -> Reduce | None:
    """Install ``fn`` (a sum over processes) as the reduction of statistics; returns the previous one."""
    global _reduce
    previous, _reduce = _reduce, fn
    return previous


def reduce_statistics(total: torch.Tensor) -> torch.Tensor:
    """The sum of ``total`` over every process taking part in the fit (the identity in one process)."""
    return total if _reduce is None else _reduce(total)


class Features:
    """Chunked access to ``phi(X)`` (n, Q).

    ``feature_fn(X, out=None)`` computes phi of a block of rows. The map is cached whole when
    ``n * Q`` elements fit in ``cache_bytes``; otherwise each call computes its rows into one reused
    buffer, whose content is valid until the next call.
    """

    def __init__(
        self,
        X: torch.Tensor,
        feature_fn: FeatureFn,
        chunk_size: int = 65536,
        cache_bytes: float = FEATURE_CACHE_BYTES,
    ) -> None:
        self.X = X
        self.n, self.d = X.shape
        self.feature_fn = feature_fn
        self.chunk_size = max(1, int(chunk_size))
        self.q = int(feature_fn(X[:1]).shape[1])
        self.cache: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None
        if self.n * self.q * X.element_size() <= cache_bytes:
            self.cache = feature_fn(X, out=empty_buffer(self.n, self.q, X.dtype, X.device))

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def slices(self, step: int | None = None) -> Iterator[slice]:
        """Contiguous slices of ``range(n)`` of ``step`` rows (default ``chunk_size``)."""
        step = self.chunk_size if step is None else max(1, int(step))
        for start in range(0, self.n, step):
            yield slice(start, min(self.n, start + step))

    def __call__(self, sl: slice) -> torch.Tensor:
        """phi of the rows ``sl`` (a view of the cache, or of the reused buffer)."""
        if self.cache is not None:
            return self.cache[sl]
        rows = len(range(*sl.indices(self.n)))
        if self._buf is None or self._buf.shape[0] < rows:
            self._buf = self.X.new_empty(rows, self.q)
        return self.feature_fn(self.X[sl], out=self._buf)


def map_rows(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``fn`` applied to blocks of ``chunk_size`` rows of X, results concatenated along rows."""
    step = max(1, int(chunk_size))
    return torch.cat([fn(X[start : start + step]) for start in range(0, X.shape[0], step)])


def scatter_statistics(feats: Features, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """G (n_groups, Q) float64 on the CPU: per group, the sum of phi over its points (``groups`` (n,))."""
    G = torch.zeros(n_groups, feats.q, dtype=torch.float64, device=groups.device)
    for sl in feats.slices():
        phi = feats(sl)
        part = torch.zeros(n_groups, feats.q, dtype=phi.dtype, device=phi.device)
        part.index_add_(0, groups[sl], phi)
        G += part.double()
    return reduce_statistics(G).cpu()


def weighted_statistics(feats: Features, weights: torch.Tensor, *, counts: bool = False) -> torch.Tensor:
    """G (M, Q) = weights^T phi for weights (n, M) (e.g. responsibilities), in the data's dtype;
    with ``counts`` a last column of column sums of the weights is appended (M, Q + 1)."""
    m = weights.shape[1]
    Gt = torch.zeros(feats.q + int(counts), m, dtype=feats.X.dtype, device=feats.X.device)
    for sl in feats.slices():
        Gt[: feats.q] += feats(sl).T @ weights[sl]
        if counts:
            Gt[-1] += weights[sl].sum(0)
    return reduce_statistics(Gt).T
