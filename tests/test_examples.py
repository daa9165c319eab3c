"""Every script in examples/ runs on reduced settings (``--quick``) and writes its outputs."""

from __future__ import annotations

import runpy
import sys
import warnings
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_the_five_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"nonparametric_mixture_csv", "generative_vs_discriminative_mnist", "dpgmm_posterior_arviz",
            "dti_prototypes", "cluster_embeddings"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_quick(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(tmp_path)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runpy.run_path(str(script), run_name="__main__")
    import matplotlib.pyplot as plt

    plt.close("all")
    out = capsys.readouterr().out
    assert out.strip()
    assert list(tmp_path.glob("*.png")), f"{script.name} wrote no figure"
