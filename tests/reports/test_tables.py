import csv
import io
import json
import re
from html import escape

import numpy as np
import pytest
from PIL import Image

from synthcp3d.reports.tables import Column, Table, render_tables, write_table, write_tables

COLS = [Column("method", "Method", fmt=""), Column("mae", "MAE", "lower"), Column("auroc", "AUROC", "higher", ".1f")]
ROWS = [{"method": "MSP", "mae": None, "auroc": 80.123},
        {"method": "SynthCP <joint>", "mae": np.float32(3.5), "auroc": 91.0},
        {"method": "Direct", "mae": 7.25, "auroc": float("nan")}]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_write_table_files(tmp_path):
    paths = write_table(ROWS, COLS, tmp_path / "out", "table1", title="Table <1>", notes="phantom only",
                        figures={"curves": _png()})
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["table1.csv", "table1.html", "table1.json", "table1.md"]
    lines = list(csv.reader(io.StringIO(paths["csv"].read_text())))
    assert lines[0] == ["method", "mae", "auroc"]
    assert lines[1] == ["MSP", "", "80.123"] and lines[3] == ["Direct", "7.25", ""]
    assert float(lines[2][1]) == 3.5

    doc = json.loads(paths["json"].read_text())
    t = doc["tables"][0]
    assert doc["title"] == "Table <1>" and doc["figures"] == ["curves"] and doc["notes"] == ["phantom only"]
    assert t["rows"][2]["auroc"] is None and t["rows"][1]["mae"] == 3.5 and t["rows"][0]["mae"] is None
    assert [c["key"] for c in t["columns"]] == ["method", "mae", "auroc"] and t["columns"][1]["better"] == "lower"

    page = paths["html"].read_text()
    assert "Table &lt;1&gt;" in page and escape("SynthCP <joint>") in page and "SynthCP <joint>" not in page
    assert page.count("N/A") == 2
    assert '<b class="best">3.50</b>' in page and '<b class="best">91.0</b>' in page  # lower MAE, higher AUROC
    assert "80.1" in page and "80.123" not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 1
    md = paths["md"].read_text().splitlines()
    assert md[0] == "# Table <1>" and "| Method | MAE ↓ | AUROC ↑ |" in md
    assert "| SynthCP <joint> | 3.50 | 91.0 |" in md and "| MSP | N/A | 80.1 |" in md


def test_multiple_tables_csv_has_table_column(tmp_path):
    gen = Table("generalisation", [Column("method", fmt=""), "trained_on", Column("auroc", better="higher")],
                [{"method": "SynthCP", "trained_on": "A", "auroc": 0.5}])
    paths = write_tables([Table("main", COLS, ROWS), gen], tmp_path, "t", title="x")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert list(rows[0]) == ["table", "method", "mae", "auroc", "trained_on"]
    assert [r["table"] for r in rows] == ["main"] * 3 + ["generalisation"]
    assert rows[-1]["trained_on"] == "A" and rows[0]["trained_on"] == ""
    # a single value cannot be "best": no bold in the one-row table
    assert '<b class="best">0.50</b>' not in paths["html"].read_text()


def test_errors_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        write_tables([Table("a", COLS), Table("a", COLS)], tmp_path / "o", title="x")
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="better"):
        Column("x", better="up")
    out = render_tables([Table("a", COLS, [])], title="empty")
    assert "no rows" in out["html"] and out["csv"] == "method,mae,auroc\n"
    assert json.loads(out["json"])["tables"][0]["columns"][2]["fmt"] == ".1f"
