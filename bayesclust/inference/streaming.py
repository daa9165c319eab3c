"""The streaming seam: every pass over the data goes through :class:`Features`, and every sum of
sufficient statistics over the data through :func:`reduce_statistics`.

- :class:`Features` gives chunked access to a feature map ``phi(X)`` (a family's
  ``feature_map`` or ``statistics_map``), cached whole when it fits in ``FEATURE_CACHE_BYTES``,
  otherwise computed chunk by chunk into one reused buffer.
- :func:`scatter_statistics` and :func:`weighted_statistics` accumulate group statistics
  (M, Q) chunk by chunk (hard labels, or weights such as responsibilities).
- :func:`map_chunks` computes per-point results (labels) chunk by chunk; :class:`ChunkSource` and
  :class:`SourceFeatures` read data larger than memory (memmaps, HDF5, chunks) by row range,
  centred (GaussianMixture) or standardised in float64 (DPGMM) as each chunk is read.
- :func:`reduce_statistics` is applied to every accumulated total. It is the identity in one
  process; a distributed fit installs an all-reduce (sum over processes) with :func:`set_reduce`,
  and every route then sees the statistics of the whole data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .._device import empty_rows
from .._frame import data_moments

FEATURE_CACHE_BYTES = 1 << 30  # cache phi(X) whole when it takes at most 1 GiB


def cache_fits(n: int, q: int, itemsize: int, cache_bytes: float = FEATURE_CACHE_BYTES) -> bool:
    """Whether phi(X) (n x q values of ``itemsize`` bytes) is cached whole by :class:`Features`."""
    return n * q * itemsize <= cache_bytes

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

    ``feature_fn(X, out=None)`` computes phi of a block of rows. A map that returns its input itself
    (the Cholesky formulation reads x) is read from X, with no copy. Any other map is cached whole
    when ``n * Q`` elements fit in ``cache_bytes``; otherwise each call computes its rows into one
    reused buffer, whose content is valid until the next call.
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
        probe = feature_fn(X[:1])
        self.q = int(probe.shape[1])
        self.cache: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None
        self._scratch: dict[str, torch.Tensor] = {}
        if _is_identity(probe, X):
            self.cache = X  # phi(X) is X: a copy would cost a pass and N D elements
        elif cache_fits(self.n, self.q, X.element_size(), cache_bytes):
            self.cache = feature_fn(X, out=empty_rows(self.n, self.q, X))

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def slices(self, step: int | None = None) -> Iterator[slice]:
        """Contiguous slices of ``range(n)`` of ``step`` rows (default ``chunk_size``)."""
        step = self.chunk_size if step is None else max(1, int(step))
        for start in range(0, self.n, step):
            yield slice(start, min(self.n, start + step))

    def remapped(self, feature_fn: FeatureFn) -> Features:
        """The same rows under another map (computed per chunk, not cached)."""
        return Features(self.X, feature_fn, self.chunk_size, cache_bytes=0)

    def rows(self, sl: slice) -> torch.Tensor:
        """The data rows ``sl`` (m, D) (of X, not phi)."""
        return self.X[sl]

    def scratch(self, slot: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised array of ``shape`` in ``like``'s dtype and device for a pass's block arrays:
        a view of one flat buffer per ``slot``, kept for the fit and replaced only when too small. A
        fresh array per block or per pass is, in glibc's malloc, fresh pages whenever the allocator's
        dynamic mmap threshold sits at or below its size (for instance after a large ``np.load``):
        page faults then took a fifth to a third of a short fit (benchmarks/RESULTS.md, speed)."""
        numel = math.prod(shape)
        buf = self._scratch.get(slot)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch[slot] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel].view(shape)

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """The data rows at ``index`` (m,) (any order), (m, D)."""
        return self.X[index]

    def __call__(self, sl: slice) -> torch.Tensor:
        """phi of the rows ``sl`` (a view of the cache, or of the reused buffer)."""
        if self.cache is not None:
            return self.cache[sl]
        rows = len(range(*sl.indices(self.n)))
        if self._buf is None or self._buf.shape[0] < rows:
            self._buf = self.X.new_empty(rows, self.q)
        return self.feature_fn(self.X[sl], out=self._buf)


def _is_identity(probe: torch.Tensor, X: torch.Tensor) -> bool:
    """Whether ``probe`` (the map of ``X[:1]``) is that row itself, not a copy."""
    row = X[:1]
    return probe.shape == row.shape and probe.data_ptr() == row.data_ptr() and probe.stride() == row.stride()


def map_rows(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``fn`` applied to blocks of ``chunk_size`` rows of X, results concatenated along rows."""
    step = max(1, int(chunk_size))
    return torch.cat([fn(X[start : start + step]) for start in range(0, X.shape[0], step)])


def map_chunks(fn: Callable[[torch.Tensor], torch.Tensor], feats: Features) -> torch.Tensor:
    """``fn`` applied to the data rows (m, D) of each chunk of ``feats``, concatenated along rows:
    per-point results (e.g. labels (N,)) of data in memory or out of core."""
    return torch.cat([fn(feats.rows(sl)) for sl in feats.slices()])


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


def is_reducing() -> bool:
    """Whether a reduction over processes is installed (a distributed fit is running)."""
    return _reduce is not None


def global_moments(X: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(N, mean (D,), variance (D,)) float64 of the rows of X (n, D) over every process.

    Each process takes its own mean and variance in one pass (:func:`bayesclust._frame.data_moments`);
    they are merged by Chan, Golub and LeVeque's pairwise formula, ``M2 = sum_p [n_p var_p + n_p
    (mean_p - mean)^2]``, in two small reductions: no raw second moments are summed. A process may hold
    no rows.
    """
    n_local = X.shape[0]
    mean_p, var_p = data_moments(X)  # zeros on a process without rows
    count = torch.tensor([float(n_local)], dtype=torch.float64, device=X.device)
    first = reduce_statistics(torch.cat([count, n_local * mean_p]))
    n = int(first[0])
    mean = first[1:] / n
    m2 = reduce_statistics(n_local * (var_p + (mean_p - mean) ** 2))
    return n, mean, m2 / n


def moment_proxy(mean: torch.Tensor, var: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Two rows (2, D) whose mean and (biased) variance are ``mean`` and ``var``: a stand-in for the
    data where only its first two moments are used (data-dependent default priors)."""
    sd = var.clamp(min=0).sqrt()
    return torch.stack([mean - sd, mean + sd]).to(dtype)


# ---------------------------------------------------------------------- data larger than memory
def _is_h5_dataset(X: object) -> bool:
    return type(X).__module__.startswith("h5py") and hasattr(X, "shape") and hasattr(X, "dtype")


def is_chunk_source(X: object) -> bool:
    """Whether ``X`` is fitted out of core: a numpy memmap, an HDF5 dataset, a :class:`ChunkSource`,
    a folder of ``.npy`` files, or a list / tuple of chunks (2-D arrays or tensors, ``.npy`` paths)."""
    if isinstance(X, np.memmap | ChunkSource) or _is_h5_dataset(X):
        return True
    if isinstance(X, str | Path):
        return Path(X).is_dir()
    if isinstance(X, list | tuple) and len(X) > 0:
        return all(
            isinstance(p, str | Path)
            or _is_h5_dataset(p)
            or (isinstance(p, np.ndarray | torch.Tensor) and p.ndim == 2)
            for p in X
        )
    return False


class ChunkSource:
    """Rows of data kept outside memory, read by row range: a sequence of parts (numpy memmaps,
    HDF5 datasets, arrays or tensors, ``.npy`` files opened as memmaps), each (n_i, D), seen as
    one (N, D) array. Only the rows asked for are read."""

    def __init__(self, X: object, name: str = "X") -> None:
        if isinstance(X, ChunkSource):
            X = X.parts
        if isinstance(X, str | Path):
            X = sorted(Path(X).glob("*.npy"))
            if not X:
                raise ValueError(f"{name}: the folder holds no .npy files; pass a folder of (n, D) chunks.")
        parts = list(X) if isinstance(X, list | tuple) else [X]
        self.parts = [_open_part(p, name) for p in parts]
        widths = {tuple(p.shape[1:]) for p in self.parts}
        if len(widths) != 1:
            raise ValueError(f"{name}: chunks must have the same number of features, got {sorted(widths)}.")
        self.d = int(self.parts[0].shape[1])
        self.offsets = np.cumsum([0] + [int(p.shape[0]) for p in self.parts])
        self.n = int(self.offsets[-1])
        if self.n == 0:
            raise ValueError(f"{name} is empty (0 rows in all chunks); pass at least one sample.")
        self.shape = (self.n, self.d)

    def rows(self, start: int, stop: int) -> object:
        """Rows ``start:stop`` as one numpy array (stop - start, D), read from the parts they span."""
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        out = []
        while start < stop:
            lo = int(self.offsets[first])
            hi = min(stop, int(self.offsets[first + 1]))
            out.append(_as_numpy(self.parts[first][start - lo : hi - lo]))
            start, first = hi, first + 1
        return out[0] if len(out) == 1 else np.concatenate(out)

    def take(self, index: object) -> object:
        """Rows at the sorted indices ``index`` (m,) as one numpy array (m, D)."""
        index = np.asarray(index)
        part_of = np.searchsorted(self.offsets, index, side="right") - 1
        out = [
            _as_numpy(self.parts[p][(index[part_of == p] - self.offsets[p]).tolist()])
            for p in np.unique(part_of)
        ]
        return np.concatenate(out)


def _open_part(p: object, name: str) -> object:
    if isinstance(p, str | Path):
        path = Path(p)
        if not path.is_file():
            raise ValueError(f"{name}: chunk file {str(path)!r} does not exist.")
        p = np.load(path, mmap_mode="r")
    if isinstance(p, torch.Tensor):
        p = p.detach().cpu().numpy()
    if not hasattr(p, "shape") or len(p.shape) != 2:
        raise ValueError(f"{name}: every chunk must be 2-D (n, D), got shape {getattr(p, 'shape', None)}.")
    if not (np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.bool_)):
        raise TypeError(f"{name}: chunks must be numeric, got dtype {p.dtype}.")
    return p


def _as_numpy(a: object) -> np.ndarray:
    """A contiguous, writeable numpy array of a block read from a part (copied when read-only)."""
    out = np.asarray(a)
    return out if out.flags.writeable and out.flags.c_contiguous else np.array(out)


class SourceFeatures(Features):
    """:class:`Features` over a :class:`ChunkSource`: each call reads its rows from the source,
    moves them to ``device`` / ``dtype``, subtracts ``shift`` (D,) and computes phi into one reused
    buffer. Nothing of size N is kept; ``X`` is an empty (0, D) tensor carrying device and dtype.

    With ``scale`` (D,) the rows are standardised in float64, ``(x - shift) / scale``, then cast to
    ``dtype`` (by default ``shift``'s): the frame of a fit that standardises in memory the same way."""

    def __init__(
        self,
        source: ChunkSource,
        feature_fn: FeatureFn,
        shift: torch.Tensor,
        chunk_size: int = 65536,
        *,
        scale: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.source = source
        self.shift, self.scale = shift, scale
        self.n, self.d = source.n, source.d
        self.X = shift.new_empty(0, self.d, dtype=dtype or shift.dtype)
        self.feature_fn = feature_fn
        self.chunk_size = max(1, int(chunk_size))
        self.q = int(feature_fn(self.X.new_zeros(1, self.d)).shape[1])
        self.cache = None
        self._buf = None
        self._scratch = {}
        self._last: tuple[int, int, torch.Tensor] | None = None  # (start, stop, rows) of the last call

    def remapped(self, feature_fn: FeatureFn) -> SourceFeatures:
        return SourceFeatures(self.source, feature_fn, self.shift, self.chunk_size, scale=self.scale,
                              dtype=self.X.dtype)

    def _frame(self, rows: np.ndarray) -> torch.Tensor:
        """Rows read from the source (m, D), centred (and scaled) on the device, in the dtype."""
        x = torch.from_numpy(rows)
        if self.scale is None:
            return x.to(device=self.shift.device, dtype=self.X.dtype) - self.shift
        x = x.to(device=self.shift.device, dtype=torch.float64)
        return ((x - self.shift) / self.scale).to(self.X.dtype)

    def read(self, sl: slice) -> torch.Tensor:
        """The centred rows ``sl`` (m, D) on the device, in the dtype."""
        start, stop, _ = sl.indices(self.n)
        return self._frame(self.source.rows(start, stop))

    def rows(self, sl: slice) -> torch.Tensor:
        """The centred rows ``sl`` (m, D), as :meth:`read`; the rows of the last ``self(sl)`` are not
        read again (the feature form's E-step takes the centred components' densities from them)."""
        start, stop, _ = sl.indices(self.n)
        if self._last is not None and self._last[:2] == (start, stop):
            return self._last[2]
        return self.read(sl)

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """The centred rows at ``index`` (m,) (any order), read from the source, (m, D)."""
        idx = torch.as_tensor(index).cpu()
        if idx.numel() == 0:
            return self.X.new_empty(0, self.d)
        order = torch.argsort(idx)
        x = self._frame(self.source.take(idx[order].numpy()))
        return x[torch.argsort(order).to(x.device)]

    def __call__(self, sl: slice) -> torch.Tensor:
        x = self.read(sl)
        self._last = (*sl.indices(self.n)[:2], x)
        if self._buf is None or self._buf.shape[0] < x.shape[0]:
            self._buf = x.new_empty(x.shape[0], self.q)
        return self.feature_fn(x, out=self._buf)


def source_moments(
    source: ChunkSource,
    device: torch.device,
    dtype: torch.dtype,
    chunk_size: int,
    check: Callable[..., torch.Tensor],
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(N, mean (D,), variance (D,)) float64 of a source, chunk by chunk (two passes, reduced over
    processes); every chunk goes through ``check(array, device=, dtype=)`` (validation) once."""
    total = torch.zeros(source.d, dtype=torch.float64, device=device)
    for start in range(0, source.n, chunk_size):
        x = check(source.rows(start, min(source.n, start + chunk_size)), device=device, dtype=dtype)
        total += x.double().sum(0)
    n = int(reduce_statistics(torch.tensor(float(source.n), dtype=torch.float64, device=device)))
    mean = reduce_statistics(total) / n
    sq = torch.zeros_like(total)
    for start in range(0, source.n, chunk_size):
        x = torch.from_numpy(source.rows(start, min(source.n, start + chunk_size)))
        sq += ((x.to(device=device, dtype=dtype).double() - mean) ** 2).sum(0)
    return n, mean, reduce_statistics(sq) / n
