import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthcp3d.cli import main


@pytest.mark.parametrize(
    "argv", [[], ["phantom"], ["phantom", "pancreas"], ["phantom", "scenes"], ["demo"], ["report"]]
)
def test_help_on_every_level(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: synthcp3d" in capsys.readouterr().out


def test_module_entry_point_and_missing_args():
    r = subprocess.run([sys.executable, "-m", "synthcp3d", "phantom", "pancreas"], capture_output=True, text=True)
    assert r.returncode == 2 and "--out" in r.stderr


# ------------------------------------------------------------------ usage errors: exit 2, option named, no output

FILE = "somefile.txt"  # a regular file in tmp_path: --out under it (or at it) cannot be a folder


@pytest.mark.parametrize(("argv", "option"), [
    (["phantom", "pancreas", "--test-cases", "-2"], "--test-cases"),
    (["phantom", "pancreas", "--cases", "-3"], "--cases"),
    (["phantom", "pancreas", "--cases", "0"], "--cases"),
    (["phantom", "pancreas", "--size", "0", "0", "0"], "--size"),
    (["phantom", "pancreas", "--size", "96", "96", "7"], "--size"),
    (["phantom", "pancreas", "--seed", "-1"], "--seed"),
    (["phantom", "pancreas", "--seed", str(2**32)], "--seed"),
    (["phantom", "pancreas", "--seed", "1.5"], "--seed"),
    (["phantom", "pancreas", "--fov", "100", "0", "100"], "--fov"),
    (["phantom", "pancreas", "--fov", "nan", "100", "100"], "--fov"),
    (["phantom", "pancreas", "--out", f"{FILE}/sub"], "--out"),
    (["phantom", "pancreas", "--out", FILE], "--out"),
    (["phantom", "scenes", "--style", "cityscapes", "--images", "0"], "--images"),
    (["phantom", "scenes", "--style", "cityscapes", "--size", "0", "64"], "--size"),
    (["phantom", "scenes", "--style", "streethazards", "--seed", "-1"], "--seed"),
    (["phantom", "scenes", "--style", "cityscapes", "--out", f"{FILE}/sub"], "--out"),
    (["demo", "--cases", "3"], "--cases"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--out", f"{FILE}/sub"], "--out"),
    (["report", "--table", "t.json", "--threshold", "7"], "--threshold"),
    (["report", "--table", "t.json", "--threshold", "-0.1"], "--threshold"),
    (["report", "--table", "t.json", "--threshold", "nan"], "--threshold"),
    (["report", "--table", "t.json", "--out", f"{FILE}/sub"], "--out"),
    (["study", "--threads", "0"], "--threads"),
    (["study", "--out", f"{FILE}/sub"], "--out"),
])  # fmt: skip
def test_bad_option_is_a_usage_error_and_writes_nothing(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / FILE).write_text("not a folder")
    if "--out" not in argv:
        argv = [*argv, "--out", "out"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: synthcp3d" in err and f"argument {option}: " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]


def test_usage_error_messages_name_the_bound(tmp_path, capsys):
    for argv, message in [(["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
                          (["--test-cases", "-2"], "argument --test-cases: must be >= 0, got -2"),
                          (["--size", "0", "0", "0"], "argument --size: must be >= 8, got 0")]:  # fmt: skip
        with pytest.raises(SystemExit):
            main(["phantom", "pancreas", "--out", str(tmp_path / "o"), *argv])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_boundary_values_are_accepted(tmp_path):
    from synthcp3d.cli import build_parser

    parse = build_parser().parse_args
    args = parse(["phantom", "pancreas", "--out", str(tmp_path / "new" / "dir"), "--cases", "1", "--test-cases", "0",
                  "--size", "8", "8", "8", "--seed", str(2**32 - 1), "--fov", "0.5", "0.5", "0.5"])  # fmt: skip
    assert (args.cases, args.test_cases, args.size, args.seed) == (1, 0, [8, 8, 8], 2**32 - 1)
    scenes = parse(["phantom", "scenes", "--style", "cityscapes", "--out", str(tmp_path), "--size", "8", "8"])
    assert scenes.size == [8, 8]
    assert parse(["demo", "--cases", "4", "--seed", "0"]).out == Path("runs/demo")
    for t in ("0", "1", "0.5"):
        assert parse(["report", "--table", "t.json", "--out", str(tmp_path), "--threshold", t]).threshold == float(t)
    assert not any(tmp_path.iterdir())


def test_usage_error_in_a_process_has_no_traceback(tmp_path):
    out = tmp_path / "p"
    r = subprocess.run([sys.executable, "-m", "synthcp3d", "phantom", "pancreas", "--out", str(out), "--seed", "-1"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "argument --seed: must be >= 0, got -1" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


# ---------------------------------------------------------------- report: Dice values outside the contract refused


def _row(case_id: str, split: str = "cv") -> dict:
    """A row of the alarm-table contract (reports.writer) with the nulls the alarm stages may write."""
    return {"case_id": case_id, "split": split, "image": "img.nii.gz", "pred": "pred.nii.gz", "synth": None,
            "error_map": None, "label": None, "true": {"pancreas": 0.8, "tumour": 0.6},
            "predicted": {"synthcp": {"pancreas": 0.75, "tumour": 0.55}, "vae_alarm": {"pancreas": 1, "tumour": 0},
                          "direct_prediction": {"pancreas": None, "tumour": None}},
            "interval": {"pancreas": [0.6, 0.9], "tumour": [None, None]}, "coverage": 0.9, "review": False}  # fmt: skip


def _table(tmp_path, bad_field: str | None = None, value=None):
    """Three rows (the last one a failed case: every number null); row 1's ``bad_field`` (dotted) set to ``value``."""
    rows = [_row("c0"), _row("c1"), _row("c2", "new")]
    rows[2].update(true={"pancreas": None, "tumour": None}, interval={"pancreas": [None, None], "tumour": None},
                   predicted={"synthcp": {"pancreas": None, "tumour": None}, "ensemble": None}, coverage=None,
                   review=True)  # fmt: skip
    if bad_field:
        *parents, leaf = bad_field.split(".")
        target = rows[1]
        for key in parents:
            target = target[key]
        target[leaf] = value
    table = tmp_path / "alarm_table.json"
    table.write_text(json.dumps(rows))  # NaN is written as the NaN literal, which json.loads reads back
    return table


def test_report_accepts_the_nulls_of_the_contract(tmp_path, capsys):
    table, out = _table(tmp_path), tmp_path / "rep"
    assert main(["report", "--table", str(table), "--out", str(out), "--no-thumbnails"]) == 0
    assert (out / "report.html").is_file() and "synthcp3d" not in capsys.readouterr().err


@pytest.mark.parametrize(("field", "value"), [
    ("true.tumour", -0.4), ("true.tumour", 1.7), ("true.pancreas", "abc"), ("true.tumour", float("nan")),
    ("true.tumour", True), ("predicted.synthcp.tumour", -0.4), ("predicted.synthcp.tumour", 1.7),
    ("predicted.synthcp.pancreas", "abc"), ("predicted.vae_alarm.tumour", float("nan")),
    ("predicted.synthcp", [0.5, 0.5]), ("true", 0.5), ("interval.tumour", [0.9, 0.1]),
    ("interval.tumour", [-0.2, 0.5]), ("interval.pancreas", 0.5), ("coverage", 90), ("review", "no"),
])  # fmt: skip
def test_report_refuses_values_outside_the_contract(field, value, tmp_path, capsys):
    table, out = _table(tmp_path, field, value), tmp_path / "rep"
    assert main(["report", "--table", str(table), "--out", str(out), "--no-thumbnails"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("synthcp3d: error: ") and "\n" not in err and "Traceback" not in err
    assert str(table) in err and "row 1 (case 'c1')" in err and f"{field} must be" in err, err
    assert captured.out == "" and not out.exists()


def test_report_on_garbage_exits_2_in_a_process(tmp_path):
    table, out = _table(tmp_path, "predicted.synthcp.tumour", 1.7), tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "synthcp3d", "report", "--table", str(table), "--out", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "predicted.synthcp.tumour must be a number in [0, 1] or null, got 1.7" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == "" and not out.exists()


def test_import_preds_indexes_another_tools_cv_predictions(tmp_path, capsys):
    import shutil

    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    root = make_pancreas_dataset(tmp_path / "Task07", num_cases=4, num_test=0, size=(16, 16, 8), seed=1,
                                 progress=False)  # fmt: skip
    preds = tmp_path / "preds"
    shutil.copytree(root / "labelsTr", preds)
    out = tmp_path / "tool"
    assert main(["import-preds", "--dataset", str(root), "--preds", str(preds), "--out", str(out), "--folds", "2"]) == 0
    index = json.loads((out / "predictions" / "index.json").read_text())
    assert sorted(index) == [f"pancreas_00{k}" for k in range(1, 5)]
    assert sorted(r["fold"] for r in index.values()) == [0, 0, 1, 1] and {r["split"] for r in index.values()} == {"cv"}
    (preds / "pancreas_003.nii.gz").unlink()
    assert main(["import-preds", "--dataset", str(root), "--preds", str(preds), "--out", str(tmp_path / "t2")]) == 2
    assert "no prediction for case 'pancreas_003'" in capsys.readouterr().err
