"""The one place that resolves devices, dtypes and seeds, and allocates large host arrays."""

from __future__ import annotations

import functools
import mmap
import os
import random
from typing import Any

import numpy as np
import torch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
HOST_BLAS = ("auto", "torch", "numpy")
HUGE_PAGE_BYTES = 8 << 20  # host arrays from this size on ask the kernel for transparent huge pages


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` / a ``torch.device`` into a device.

    ``"auto"`` (or ``None``) picks CUDA when it is available, else the CPU.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid device; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='cpu' or device='auto'."
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None = "float32") -> torch.dtype:
    """``"float32"`` / ``"float64"`` / a floating ``torch.dtype`` -> ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype} is not supported; use 'float32' or 'float64'.")
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r} is not supported; use 'float32' or 'float64'.")


def resolve_seed(random_state: Any) -> int | None:
    """An int seed (or None) from what scikit-learn accepts as ``random_state``: None, an int, a
    ``numpy.random.RandomState`` or a ``numpy.random.Generator`` (a seed is drawn from the latter two,
    so successive fits with the same instance differ, as in scikit-learn)."""
    if random_state is None:
        return None
    if isinstance(random_state, bool) or not isinstance(
        random_state, int | np.integer | np.random.RandomState | np.random.Generator
    ):
        raise TypeError(
            "random_state must be None, an int, a numpy.random.RandomState or a numpy.random.Generator, "
            f"got {type(random_state).__name__}."
        )
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if random_state < 0:
        raise ValueError(f"random_state must be a non-negative int, got {random_state}.")
    return int(random_state)


def make_generator(random_state: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from ``random_state`` (a fresh random seed when ``None``)."""
    if random_state is not None and (
        isinstance(random_state, bool) or not isinstance(random_state, int | np.integer)
    ):
        raise TypeError(
            f"random_state must be an int or None, got {type(random_state).__name__}."
        )
    seed = int(random_state) if random_state is not None else int(torch.seed() % (2**63))
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


def seed_everything(random_state: int | None) -> None:
    """Seed Python, NumPy, torch and Pyro global RNGs (Pyro SVI/NUTS draw from them)."""
    if random_state is None:
        return
    import pyro

    seed = int(random_state)
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - users may draw from the legacy global RNG
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)


def empty_rows(n: int, q: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (n, q) tensor on ``like``'s device and dtype.

    A large host array (``HUGE_PAGE_BYTES`` and up, where the OS offers ``MADV_HUGEPAGE``) is an
    anonymous mapping advised for transparent huge pages: its first writes fault in 2 MiB pages instead
    of 4 KiB ones, which halves the time to fill a fresh (1e5, 560) float64 feature cache
    (benchmarks/RESULTS.md, speed). The mapping is freed with the tensor. Where the kernel compacts
    memory on such faults (``defrag`` = madvise) a fragmented machine may stall the first write; the
    environment variable ``BAYESCLUST_NO_HUGE_PAGES=1`` turns this off.
    """
    nbytes = n * q * like.element_size()
    if (
        like.device.type != "cpu"
        or nbytes < HUGE_PAGE_BYTES
        or not hasattr(mmap, "MADV_HUGEPAGE")
        or os.environ.get("BAYESCLUST_NO_HUGE_PAGES", "") not in ("", "0")
    ):
        return like.new_empty(n, q)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buf, dtype=like.dtype).view(n, q)


def host_blas() -> str:
    """Which library's BLAS runs the small batched CPU products of the fused EM passes: "torch" or
    "numpy". The environment variable ``BAYESCLUST_HOST_BLAS`` ("auto", "torch", "numpy") says so;
    "auto" takes numpy's OpenBLAS where torch's BLAS is MKL and the CPU is not Intel's (MKL's float64
    batched small products ran there well below OpenBLAS's, benchmarks/results/speed.md) and numpy's
    BLAS threads can be limited (:func:`numpy_blas_controllers`), else torch."""
    choice = os.environ.get("BAYESCLUST_HOST_BLAS", "auto") or "auto"
    if choice not in HOST_BLAS:
        raise ValueError(
            f"BAYESCLUST_HOST_BLAS={choice!r} is not supported; use one of {', '.join(HOST_BLAS)}."
        )
    if choice != "auto":
        return choice
    return _auto_host_blas()


@functools.cache
def _auto_host_blas() -> str:
    vendor = cpu_vendor()
    if vendor in ("", "GenuineIntel") or not torch.backends.mkl.is_available():
        return "torch"
    return "numpy" if numpy_blas_controllers() else "torch"


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...) where /proc/cpuinfo says, else ""."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache
def numpy_blas_controllers() -> tuple[tuple[Any, Any], ...]:
    """``(get, set)`` of the thread count of every OpenBLAS loaded in this process (numpy's, scipy's),
    found in /proc/self/maps (empty where there is none or no such file): the lanes set them to one
    thread while they run (:func:`bayesclust.inference.lanes.run`). Read straight from the libraries:
    threadpoolctl's scan of every loaded library took some 13 ms, a short fit's worth."""
    import ctypes

    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded with numpy; this only makes sure
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return ()
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))  # only a library already loaded
        except OSError:
            continue
        for prefix, suffix in _OPENBLAS_NAMES:
            get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, get.argtypes, put.restype, put.argtypes = ctypes.c_int, [], None, [ctypes.c_int]
                found.append((get, put))
                break
    return tuple(found)


# OpenBLAS's thread-count functions are openblas_{get,set}_num_threads, renamed in scipy's builds
_OPENBLAS_NAMES = (
    ("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"), ("openblas_", ""),
)
