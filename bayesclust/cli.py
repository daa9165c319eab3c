"""Command line: ``bayesclust demo | fit | compare | report``.

Examples::

    bayesclust demo --quick                          # three jobs on embedded data -> ./bayesclust-report/
    bayesclust fit --model dpgmm points.csv          # -> points.labels.csv (label, p_0, ..., p_K-1)
    bayesclust fit --model gmm -k 3 data.npy --out labels.npy --save model.pt
    bayesclust compare data.csv --models gmm,dpgmm,entropy --labels species --out my-report
    bayesclust report model.pt data.csv --out model-report

Bad input (missing file, unknown format, NaN rows, wrong shape, empty file) prints one line on
stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

FIT_MODELS = ("gmm", "dpgmm", "dti-kmeans", "dti-gmm", "entropy")
TABLE_SUFFIXES = {".csv", ".tsv", ".txt", ".npy", ".npz"}
IDX_SUFFIXES = {".idx", ".idx1-ubyte", ".idx3-ubyte", ".ubyte"}
HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf"}


class UsageError(ValueError):
    """A bad argument or input file: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default prints the usage too)
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------- data input
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".gz", ".bz2"):
        if name.endswith(s):
            name = name[: -len(s)]
    if name.endswith("-ubyte"):
        return ".ubyte"
    return Path(name).suffix


def _read_hdf5(path: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover
        raise UsageError("reading HDF5 needs h5py: pip install 'bayesclust[data]'") from exc
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
        if not names:
            raise UsageError(f"{path}: the HDF5 file holds no dataset")
        xkey = next((n for n in names if n.split("/")[-1] in ("X", "data", "x")), names[0])
        ykey = key or next((n for n in names if n.split("/")[-1] in ("y", "labels", "target")), None)
        if ykey is not None and ykey not in f:
            raise UsageError(f"{path}: no dataset {ykey!r} in the HDF5 file (datasets: {names})")
        return np.asarray(f[xkey]), (None if ykey is None else np.asarray(f[ykey]))


def load_data(path: str | Path, labels: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (N, D) or images (N, H, W) and optional labels (N,) from CSV/TSV/NPY/NPZ/IDX/HDF5.

    ``labels`` is a column name (CSV), a key (NPZ/HDF5) or a file of labels (one per row).
    """
    from . import datasets

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: the file is empty")
    label_file = Path(labels) if labels and Path(labels).is_file() else None
    col = None if label_file else labels
    suffix = _suffix(path)
    head = path.open("rb").read(6)
    if (suffix == ".npy" and head != b"\x93NUMPY") or (suffix == ".npz" and head[:2] != b"PK"):
        raise UsageError(f"{path}: not a NumPy {suffix} file (wrong format for its extension)")
    if suffix in TABLE_SUFFIXES:
        target: Any = int(col) if col is not None and col.isdigit() and suffix == ".npy" else col
        X, y = datasets.load_table(path, target=target, delimiter="\t" if suffix == ".tsv" else None)
    elif suffix in IDX_SUFFIXES:
        X, y = datasets.load_idx(path).astype(np.float32) / 255.0, None
    elif suffix in HDF5_SUFFIXES:
        X, y = _read_hdf5(path, col)
    else:
        raise UsageError(
            f"{path}: unknown format {suffix or '(no extension)'!r}; use CSV, TSV, NPY, NPZ, "
            "IDX (*-ubyte) or HDF5"
        )
    if label_file is not None:
        y = _read_labels(label_file, np.shape(X)[0])
    return _checked(path, X, y)


def _read_labels(path: Path, n_rows: int) -> np.ndarray:
    from . import datasets

    if _suffix(path) in (".npy",):
        return np.load(path, allow_pickle=False).ravel()
    if _suffix(path) in IDX_SUFFIXES:
        return datasets.load_idx(path).ravel()
    raw = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(raw) == n_rows + 1:
        raw = raw[1:]  # a header line
    return np.array(raw)


def _checked(path: Path, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise UsageError(f"{path}: features must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64 if X.dtype.kind != "f" else X.dtype)
    if X.ndim == 1:
        X = X[:, None]
    if X.shape[0] < 2 or X.size == 0:
        raise UsageError(f"{path}: needs at least 2 rows, got shape {X.shape}")
    bad = ~np.isfinite(X.reshape(X.shape[0], -1)).all(1)
    if bad.any():
        raise UsageError(
            f"{path}: {int(bad.sum())} of {X.shape[0]} rows have NaN or infinite values; "
            "drop or impute them first"
        )
    if y is not None:
        y = np.asarray(y).ravel()
        if y.shape[0] != X.shape[0]:
            raise UsageError(f"{path}: {y.shape[0]} labels for {X.shape[0]} rows; give one label per row")
        y = (
            np.unique(y.astype(str), return_inverse=True)[1]
            if y.dtype.kind not in "iu"
            else y.astype(np.int64)
        )
    return X, y


# --------------------------------------------------------------------------------------- estimators
def _estimator(name: str, k: int | None, n_rows: int, args: argparse.Namespace) -> Any:
    from .compare import make_estimator

    est = make_estimator(name, k or 3)
    params = est.get_params(deep=False)
    overrides = {
        "random_state": args.seed,
        "device": args.device,
        "verbose": args.command == "fit" and not args.quiet,
    }  # the engine's tqdm bar
    est.set_params(**{p: v for p, v in overrides.items() if p in params and v is not None})
    if name.startswith("dpgmm") and n_rows <= 2000:
        est.set_params(coclustering=True)
    return est


def _model_input(est: Any, X: np.ndarray) -> np.ndarray:
    if type(est).__name__.startswith("DTI"):
        if X.ndim == 2:
            side = int(round(np.sqrt(X.shape[1])))
            if side * side != X.shape[1]:
                raise UsageError(
                    f"{type(est).__name__} needs images (N, H, W); rows of {X.shape[1]} "
                    "features are not square images"
                )
            return X.reshape(X.shape[0], side, side)
        return X
    return X.reshape(X.shape[0], -1)


def _write_assignments(out: Path, labels: np.ndarray, proba: np.ndarray) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        p_out = out.with_name(out.stem + "_proba.npy")
        np.save(out, labels)
        np.save(p_out, proba)
        return [out, p_out]
    header = "label," + ",".join(f"p_{j}" for j in range(proba.shape[1]))
    table = np.column_stack([labels, proba])
    fmt = ["%d"] + ["%.6g"] * proba.shape[1]
    np.savetxt(out, table, delimiter=",", header=header, comments="", fmt=fmt)
    return [out]


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit one model on DATA; write labels + probabilities, and the model with --save.

    Under ``torchrun --nproc_per_node=N -m bayesclust fit ...`` every rank fits its own block of the
    rows (statistics summed over ranks); rank 0 then labels all rows and writes the outputs."""
    from .inference import distributed

    distributed.init_from_env()  # a no-op outside torchrun
    X, _ = load_data(args.data, args.labels)
    est = _estimator(args.model, args.n_components, X.shape[0], args)
    Xi = _model_input(est, X)
    shard = Xi[distributed.shard_rows(Xi.shape[0])]
    _say(args, f"fitting {args.model} on {shard.shape[0]} rows of shape {Xi.shape[1:]} ...")
    est.fit(shard)
    if not distributed.is_main():
        return 0
    labels = np.asarray(est.predict(Xi) if distributed.is_distributed() else est.labels_)
    proba = est.predict_proba(Xi) if hasattr(est, "predict_proba") else np.eye(int(labels.max()) + 1)[labels]
    out = Path(args.out) if args.out else Path(args.data).with_suffix(".labels.csv")
    written = _write_assignments(out, labels, proba)
    if args.save:
        est.save(args.save)
        written.append(Path(args.save))
    _say(args, f"{args.model}: K = {est.n_components_}; wrote {', '.join(map(str, written))}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare models on DATA and write an HTML report."""
    from .compare import compare
    from .report import comparison_section, uncertainty_section, write_report

    X, y = load_data(args.data, args.labels)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    ests = [
        _estimator(n, args.n_components or (len(np.unique(y)) if y is not None else None), X.shape[0], args)
        for n in names
    ]
    comp = compare(ests, X, y, seeds=args.seeds, names=names, progress=not args.quiet)
    out = Path(args.out)
    sec, res = comparison_section(comp, out, f"Comparison on {Path(args.data).name}")
    sections, results = [sec], {"comparison": res}
    best = comp.best("ari") if y is not None else names[0]
    flat = X.reshape(X.shape[0], -1)
    u_sec, u_res = uncertainty_section(
        comp.models[best][0],
        _model_input(comp.models[best][0], X),
        out,
        y=y,
        title=f"Uncertainty of {best}",
        prefix="u_",
        images=X if X.ndim >= 3 else None,
    )
    sections.append(u_sec)
    results["uncertainty"] = u_res
    index = write_report(
        out,
        sections,
        results,
        title=f"bayesclust: {Path(args.data).name}",
        command="bayesclust " + " ".join(sys.argv[1:]),
    )
    print(comp.to_markdown() if not args.quiet else "", end="")
    _say(args, f"report written to {index} ({flat.shape[0]} rows)")
    return 0


def _load_model(path: Path) -> Any:
    """A model saved by ``fit --save``, read without running code from the file."""
    import bayesclust as bc

    from ._persist import read_model

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        cls_name = str(read_model(path)["class"]).rsplit(".", 1)[-1]
        cls = getattr(bc, cls_name, None)
        if cls is None or not hasattr(cls, "load"):
            raise UsageError(f"{path}: not a saved bayesclust model (written by 'fit --save')")
        return cls.load(path)
    except (ValueError, TypeError) as exc:  # every unreadable file is a ValueError naming it
        raise UsageError(f"{path}: not a saved bayesclust model ({str(exc).splitlines()[0]})") from None


def cmd_report(args: argparse.Namespace) -> int:
    """Uncertainty report of a saved model on DATA."""
    from .report import uncertainty_section, write_report

    model = _load_model(Path(args.model_file))
    X, y = load_data(args.data, args.labels)
    Xi = _model_input(model, X)
    if Xi.reshape(Xi.shape[0], -1).shape[1] != model.n_features_in_:
        raise UsageError(
            f"{args.data}: rows have shape {Xi.shape[1:]} but the model was fitted on "
            f"{model.n_features_in_} features"
        )
    sec, res = uncertainty_section(
        model,
        Xi,
        args.out,
        y=y,
        title=f"Uncertainty of {type(model).__name__}",
        images=X if X.ndim >= 3 else None,
    )
    index = write_report(
        args.out, [sec], {"uncertainty": res}, title=f"bayesclust: {Path(args.model_file).name}"
    )
    _say(args, f"report written to {index}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The three jobs on embedded data; writes the report folder."""
    index = run_demo(Path(args.out), quick=args.quick, seed=args.seed, quiet=args.quiet, device=args.device)
    _say(args, f"report written to {index}")
    return 0


# --------------------------------------------------------------------------------------------- demo
def _pca(X: np.ndarray, d: int) -> np.ndarray:
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc[:: max(1, len(Xc) // 2000)], full_matrices=False)
    return Xc @ vt[:d].T


def _on_device(ests: dict[str, Any], device: str | None) -> dict[str, Any]:
    """The estimators with ``device`` set (when given)."""
    for est in ests.values():
        if device is not None and "device" in est.get_params(deep=False):
            est.set_params(device=device)
    return ests


def _demo_faithful(out: Path, quick: bool, seed: int, quiet: bool, device: str | None) -> tuple:
    """Job 1: a nonparametric mixture on Old Faithful, beside a finite GMM and an entropy head."""
    import bayesclust as bc

    from .compare import compare
    from .plotting import plot_linear_margins
    from .report import _fig, comparison_section

    X, _ = bc.datasets.load_faithful()
    Z = (X - X.mean(0)) / X.std(0)
    ests = {
        "GMM (EM, K=2)": bc.GaussianMixture(2),
        "DPGMM (split/merge)": bc.DPGMM(max_iter=60 if quick else 150, coclustering=True),
        "Entropy clustering (linear, K=2)": bc.EntropyClustering(2, head="linear", max_iter=30),
    }
    comp = compare(
        _on_device(ests, device), Z, seeds=(seed,) if quick else (seed, seed + 1), progress=not quiet
    )
    sec, res = comparison_section(
        comp,
        out,
        "1. Nonparametric mixture on Old Faithful",
        prefix="faithful_",
        text="Old Faithful eruptions (272 rows, standardised: eruption length and waiting time). The DPGMM "
        "infers K; the finite GMM and the linear softmax head are told K=2.",
    )
    head = comp.models["Entropy clustering (linear, K=2)"][0]
    _fig(out, "faithful_margins.png", plot_linear_margins(head, Z, xlabel="eruptions (std.)",
         ylabel="waiting (std.)"), "the linear softmax head: its boundary and margin", sec["figures"])
    return [sec], {"faithful": res}, comp.models["DPGMM (split/merge)"][0], Z


def _demo_mnist(out: Path, quick: bool, seed: int, quiet: bool, device: str | None) -> tuple[list, dict]:
    """Job 2: generative vs discriminative clustering on an MNIST-test subset (PCA features)."""
    import bayesclust as bc

    from . import plotting as P
    from .compare import compare
    from .report import _fig, comparison_section

    images, y = bc.datasets.load_mnist("test")
    n = 1500 if quick else 5000
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    images, y = images[idx], y[idx]
    Z = _pca(images.reshape(n, -1), 30)
    ests = {
        "GMM diag (EM)": bc.GaussianMixture(10, covariance_type="diag", n_init=2),
        "Entropy head (MLP, MI)": bc.EntropyClustering(
            10, head="mlp", loss="mi", max_iter=25 if quick else 30
        ),
        # the defaults for feature vectors: k-means start, MI + nearest-neighbour consistency
        "Entropy head (linear, defaults)": bc.EntropyClustering(10),
    }
    seeds = (seed, seed + 1) if quick else (seed, seed + 1, seed + 2)
    comp = compare(_on_device(ests, device), Z, y, seeds=seeds, progress=not quiet)
    sec, res = comparison_section(
        comp,
        out,
        "2. Generative vs discriminative on MNIST-test",
        prefix="mnist_",
        text=f"{n} MNIST-test digits, 30 PCA features; a diagonal GMM (generative) and a softmax head "
        "trained on mutual information (discriminative), several seeds each.",
    )
    _mnist_uncertainty(out, comp, Z, y, sec, res)
    figs = sec["figures"]
    best = comp.best("ari")
    _fig(
        out,
        "mnist_samples.png",
        P.plot_samples_per_cluster(images, comp.labels[best][0]),
        f"sample images per cluster ({best})",
        figs,
    )
    dti = bc.DTIKMeans(
        10, transforms=("affine",), max_iter=40 if quick else 200, random_state=seed, device=device or "cpu"
    )
    dti.fit(images[: 200 if quick else 1000])
    _fig(
        out,
        "mnist_prototypes.png",
        P.plot_prototypes(dti.prototypes_, title="DTI k-means prototypes"),
        "transformation-invariant prototypes (DTIKMeans, affine)",
        figs,
    )
    return [sec], {"mnist": res}


def _mnist_uncertainty(out: Path, comp: Any, Z: np.ndarray, y: np.ndarray, sec: dict, res: dict) -> None:
    """Reliability diagrams of every model and the entropy head's disagreement across seeds."""
    from . import plotting as P
    from . import uncertainty as U
    from .report import _fig

    figs = sec["figures"]
    for name, m in comp.models.items():
        cal = U.calibration(y, m[0], Z)
        res.setdefault("ece", {})[name] = cal["ece"]
        _fig(
            out,
            f"mnist_reliability_{len(figs)}.png",
            P.plot_reliability(cal, title=f"Reliability: {name}"),
            f"reliability diagram of {name}",
            figs,
        )
    disagree = U.labelling_disagreement(comp.labels["Entropy head (MLP, MI)"])["disagreement"]
    res["entropy_head_disagreement"] = float(disagree.mean())
    fact = f"{disagree.mean():.3f} of points change cluster across seeds"
    sec.setdefault("facts", []).append(("ensemble disagreement of the entropy head", fact))


def _demo_uncertainty(out: Path, dp: Any, Z: np.ndarray, quick: bool, seed: int) -> tuple[list, dict]:
    """Job 3: how sure is the DPGMM? Posterior over K, co-clustering, intervals; ArviZ summaries of the
    DPGMM and of a Bayesian GMM (NUTS with 2 chains: R-hat, ESS, trace and rank plots; SVI with --quick)."""
    import bayesclust as bc

    from . import plotting as P
    from . import uncertainty as U
    from .report import _fig, uncertainty_section

    sec, res = uncertainty_section(
        dp, Z, out, title="3. Uncertainty of the DPGMM (Old Faithful)", prefix="dp_"
    )
    summary = U.arviz_summary(dp, ["K", "weights"])
    if quick:
        gmm = bc.GaussianMixture(2, inference="svi", svi_guide="meanfield", max_iter=200, random_state=seed)
        label = "GaussianMixture(inference='svi', mean-field; one chain, so no R-hat)"
    else:
        gmm = bc.GaussianMixture(
            2, inference="nuts", num_samples=100, warmup_steps=100, num_chains=2, random_state=seed
        )
        label = "GaussianMixture(inference='nuts', 2 chains x 100 draws)"
    s2 = U.arviz_summary(gmm.fit(Z), ["weights", "means"])
    _fig(
        out,
        "gmm_trace_rank.png",
        P.plot_trace_rank(gmm.to_inference_data(), "weights", title=f"Posterior diagnostics: {label}"),
        f"trace and rank plots of the weights, {label}",
        sec["figures"],
    )
    sec["pre"] = (
        f"ArviZ summary of the DPGMM's kept draws:\n{summary.to_string(max_rows=12)}"
        f"\n\nArviZ summary of {label}:\n{s2.to_string(max_rows=12)}"
    )
    res["arviz_dpgmm"] = summary.reset_index().astype(str).to_dict("records")
    res["arviz_gmm"] = s2.reset_index().astype(str).to_dict("records")
    return [sec], {"uncertainty": res}


def run_demo(
    out: Path, *, quick: bool = False, seed: int = 0, quiet: bool = False, device: str | None = None
) -> Path:
    """Run the three demo jobs and write ``out/index.html``, ``out/results.json`` and the figures."""
    import time

    import torch
    from tqdm.auto import tqdm

    from .report import write_report

    out.mkdir(parents=True, exist_ok=True)
    sections, results, times = [], {"quick": quick, "seed": seed, "device": device or "cpu"}, {}
    jobs = [
        ("faithful", lambda: _demo_faithful(out, quick, seed, quiet, device)),
        ("mnist", lambda: _demo_mnist(out, quick, seed, quiet, device)),
        ("uncertainty", lambda: _demo_uncertainty(out, state["dp"], state["Z"], quick, seed)),
    ]
    state: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo's small problems: one thread is as fast, and robust on a busy CPU
    try:
        for name, job in tqdm(jobs, disable=quiet, desc="demo", unit="job"):
            t0 = time.perf_counter()
            s, r, *extra = job()
            times[name] = round(time.perf_counter() - t0, 2)
            if extra:
                state["dp"], state["Z"] = extra
            sections += s
            results.update(r)
    finally:
        torch.set_num_threads(threads)
    results["job_seconds"] = times
    return write_report(
        out,
        sections,
        results,
        title="bayesclust demo report",
        command="bayesclust demo" + (" --quick" if quick else ""),
    )


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayesclust`` command."""
    parser = _Parser(
        prog="bayesclust", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("demo", help="three jobs on embedded data -> an HTML report")
    p.add_argument("--quick", action="store_true", help="smaller settings (about a minute)")
    p.add_argument("--out", default="bayesclust-report", help="report folder (default ./bayesclust-report)")
    _common(p)
    p = sub.add_parser(
        "fit",
        help="fit one model, write labels and probabilities",
        epilog="example: bayesclust fit --model dpgmm data.csv --out labels.csv --save m.pt",
    )
    p.add_argument("--model", required=True, choices=FIT_MODELS)
    p.add_argument("data", help="CSV, TSV, NPY, NPZ, IDX or HDF5 file")
    p.add_argument(
        "-k", "--n-components", type=int, default=None, help="clusters (default 3; dpgmm infers K)"
    )
    p.add_argument("--out", default=None, help="labels file, .csv or .npy (default DATA.labels.csv)")
    p.add_argument("--save", default=None, help="also save the fitted model here")
    p.add_argument("--labels", default=None, help="a label column / key in DATA to leave out of the features")
    _common(p)
    p = sub.add_parser(
        "compare",
        help="compare models on your data -> an HTML report",
        epilog="example: bayesclust compare data.csv --models gmm,dpgmm,entropy --labels y",
    )
    p.add_argument("data")
    p.add_argument("--models", default="gmm,dpgmm,entropy", help="comma-separated short names")
    p.add_argument("--labels", default=None, help="label column / key, or a file with one label per row")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to fit each model with")
    p.add_argument("-k", "--n-components", type=int, default=None)
    p.add_argument("--out", default="bayesclust-report")
    _common(p)
    p = sub.add_parser(
        "report",
        help="uncertainty report of a saved model",
        epilog="example: bayesclust report model.pt data.csv --out model-report",
    )
    p.add_argument("model_file")
    p.add_argument("data")
    p.add_argument("--labels", default=None)
    p.add_argument("--out", default="bayesclust-report")
    _common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    commands = {"demo": cmd_demo, "fit": cmd_fit, "compare": cmd_compare, "report": cmd_report}
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return commands[args.command](args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, KeyError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"bayesclust: error: {msg}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # a torchrun launch: close the group
            dist.destroy_process_group()
            _closed_group.append(True)


_closed_group: list[bool] = []  # set when main closed a torch.distributed process group


def run() -> None:
    """The process entry point (``bayesclust`` and ``python -m bayesclust``): exits with
    :func:`main`'s status. After a torchrun launch the process leaves without the interpreter's
    finalisation, once its output is flushed: torch's C++ teardown of a closed gloo group aborts a
    finished process now and then (SIGABRT, "terminate called without an active exception"), which
    would turn a complete run's exit status nonzero."""
    status = main()
    if _closed_group:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
