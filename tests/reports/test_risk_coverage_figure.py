import io

import numpy as np
import pytest
from PIL import Image

from synthcp3d.metrics import aurc, optimal_aurc
from synthcp3d.reports import figures
from synthcp3d.reports.html import render_html
from synthcp3d.reports.table2 import summarize


def _rows():
    true = [0.7, 0.9, 0.1, 0.5, None]  # risks 0.3, 0.1, 0.9, 0.5; the last case has no truth
    pred = [0.9, 0.8, 0.7, 0.2, 0.6]
    return [{"case_id": f"c{i}", "true": {"tumour": t, "pancreas": 0.8},
             "predicted": {"synthcp": {"tumour": p, "pancreas": 0.7}, "vae_alarm": {"tumour": 0.4},
                           "direct_prediction": {"tumour": None}}}
            for i, (t, p) in enumerate(zip(true, pred, strict=True))]


def test_risk_coverage_figure_curves_and_legend():
    rows = _rows()
    fig = figures.risk_coverage_figure(rows, summarize(rows))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    risk = np.array([0.3, 0.1, 0.9, 0.5])
    # direct_prediction has no predicted tumour Dice: no curve
    assert labels == [f"VAE alarm (AURC {100 * 0.45:.1f}, n = 4)",
                      f"SynthCP (AURC {100 * aurc([0.9, 0.8, 0.7, 0.2], risk):.1f}, n = 4)",
                      f"optimal ranking (AURC {100 * optimal_aurc(risk):.1f})", "random ranking (AURC 45.0)"]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    synthcp = lines[labels[1]]
    np.testing.assert_allclose(synthcp.get_xdata(), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(synthcp.get_ydata(), [0.3, 0.2, 13 / 30, 0.45])
    np.testing.assert_allclose(lines[labels[0]].get_ydata(), 0.45)  # constant prediction: all tied
    np.testing.assert_allclose(lines[labels[2]].get_ydata(), [0.1, 0.2, 0.3, 0.45])
    np.testing.assert_allclose(lines[labels[3]].get_ydata(), 0.45)
    # the legend's AURC is the mean of the plotted curve
    assert np.mean(synthcp.get_ydata()) == pytest.approx(aurc([0.9, 0.8, 0.7, 0.2], risk))


def test_render_risk_coverage_png_and_nothing_to_plot():
    rows = _rows()
    png = figures.render_risk_coverage(rows, summarize(rows))
    assert Image.open(io.BytesIO(png)).format == "PNG"
    no_truth = [{**r, "true": {"tumour": None}} for r in rows]
    assert figures.render_risk_coverage(no_truth, summarize(no_truth)) is None
    assert figures.render_risk_coverage([], summarize([])) is None


def test_render_html_risk_coverage_section(monkeypatch):
    from synthcp3d.reports.html import CaseView

    rows = _rows()
    cases = [CaseView(r, False, "synthcp", None) for r in rows]
    seen = []
    monkeypatch.setattr(figures, "render_risk_coverage", lambda rs, s, cls: seen.append((len(rs), cls)) or b"PNG")
    page = render_html("t", summarize(rows), cases, None, thumbnails=False)
    assert seen == [(len(rows), "tumour")] and "Risk-coverage: ranking cases by predicted tumour Dice" in page
    assert page.count("data:image/png;base64,") == 1
    off = render_html("t", summarize(rows), cases, None, thumbnails=False, risk_coverage=False)
    assert "Risk-coverage" not in off and len(seen) == 1
    monkeypatch.setattr(figures, "render_risk_coverage", lambda rs, s, cls: None)
    assert "nothing to plot" in render_html("t", summarize(rows), cases, None, thumbnails=False)
