"""The HTML report: rendered with Jinja2, and opened in headless Chromium (every image loads, the table is
there). The browser check skips with a reason when neither ``chromium`` nor ``chromium-browser`` is on PATH
(``apt-get install chromium``; ``.ci/run`` installs it where it can)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import bayesclust as bc
from bayesclust.report import comparison_section, render_template, uncertainty_section, write_report

CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const tables = document.querySelectorAll("table.comparison tbody tr").length;
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images: imgs.length, loaded: ok, table_rows: tables});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.5, (40, 2)) for c in ([0, 0], [3, 0], [0, 3])])
    y = np.repeat([0, 1, 2], 40)
    comp = bc.compare(["gmm", bc.DPGMM(max_iter=30, coclustering=True)], X, y, names=["gmm", "dpgmm"])
    s1, r1 = comparison_section(comp, out, "Comparison <&>")
    s2, r2 = uncertainty_section(comp.models["dpgmm"][0], X, out, y=y, prefix="u_")
    index = write_report(out, [s1, s2], {"comparison": r1, "uncertainty": r2}, title="test report")
    return index


def test_report_files_and_escaping(report):
    html = report.read_text()
    assert "<table class=\"comparison\">" in html and "Comparison &lt;&amp;&gt;" in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) >= 6 and all((report.parent / s).is_file() for s in srcs)
    data = json.loads((report.parent / "results.json").read_text())
    assert data["uncertainty"]["map_k"] == 3 and len(data["comparison"]["rows"]) == 2


def test_write_report_rejects_missing_figure(tmp_path):
    with pytest.raises(ValueError, match="figure 'nope.png' of section 'S' is not in"):
        write_report(tmp_path, [{"title": "S", "figures": [{"src": "nope.png", "caption": ""}]}], {})


def test_table_template_renders():
    html = render_template("table.html.j2", header=["model", "acc"], body=[["a", "1.0"]], names=["a"],
                           agreement=[["1.000"]])
    assert "<td>a</td>" in html and "agreement" not in html


def _browser() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium / chromium-browser on PATH (apt-get install chromium); browser check skipped")


def test_report_opens_in_headless_chromium(report):
    browser = _browser()
    page = report.parent / "browser_check.html"
    page.write_text(report.read_text().replace("</body>", CHECK + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=10000"]
    r = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="browser-check">(.*?)</pre>', r.stdout)
    assert m, f"no check output from chromium: {r.stderr[-500:]}"
    res = json.loads(m.group(1).replace("&quot;", '"'))
    assert res["images"] >= 6 and res["loaded"] == res["images"], res
    assert res["table_rows"] == 2
    shot = report.parent / "screenshot.png"
    subprocess.run([*flags, "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10000


def test_figures_have_titles_and_labels_and_check_shapes(tmp_path):
    from bayesclust import plotting as P
    from bayesclust.posterior import build_inference_data

    rng = np.random.default_rng(0)
    idata = build_inference_data({"weights": rng.dirichlet([1, 1], size=(2, 50))})
    fig = P.plot_trace_rank(idata, "weights", path=tmp_path / "tr.png")
    assert (tmp_path / "tr.png").is_file() and fig._suptitle.get_text().startswith("Posterior diagnostics")
    assert all(ax.get_ylabel() for ax in fig.axes)
    cal = bc.uncertainty.calibration([0, 1, 1, 0], np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]]))
    ax = P.plot_reliability(cal).axes[0]
    assert "ECE" in ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    ax = P.plot_k_trace([1, 2, 2, 3], {2: 0.5, 3: 0.5}, burn_in=1).axes[0]
    assert ax.get_xlabel() == "sweep" and ax.get_ylabel() == "K"
    with pytest.raises(ValueError, match="'nope' is not in the posterior"):
        P.plot_trace_rank(idata, "nope")
    with pytest.raises(ValueError, match="needs 2-D data \\(N, 2\\)"):
        P.plot_decision_regions({"a": None}, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="models is empty"):
        P.plot_decision_regions({}, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="C must be \\(N, N\\) and labels \\(N,\\)"):
        P.plot_coclustering(np.eye(3), [0, 1])
    with pytest.raises(ValueError, match="images must be \\(N, H, W\\)"):
        P.plot_samples_per_cluster(np.zeros((4, 5)), [0, 1, 0, 1])
    import matplotlib.pyplot as plt

    plt.close("all")
