"""Shared fixtures: the real data beside the repository (../shared/data) and seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BAYESCLUST_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; tests that use it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def shared_file(rel: str) -> Path:
    path = SHARED_DATA / rel
    if not path.exists():
        pytest.skip(f"real data file {rel} not found under {SHARED_DATA}")
    return path


@pytest.fixture
def one_thread():
    """Small fits run fastest on one torch thread on the shared 2-core machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads(monkeypatch):
    """Two torch threads (restored after), and the lanes' work thresholds at 0 (the tests' passes are
    small): passes whose rows are in memory run their lanes in threads (inference.lanes), the Cholesky
    form's fused (inference.em_cholesky), the float64 feature form's fused too (inference.em)."""
    from bayesclust.inference import em, em_cholesky, lanes

    monkeypatch.setattr(lanes, "MIN_WORK", 0.0)
    monkeypatch.setattr(em_cholesky, "LANE_MIN_ELEMENTS", 0.0)
    monkeypatch.setattr(em, "FUSED_MIN_ELEMENTS", 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
