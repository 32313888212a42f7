import csv
import io
import json
import os
import re
from html import escape

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from synthcp3d.cli import main
from synthcp3d.data.io import DataError
from synthcp3d.reports import figures, writer
from synthcp3d.reports.figures import canonical_axial_slice, render_thumbnail
from synthcp3d.reports.table2 import METHOD_LABELS
from synthcp3d.reports.writer import REPORT_FILES, load_alarm_table, write_report

from .conftest import LPS, RAS

NASTY_ID = 'case <7> & "x"'


def _report_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_write_report_files(rows, tmp_path):
    rows[1]["case_id"] = NASTY_ID
    paths = write_report(rows, tmp_path / "out", title="Demo <report>", threshold=0.5)
    assert set(paths) == {"html", "csv", "json"} and all(p.is_file() for p in paths.values())
    assert _report_files(tmp_path / "out") == sorted(REPORT_FILES.values())  # no temp files left

    doc = json.loads(paths["json"].read_text())
    assert doc["rows"] == json.loads(json.dumps(rows))
    flagged = [r["case_id"] for r in rows if r["review"] or r["predicted"]["ensemble"]["tumour"] < 0.5]
    assert sorted(doc["flagged"]) == sorted(flagged) and doc["order"][: len(flagged)] == doc["flagged"]
    preds = [next(r for r in rows if r["case_id"] == c)["predicted"]["ensemble"]["tumour"] for c in doc["flagged"]]
    assert preds == sorted(preds)  # flagged first, then by predicted Dice

    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [t["case_id"] for t in table] == doc["order"] and len(table) == len(rows)
    by_id = {t["case_id"]: t for t in table}
    for r in rows:
        t = by_id[r["case_id"]]
        assert float(t["pred_synthcp_tumour"]) == r["predicted"]["synthcp"]["tumour"]
        assert (t["true_tumour"] == "") == (r["true"]["tumour"] is None)
        assert float(t["interval_tumour_lo"]) == r["interval"]["tumour"][0]

    page = paths["html"].read_text()
    assert escape(NASTY_ID) in page and NASTY_ID not in page and "Demo &lt;report&gt;" in page
    for r in rows:
        assert escape(r["case_id"]) in page
    for m, label in METHOD_LABELS.items():
        if any(m in r["predicted"] for r in rows):  # the methods this table has
            assert escape(label) in page
    assert page.count('<span class="flag">REVIEW</span>') == len(flagged)
    assert f'<span class="flag">{len(flagged)}</span> flagged for review' in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(rows) + 2  # thumbnails + scatter + risk-coverage
    assert "Risk-coverage: ranking cases by predicted tumour Dice" in page
    assert "AURC ↓" in page and "e-AURC ↓" in page
    stripped = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in stripped and "<link" not in stripped and "<script" not in stripped
    assert "Tumour Dice prediction" in page and "Pancreas Dice prediction" in page
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths.values())
    r0 = rows[0]
    p0, (lo, hi) = r0["predicted"]["ensemble"]["tumour"], r0["interval"]["tumour"]
    assert f'{p0:.2f} <span class="small">[{lo:.2f}, {hi:.2f}]</span>' in page


def test_null_truth_rows_listed_but_not_summarised(rows, tmp_path):
    paths = write_report(rows, tmp_path, thumbnails=False)
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["table"]["tumour"]["synthcp"]["n"] == len(rows) - 2
    assert len(doc["order"]) == len(rows)
    page = paths["html"].read_text()
    assert page.count("data:image/png") == 2 and "Tumour slice" not in page  # scatter and risk-coverage only
    new = next(r for r in rows if r["split"] == "new")
    assert escape(new["case_id"]) in page


def test_missing_methods_in_report(rows, tmp_path):
    for r in rows:
        r["predicted"] = {"synthcp": r["predicted"]["synthcp"]}
    rows[2]["predicted"] = {}
    paths = write_report(rows, tmp_path, thumbnails=False)
    page = paths["html"].read_text()
    assert "SynthCP" in page and "VAE alarm" not in page and "Direct prediction" not in page
    header = paths["csv"].read_text().splitlines()[0]
    assert "pred_synthcp_tumour" in header and "pred_ensemble_tumour" not in header
    doc = json.loads(paths["json"].read_text())
    head = doc["headline_method"]
    assert head[rows[0]["case_id"]] == "synthcp" and head[rows[2]["case_id"]] is None


def test_no_ground_truth_at_all(rows, tmp_path):
    for r in rows:
        r["true"] = {"tumour": None, "pancreas": None}
    page = write_report(rows, tmp_path, thumbnails=False)["html"].read_text()
    assert "nothing to plot" in page and "data:image/png" not in page


def test_interrupted_render_writes_nothing(rows, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []

    def flaky(row, **kw):
        calls.append(row["case_id"])
        if len(calls) == 3:
            raise RuntimeError("plotting failed")
        return render_thumbnail(row, **kw)

    monkeypatch.setattr(figures, "render_thumbnail", flaky)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report(rows, out)
    assert _report_files(out) == []

    monkeypatch.undo()
    write_report(rows[:2], out, thumbnails=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(figures, "render_thumbnail", flaky)
    calls.clear()
    with pytest.raises(RuntimeError):
        write_report(rows, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # earlier report untouched


def test_missing_image_raises_data_error_naming_it(rows, tmp_path):
    rows[4]["image"] = str(tmp_path / "gone.nii.gz")
    with pytest.raises(DataError, match="gone.nii.gz") as e:
        write_report(rows, tmp_path / "out")
    assert rows[4]["case_id"] in str(e.value) and _report_files(tmp_path / "out") == []
    write_report(rows, tmp_path / "out", thumbnails=False)  # without thumbnails no file is read


def test_optional_volumes_get_placeholders(rows):
    r = {**rows[0], "synth": None, "error_map": None, "label": None}
    th = render_thumbnail(r)
    assert Image.open(io.BytesIO(th.png)).size[1] == 120
    with pytest.raises(DataError, match="no 'pred' path"):
        render_thumbnail({**r, "pred": None})
    r["synth"] = "/nonexistent/synth.nii.gz"
    with pytest.raises(DataError, match="synth"):
        render_thumbnail(r)


PERMUTED = np.array([[0, 0, 3.0, 0], [-1.5, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine", [RAS, LPS, PERMUTED])
def test_canonical_axial_slice_matches_as_closest_canonical(tmp_path, affine):
    arr = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), str(p))
    img = nib.load(str(p))
    canon = nib.as_closest_canonical(img).get_fdata()
    for k in range(canon.shape[2]):
        np.testing.assert_allclose(canonical_axial_slice(img, k), canon[:, :, k], rtol=1e-6)


@pytest.mark.parametrize("affine", [RAS, LPS])
def test_thumbnail_slice_and_radiological_orientation(tmp_path, affine):
    from .conftest import write_case

    paths = write_case(tmp_path, "o", tumour_slice=5, affine=affine)
    img = nib.load(paths["image"])
    arr = np.full(img.shape, -1000, np.float32)
    # a bright marker at the patient's right-anterior corner (RAS+: +x = patient right, +y = anterior)
    right_anterior = (slice(20, 24), slice(20, 24)) if affine[0, 0] > 0 else (slice(0, 4), slice(0, 4))
    arr[right_anterior[0], right_anterior[1], :] = 1000
    nib.save(nib.Nifti1Image(arr, affine), paths["image"])
    th = render_thumbnail({"case_id": "o", **paths})
    assert th.slice_index == 5 and th.basis == "tumour"
    rgb = np.asarray(Image.open(io.BytesIO(th.png)).convert("L"), dtype=float)
    ct = rgb[:, : rgb.shape[1] // 4 - 2]
    h, w = ct.shape
    quads = {"top-left": ct[: h // 2, : w // 2], "top-right": ct[: h // 2, w // 2:],
             "bottom-left": ct[h // 2:, : w // 2], "bottom-right": ct[h // 2:, w // 2:]}
    assert max(quads, key=lambda q: quads[q].mean()) == "top-left"


def test_load_alarm_table_and_cli(rows, tmp_path, capsys):
    table = tmp_path / "alarm_table.json"
    for r in rows:  # relative paths resolve against the table's folder
        for k in ("image", "pred", "synth", "error_map", "label"):
            if r[k]:
                r[k] = os.path.relpath(r[k], tmp_path)
    table.write_text(json.dumps(rows))
    assert [r["case_id"] for r in load_alarm_table(table, split="test")] == [
        r["case_id"] for r in rows if r["split"] == "test"]
    assert main(["report", "--table", str(table), "--out", str(tmp_path / "rep"), "--split", "cv"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "rep" / "report.html") in out and "SynthCP + VAE" in out and "Interval coverage" in out
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {r["split"] for r in doc["rows"]} == {"cv"}

    table.write_text('{"not": "a list"}')
    assert main(["report", "--table", str(table), "--out", str(tmp_path / "rep2")]) == 2
    assert "must be a JSON list" in capsys.readouterr().err
    assert main(["report", "--table", str(tmp_path / "missing.json"), "--out", str(tmp_path / "rep2")]) == 2
    assert not (tmp_path / "rep2").exists()


def test_duplicate_case_ids_rejected(rows, tmp_path):
    rows[1]["case_id"] = rows[0]["case_id"]
    with pytest.raises(DataError, match="twice"):
        writer.render_report(rows, thumbnails=False)


def test_render_report_checks_dice_values_in_memory(rows):
    rows[3]["predicted"]["synthcp"]["tumour"] = np.float32(0.25)  # NumPy numbers are numbers
    rows[3]["true"]["tumour"] = np.float64(1.0)
    writer.render_report(rows, thumbnails=False)
    rows[2]["predicted"]["ensemble"]["tumour"] = np.nan  # the alarm stages write a missing value as null
    with pytest.raises(DataError, match=r"row 2 \(case 'case_002'\): predicted.ensemble.tumour must be"):
        writer.render_report(rows, thumbnails=False)
