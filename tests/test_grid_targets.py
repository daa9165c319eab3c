"""benchmarks/grid_targets.py: issue 17's verdicts read off bench_gmm --grid rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "grid_targets", Path(__file__).resolve().parents[1] / "benchmarks" / "grid_targets.py")
grid_targets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grid_targets)

ROWS = """\
| 1e+05 | 32 | 4 | float64 | 5 | bayesclust | 0.300 (0.290-0.310) | - | -40.1 | 1.0e-15 | ok |
| 1e+05 | 32 | 4 | float64 | 5 | sklearn | 1.500 (1.400-1.600) | 5.00 | -40.1 | 0.0e+00 | ok |
| 1e+05 | 32 | 4 | float64 | 5 | tgmm | - | - | - | - | timeout > 150 s |
| 1e+05 | 8 | 4 | float32 | 5 | bayesclust | 0.050 (0.050-0.050) | - | -10.0 | 1.0e-08 | ok |
| 1e+05 | 8 | 4 | float32 | 5 | sklearn | 0.600 (0.600-0.600) | 12.00 | -10.0 | 0.0e+00 | ok |
| 1e+04 | 128 | 16 | float32 | 5 | bayesclust | - | - | - | - | failed: NotPositiveDefiniteError |
| 1e+04 | 128 | 16 | float32 | 5 | sklearn | 2.000 (2.000-2.000) | - | -1.0 | 0.0e+00 | ok |
"""


def test_verdicts_follow_the_issue_targets(tmp_path, capsys):
    out = tmp_path / "grid.out"
    out.write_text("# header\n" + ROWS)
    grid_targets.main([str(out)])
    lines = capsys.readouterr().out.splitlines()[2:]
    assert len(lines) == 3
    assert lines[0].endswith("| 10x | **no** |") and "| 5.00 |" in lines[0] and "timeout > 150 s" in lines[0]
    assert lines[1].endswith("| 10x | yes |") and "| 12.00 |" in lines[1]
    assert lines[2].endswith("| 3x | ours failed **while scikit-learn fits** |")


def test_targets_by_shape():
    assert grid_targets.target(1e5, 32) == 10.0
    assert grid_targets.target(1e4, 32) is None
    assert grid_targets.target(1e4, 128) == 3.0


def test_a_fast_case_off_scikit_learns_log_likelihood_is_not_met(tmp_path, capsys):
    rows = """\
| 1e+05 | 32 | 64 | float32 | 50 | bayesclust | 4.841 (4.794-4.888) | - | -51.012332 | 1.9e-04 | ok |
| 1e+05 | 32 | 64 | float32 | 50 | sklearn | 86.073 (84.050-88.095) | 17.78 | -51.022092 | 0.0e+00 | ok |
| 1e+05 | 32 | 4 | float64 | 5 | bayesclust | 0.300 (0.300-0.300) | - | -40.1 | 2.0e-04 | ok |
| 1e+05 | 32 | 4 | float64 | 5 | sklearn | 1.500 (1.500-1.500) | 5.00 | -40.1 | 0.0e+00 | ok |
| 1e+04 | 8 | 4 | float64 | 5 | bayesclust | 0.010 (0.010-0.010) | - | -10.0 | 5.0e-05 | ok |
| 1e+04 | 8 | 4 | float64 | 5 | sklearn | 0.100 (0.100-0.100) | 10.00 | -10.0 | 0.0e+00 | ok |
| 1e+06 | 32 | 4 | a row of another table |
"""
    out = tmp_path / "grid.out"
    out.write_text(rows)
    grid_targets.main([str(out)])
    lines = capsys.readouterr().out.splitlines()[2:]
    assert len(lines) == 3
    assert lines[0].endswith("| 10x | **log-lik no** |")
    assert lines[1].endswith("| 10x | **no, log-lik no** |")
    assert lines[2].endswith("| - | - |")  # no speed target at N = 1e4, D = 8; log-lik within 1e-4


def test_scikit_learn_stopped_at_the_cap_gives_a_lower_bound(tmp_path, capsys):
    # the grid prints "> cap / ours" for a peer stopped at --cap; the verdict reads it as a lower bound
    rows = """\
| 1e+06 | 128 | 64 | float64 | 5 | bayesclust | 150.000 (150.000-150.000) | - | -200.0 | - | ok |
| 1e+06 | 128 | 64 | float64 | 5 | sklearn | - | > 4.00 | - | - | timeout > 600 s |
| 1e+06 | 128 | 16 | float64 | 50 | bayesclust | 400.000 (400.000-400.000) | - | -200.0 | - | ok |
| 1e+06 | 128 | 16 | float64 | 50 | sklearn | - | > 1.50 | - | - | timeout > 600 s |
"""
    out = tmp_path / "grid.out"
    out.write_text(rows)
    grid_targets.main([str(out)])
    lines = capsys.readouterr().out.splitlines()[2:]
    assert "| > 4.00 |" in lines[0]
    assert lines[0].endswith("| 3x | speed yes (scikit-learn stopped at the cap: > 4.00x); "
                             "log-lik not compared |")
    assert lines[1].endswith("| 3x | speed not shown (scikit-learn stopped at the cap: > 1.50x); "
                             "log-lik not compared |")


def test_the_grid_prints_the_cap_over_our_time_for_a_peer_stopped_at_it(capsys):
    spec = importlib.util.spec_from_file_location(
        "gmm_grid", Path(__file__).resolve().parents[1] / "benchmarks" / "gmm_grid.py")
    gmm_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gmm_grid)
    case = {"n": 1e6, "d": 128, "k": 64, "dtype": "float64", "iters": 5}
    gmm_grid.print_rows([
        {**case, "lib": "bayesclust", "times": [140.0, 160.0, 150.0], "status": "ok", "ll": -200.0},
        {**case, "lib": "sklearn", "times": [], "status": "timeout > 600 s"},
        {**case, "lib": "tgmm", "times": [], "status": "failed: out of memory"},
    ])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "| 1e+06 | 128 | 64 | float64 | 5 | sklearn | - | > 4.00 | - | - | timeout > 600 s |"
    assert lines[2] == "| 1e+06 | 128 | 64 | float64 | 5 | tgmm | - | - | - | - | failed: out of memory |"
