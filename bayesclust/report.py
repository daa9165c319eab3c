"""HTML reports rendered with Jinja2 (``bayesclust/templates/``): comparison tables, uncertainty figures.

A report is a folder: ``index.html``, ``results.json`` and the PNG figures it links to. Sections are
dicts ``{"title", "text", "table_html", "facts": [(key, value)], "pre", "figures": [{"src", "caption"}]}``.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["comparison_section", "render_template", "uncertainty_section", "write_report"]

_TEMPLATES = Path(__file__).with_name("templates")


def render_template(name: str, **context: Any) -> str:
    """Render ``bayesclust/templates/<name>`` with autoescaping."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)), autoescape=jinja2.select_autoescape(["html", "j2"])
    )
    return env.get_template(name).render(**context)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_report(
    out_dir: str | Path,
    sections: list[dict[str, Any]],
    results: dict[str, Any],
    *,
    title: str = "bayesclust report",
    command: str | None = None,
) -> Path:
    """Write ``index.html`` (sections) and ``results.json`` (results) to out_dir; returns index.html."""
    from . import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s in sections:
        for f in s.get("figures", []):
            if not (out / f["src"]).is_file():
                raise ValueError(f"figure {f['src']!r} of section {s.get('title')!r} is not in {out}.")
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2))
    html = render_template(
        "report.html.j2",
        title=title,
        sections=sections,
        version=__version__,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
    )
    index = out / "index.html"
    index.write_text(html)
    return index


def _fig(out: Path, name: str, fig: Any, caption: str, figures: list[dict[str, str]]) -> None:
    from .plotting import _plt

    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    figures.append({"src": name, "caption": caption})


def comparison_section(
    comp: Any, out_dir: str | Path, title: str, text: str = "", prefix: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A report section (table + figures) and the JSON results of a ``Comparison``."""
    paths = comp.figures(out_dir, prefix=prefix)
    captions = {
        "metrics": "ACC / NMI / ARI per model",
        "agreement": "pairwise ARI between models",
        "decision_regions": "decision regions on the 2-D data",
    }
    figures = []
    for p in paths:
        stem = p.stem[len(prefix) :]
        cap = captions.get(stem, stem.replace("confusion_", "confusion matrix: ").replace("_", " "))
        figures.append({"src": p.name, "caption": cap})
    section = {"title": title, "text": text, "table_html": comp.to_html(), "figures": figures}
    return section, comp.to_dict()


def _posterior_figures(model: Any, X: np.ndarray, out: Path, prefix: str, figs: list, facts: list) -> dict:
    from . import plotting as P
    from . import uncertainty as U

    res: dict[str, Any] = {}
    pk = U.posterior_k(model)
    res["posterior_k"], res["map_k"] = pk["posterior_k"], pk["map_k"]
    pk_text = ", ".join(f"K={k}: {v:.2f}" for k, v in sorted(pk["posterior_k"].items()))
    facts.append(("posterior over K", pk_text))
    _fig(
        out,
        f"{prefix}k_trace.png",
        P.plot_k_trace(pk["k_trace"], pk["posterior_k"], burn_in=pk["burn_in"]),
        "K over sweeps and the posterior over K",
        figs,
    )
    if hasattr(model, "coclustering_"):
        C = U.coclustering(model)
        point = U.psm_point_estimate(C, [model.labels_])
        res["psm_point_estimate_k"] = int(point.max() + 1)
        facts.append(("co-clustering point estimate", f"{int(point.max() + 1)} clusters (least-squares)"))
        _fig(
            out,
            f"{prefix}coclustering.png",
            P.plot_coclustering(C, point),
            "posterior co-clustering matrix, ordered by the point estimate",
            figs,
        )
    if np.asarray(model.draws_weights_).shape[0]:
        ci = U.credible_intervals(model)
        res["weights_ci90"] = ci["weights"]
        facts.append(
            (
                "90% intervals of the weights",
                "; ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, _, hi in ci["weights"]),
            )
        )
    return res


def _proba_figures(
    model: Any, Xf: np.ndarray, y: Any, out: Path, prefix: str, figs: list, facts: list
) -> dict:
    from . import plotting as P
    from . import uncertainty as U

    res: dict[str, Any] = {}
    H = U.assignment_entropy(model, Xf)
    res["entropy_mean"], res["least_sure"] = float(H.mean()), np.argsort(-H, kind="stable")[:10].tolist()
    facts.append(
        ("mean assignment entropy", f"{H.mean():.3f} nats; least sure points {res['least_sure'][:5]}")
    )
    if Xf.ndim == 2 and Xf.shape[1] == 2:
        _fig(
            out,
            f"{prefix}uncertainty_map.png",
            P.plot_uncertainty_map(model, Xf),
            "assignment entropy (colour) over the data plane",
            figs,
        )
    if y is not None:
        cal = U.calibration(y, model, Xf)
        res["ece"] = cal["ece"]
        _fig(out, f"{prefix}reliability.png", P.plot_reliability(cal), "reliability diagram", figs)
    return res


def uncertainty_section(
    model: Any,
    X: Any,
    out_dir: str | Path,
    *,
    y: Any = None,
    title: str = "Uncertainty",
    prefix: str = "",
    images: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures and facts on how sure a fitted ``model`` is on X (N, D); ``images`` (N, H, W) if any."""
    from . import plotting as P

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    Xf = np.asarray(X)
    figs: list[dict[str, str]] = []
    facts: list[tuple[str, str]] = [("model", repr(model)[:160])]
    res: dict[str, Any] = {"model": type(model).__name__, "k": int(model.n_components_)}
    if hasattr(model, "predict_proba"):
        res.update(_proba_figures(model, Xf, y, out, prefix, figs, facts))
    if hasattr(model, "posterior_k_"):
        res.update(_posterior_figures(model, Xf, out, prefix, figs, facts))
    if hasattr(model, "prototypes_"):
        _fig(
            out,
            f"{prefix}prototypes.png",
            P.plot_prototypes(model.prototypes_, title="DTI prototypes"),
            "learned prototypes",
            figs,
        )
    if images is not None:
        _fig(
            out,
            f"{prefix}samples.png",
            P.plot_samples_per_cluster(images, model.predict(Xf)),
            "sample images per cluster",
            figs,
        )
    if y is not None:
        _fig(
            out,
            f"{prefix}confusion.png",
            P.plot_confusion(y, model.predict(Xf), title="Confusion matrix"),
            "confusion matrix (clusters matched to classes)",
            figs,
        )
    return {"title": title, "facts": facts, "figures": figs}, res
