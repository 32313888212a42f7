"""Anomaly report: Table 3 / Table 4 shapes, the Fig.-7 grid, files on disk."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from synthcp3d.data.streethazards import STREETHAZARDS_PALETTE
from synthcp3d.reports.anomaly import anomaly_tables, render_anomaly_grid, write_anomaly_report


def _m(fpr, auroc, aupr, n=3):
    return {"fpr95": fpr, "auroc": auroc, "aupr": aupr, "n_images": n, "protocol": "per_image"}


def _example(cid, h=16, w=32):
    rng = np.random.default_rng(len(cid))
    return {"case_id": cid, "image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
            "synth": rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "label": rng.integers(0, 14, (h, w)),
            "pred": rng.integers(0, 13, (h, w)), "msp": rng.random((h, w)), "synthcp": np.zeros((h, w))}  # fmt: skip


RESULTS = {
    "methods": {"MSP": _m(40.0, 80.0, 5.0), "MaxLogit": _m(35.0, 82.0, 6.0), "SynthCP (t=0.999)": _m(30.0, 85.0, 9.0),
                "SynthCP, no post-processing": _m(50.0, 78.0, 8.0)},
    "sweep": {0.9: _m(31.0, 84.0, 7.0), 0.999: _m(30.0, 85.0, 9.0), 1.0: _m(50.0, 78.0, 8.0)},
    "examples": [_example("t5_1"), _example("t5_22")],
    "n_images": 3, "n_skipped": 1, "threshold": 0.999,
}  # fmt: skip


def test_tables_have_the_papers_shape():
    t3, t4 = anomaly_tables(RESULTS)
    assert [r["method"] for r in t3.rows] == list(RESULTS["methods"])
    assert t3.rows[2] == {"method": "SynthCP (t=0.999)", "fpr95": 30.0, "auroc": 85.0, "aupr": 9.0, "n_images": 3}
    assert [c.better for c in t3.cols()[1:4]] == ["lower", "higher", "higher"]
    assert [c.key for c in t4.cols()] == ["metric", "t=0.9", "t=0.999", "t=1"]
    assert [r["metric"] for r in t4.rows] == ["FPR95 ↓", "AUROC ↑", "AUPR ↑"]
    assert t4.rows[2] == {"metric": "AUPR ↑", "t=0.9": 7.0, "t=0.999": 9.0, "t=1": 8.0}
    assert "3 test images (1 without anomaly skipped)" in t3.caption


def test_grid_png_layout():
    png = render_anomaly_grid(RESULTS["examples"], STREETHAZARDS_PALETTE, panel_px=100)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width == 600  # six 100-px panels
        assert im.height > 2 * 50  # two rows of 50-px panels plus titles
    assert render_anomaly_grid([], STREETHAZARDS_PALETTE) is None


def test_write_report_files(tmp_path):
    paths = write_anomaly_report(RESULTS, tmp_path, palette=STREETHAZARDS_PALETTE, title="t")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    t3 = [r for r in rows if r["table"] == "table3"]
    assert [r["method"] for r in t3] == list(RESULTS["methods"]) and float(t3[1]["aupr"]) == 6.0
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 1 and "Fig. 7" in html
    doc = json.loads(paths["json"].read_text())
    assert [t["name"] for t in doc["tables"]] == ["table3", "table4"]
    raw = json.loads(paths["metrics"].read_text())
    assert "examples" not in raw and raw["sweep"]["0.999"]["aupr"] == pytest.approx(9.0)
