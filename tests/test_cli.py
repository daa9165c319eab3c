"""The bayesclust command end to end on small files, and one-line errors (exit 2) on bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bayesclust.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.4, (30, 2)) for c in ([0, 0], [4, 0], [0, 4])])
    y = np.repeat(["a", "b", "c"], 30)
    lines = ["x1,x2,species"] + [f"{a:.5f},{b:.5f},{c}" for (a, b), c in zip(X, y)]
    (d / "pts.csv").write_text("\n".join(lines) + "\n")
    (d / "pts.tsv").write_text("\n".join(ln.replace(",", "\t") for ln in lines) + "\n")
    np.save(d / "pts.npy", X)
    np.savez(d / "pts.npz", X=X, y=np.repeat([0, 1, 2], 30))
    (d / "labels.txt").write_text("\n".join(y) + "\n")
    (d / "nan.csv").write_text("x1,x2\n1,2\nnan,3\n4,5\n")
    (d / "empty.csv").write_text("")
    (d / "header_only.csv").write_text("x1,x2\n")
    (d / "pts.xyz").write_text("1 2\n")
    (d / "fake.npy").write_text("not numpy\n")
    (d / "short_labels.txt").write_text("a\nb\n")
    return d


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_fit_csv_writes_labels_probabilities_and_model(files, capsys, tmp_path):
    out, model = tmp_path / "lab.csv", tmp_path / "m.pt"
    rc, _, err = _run(
        capsys,
        "fit",
        "--model",
        "gmm",
        "-k",
        "3",
        files / "pts.csv",
        "--labels",
        "species",
        "--out",
        out,
        "--save",
        model,
        "--quiet",
    )
    assert rc == 0, err
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert table.shape == (90, 4) and np.allclose(table[:, 1:].sum(1), 1, atol=1e-4)
    assert out.read_text().startswith("label,p_0,p_1,p_2")
    assert model.is_file()
    rc, _, err = _run(
        capsys,
        "report",
        model,
        files / "pts.csv",
        "--labels",
        "species",
        "--out",
        tmp_path / "rep",
        "--quiet",
    )
    assert rc == 0, err
    assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "rep" / "reliability.png").is_file()
    np.save(tmp_path / "three.npy", np.ones((5, 3)))
    rc, _, err = _run(capsys, "report", model, tmp_path / "three.npy", "--out", tmp_path / "r2")
    assert rc == 2 and err.count("\n") == 1 and "the model was fitted on 2 features" in err


@pytest.mark.parametrize(
    "name, model, extra",
    [("pts.tsv", "gmm", ["--labels", "species"]), ("pts.npy", "gmm", []), ("pts.npz", "dpgmm", [])],
)
def test_fit_other_formats_to_npy(files, capsys, tmp_path, name, model, extra):
    rc, _, err = _run(
        capsys,
        "fit",
        "--model",
        model,
        "-k",
        "3",
        files / name,
        *extra,
        "--out",
        tmp_path / "l.npy",
        "--quiet",
    )
    assert rc == 0, err
    labels, proba = np.load(tmp_path / "l.npy"), np.load(tmp_path / "l_proba.npy")
    assert labels.shape == (90,) and proba.shape[0] == 90 and len(np.unique(labels)) == 3


def test_fit_idx_images(files, capsys, tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(n).to_bytes(4, "big") for n in imgs.shape)
    (tmp_path / "imgs-idx3-ubyte").write_bytes(header + imgs.tobytes())
    rc, _, err = _run(
        capsys,
        "fit",
        "--model",
        "entropy",
        "-k",
        "2",
        tmp_path / "imgs-idx3-ubyte",
        "--out",
        tmp_path / "l.npy",
        "--quiet",
    )
    assert rc == 0, err
    assert np.load(tmp_path / "l.npy").shape == (40,)


def test_fit_hdf5(files, capsys, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"] = np.load(files / "pts.npy")
    rc, _, err = _run(
        capsys, "fit", "--model", "gmm", tmp_path / "d.h5", "--out", tmp_path / "l.csv", "--quiet"
    )
    assert rc == 0, err


def test_compare_writes_report_with_label_file(files, capsys, tmp_path):
    rc, out, err = _run(
        capsys,
        "compare",
        files / "pts.npy",
        "--models",
        "gmm,entropy-linear",
        "--labels",
        files / "labels.txt",
        "--out",
        tmp_path / "r",
    )
    assert rc == 0, err
    assert "| model | acc |" in out
    html = (tmp_path / "r" / "index.html").read_text()
    assert "<table" in html and "decision_regions.png" in html
    assert (tmp_path / "r" / "results.json").is_file()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["fit", "--model", "gmm", "missing.csv"], "missing.csv: no such file"),
        (["fit", "--model", "gmm", "pts.xyz"], "unknown format '.xyz'"),
        (["fit", "--model", "gmm", "fake.npy"], "not a NumPy .npy file"),
        (["fit", "--model", "gmm", "nan.csv"], "1 of 3 rows have missing values"),
        (["fit", "--model", "gmm", "empty.csv"], "the file is empty"),
        (["fit", "--model", "gmm", "header_only.csv"], "at least one data row"),
        (["fit", "--model", "gmm", "pts.csv"], "non-numeric feature column"),
        (["fit", "--model", "dti-kmeans", "pts.npy"], "needs images"),
        (["fit", "--model", "nope", "pts.npy"], "invalid choice: 'nope'"),
        (["compare", "pts.npy", "--labels", "short_labels.txt"], "2 labels for 90 rows"),
        (["compare", "pts.npy", "--models", "gmm,zzz"], "unknown model 'zzz'"),
        (["report", "pts.npy", "pts.npy"], "not a saved bayesclust model"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_one_line_exit_2(files, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(files)
    rc, _, err = _run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bayesclust: error:")
    assert match in lines[0]


def test_python_dash_m_and_help_with_examples(files):
    r = subprocess.run(
        [sys.executable, "-m", "bayesclust", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "bayesclust fit --model dpgmm" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "bayesclust", "fit", "--model", "gmm", str(files / "empty.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_report_refuses_a_model_file_crafted_to_run_code(files, capsys, tmp_path):
    import torch

    from tests.test_persistence import _RunsCode

    marker = tmp_path / "pwned"
    torch.save({"class": "bayesclust.DPGMM", "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    rc, _, err = _run(capsys, "report", tmp_path / "evil.pt", files / "pts.csv", "--out", tmp_path / "r")
    assert rc == 2 and "not a saved bayesclust model" in err and err.count("\n") == 1
    assert not marker.exists()


def test_fit_under_torchrun_two_processes(tmp_path):
    """``torchrun --nproc_per_node=2 -m bayesclust fit``: each rank fits its block of rows (gloo on
    loopback), rank 0 labels all rows; the clustering equals a one-process fit (up to relabelling)."""
    import socket

    from bayesclust.metrics import adjusted_rand_index

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.5, (100, 2)) for c in ([0, 0], [5, 0], [0, 5])])
    np.savetxt(tmp_path / "pts.csv", X, delimiter=",", header="a,b", comments="")
    with socket.socket() as s:  # a free loopback port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "bayesclust", "fit", "--model", "gmm", "-k", "3",
           str(tmp_path / "pts.csv"), "--out", str(tmp_path / "two.csv"), "--seed", "0", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert main(["fit", "--model", "gmm", "-k", "3", str(tmp_path / "pts.csv"), "--out",
                 str(tmp_path / "one.csv"), "--seed", "0", "--quiet"]) == 0
    two = np.loadtxt(tmp_path / "two.csv", delimiter=",", skiprows=1)[:, 0]
    one = np.loadtxt(tmp_path / "one.csv", delimiter=",", skiprows=1)[:, 0]
    assert len(two) == 300 and adjusted_rand_index(one, two) > 0.99


def test_run_exits_with_main_status(capsys):
    """``run`` (the console script and ``python -m bayesclust``) exits with main's status."""
    from bayesclust.cli import run

    sys_argv = sys.argv
    sys.argv = ["bayesclust", "fit", "no-such-file.csv"]
    try:
        with pytest.raises(SystemExit) as exc:
            run()
    finally:
        sys.argv = sys_argv
    assert exc.value.code == 2 and "bayesclust: error:" in capsys.readouterr().err


def test_run_after_a_process_group_leaves_without_finalisation():
    """After main closed a process group, run flushes its output and leaves with main's status, without
    the interpreter's finalisation (an atexit handler does not run)."""
    code = (
        "import atexit, bayesclust.cli as cli\n"
        "atexit.register(lambda: print('finalised'))\n"
        "def fake():\n"
        "    print('fitted', end='')\n"
        "    cli._closed_group.append(True)\n"
        "    return 3\n"
        "cli.main = fake\n"
        "cli.run()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and r.stdout == "fitted", (r.returncode, r.stdout, r.stderr[-500:])
