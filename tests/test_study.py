"""The alarm study (synthcp3d.study): metrics against scipy, diagnostics on constructed volumes, the phantom's
study knobs, CLI usage errors, and resume / skip / failure handling on fake run folders (no bundle training)."""

import csv
import dataclasses
import json
import shlex

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from synthcp3d import study
from synthcp3d.alarms.samples import case_dice
from synthcp3d.cli import main
from synthcp3d.data.io import write_nifti
from synthcp3d.data.phantom_pancreas import make_pancreas_dataset, sample_case

# ----------------------------------------------------------------------------------------------- metrics


def test_score_matches_scipy_and_hand_computation():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, (15, 2))
    pred = np.clip(true + rng.normal(0, 0.2, true.shape), 0, 1)
    true[3, 1] = np.nan  # tumour absent from prediction and label: left out
    pred[5, 0] = np.nan  # a method without a value for one case: left out
    res = study.score(pred, true, threshold=0.5)
    for k, c in enumerate(study.CLASSES):
        ok = np.isfinite(pred[:, k]) & np.isfinite(true[:, k])
        p, t = pred[ok, k], true[ok, k]
        err = np.abs(p - t)
        assert res[c]["n"] == ok.sum() == 14
        assert res[c]["mae"] == pytest.approx(100 * err.mean())
        assert res[c]["std"] == pytest.approx(100 * np.sqrt(np.mean((err - err.mean()) ** 2)))
        assert res[c]["pearson"] == pytest.approx(100 * stats.pearsonr(p, t)[0])
        assert res[c]["spearman"] == pytest.approx(100 * stats.spearmanr(p, t)[0])
        assert res[c]["triage_accuracy"] == pytest.approx(100 * np.mean((p < 0.5) == (t < 0.5)))


def test_score_aurc_matches_metrics_and_brute_force():
    from synthcp3d.metrics import aurc, excess_aurc

    rng = np.random.default_rng(3)
    true = rng.uniform(0, 1, (12, 2))
    pred = np.clip(true + rng.normal(0, 0.2, true.shape), 0, 1)
    true[2, 1] = np.nan
    pred[7, 0] = np.nan
    res = study.score(pred, true)
    for k, c in enumerate(study.CLASSES):
        ok = np.isfinite(pred[:, k]) & np.isfinite(true[:, k])
        p, risk = pred[ok, k], 1 - true[ok, k]
        order = np.argsort(-p)
        brute = np.mean([risk[order[:j]].mean() for j in range(1, ok.sum() + 1)])  # no ties in random data
        best = np.sort(risk)
        optimum = np.mean([best[:j].mean() for j in range(1, ok.sum() + 1)])
        assert res[c]["aurc"] == pytest.approx(100 * brute) == pytest.approx(100 * aurc(p, risk))
        assert res[c]["eaurc"] == pytest.approx(100 * (brute - optimum)) == pytest.approx(100 * excess_aurc(p, risk))
    # a perfect ranking (predicted Dice monotone in the true Dice) has e-AURC 0
    perfect = study.score(true ** 2, true)
    assert perfect["tumour"]["eaurc"] == pytest.approx(0.0, abs=1e-9)
    empty = study.score(np.full((2, 2), np.nan), np.full((2, 2), 0.5))
    assert np.isnan(empty["tumour"]["aurc"]) and np.isnan(empty["pancreas"]["eaurc"])


def test_score_triage_by_hand_and_empty_class():
    true = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.3, np.nan]])
    pred = np.array([[0.8, 0.6], [0.45, 0.8], [0.4, 0.0], [0.2, 0.3]])
    res = study.score(pred, true)
    assert res["pancreas"]["triage_accuracy"] == pytest.approx(75.0)  # case 2 called bad, truly good
    assert res["tumour"]["triage_accuracy"] == pytest.approx(100 * 2 / 3)  # case 0 called good, truly bad
    assert res["tumour"]["n"] == 3
    empty = study.score(np.full((2, 2), np.nan), np.full((2, 2), 0.5))
    assert empty["tumour"]["n"] == 0 and np.isnan(empty["tumour"]["mae"])


def test_constant_baseline_is_the_training_mean():
    train = np.array([[0.8, 0.1], [0.6, np.nan], [0.7, 0.3]])
    base = study.constant_baseline(train, 4)
    np.testing.assert_allclose(base, np.tile([0.7, 0.2], (4, 1)))
    true = np.array([[0.5, 0.0], [0.9, 0.4], [0.7, 0.2], [0.6, 0.6]])
    res = study.score(base, true)
    assert res["pancreas"]["mae"] == pytest.approx(100 * np.mean(np.abs(0.7 - true[:, 0])))
    assert res["tumour"]["mae"] == pytest.approx(100 * np.mean(np.abs(0.2 - true[:, 1])))
    assert np.isnan(res["tumour"]["pearson"]) and np.isnan(res["tumour"]["spearman"])  # undefined for a constant
    assert np.isnan(study.constant_baseline(np.array([[0.5, np.nan]]), 2)[:, 1]).all()
    for value in (0.1, 0.3, 1 / 3, 0.0463):  # the mean of equal floats is not always that float
        const = study.score(np.full((20, 2), value), np.linspace(0, 1, 40).reshape(20, 2))
        assert np.isnan(const["tumour"]["pearson"]) and np.isnan(const["pancreas"]["spearman"])
    # a constant prediction ties every case: a random ranking, AURC = mean risk = 1 - mean true Dice
    assert res["pancreas"]["aurc"] == pytest.approx(100 * (1 - true[:, 0].mean()))
    assert res["tumour"]["aurc"] == pytest.approx(100 * (1 - true[:, 1].mean()))
    # optimal tumour order: risks 0.4, 0.6, 0.8, 1.0 -> top-k means 0.4, 0.5, 0.6, 0.7, optimal AURC 0.55
    assert res["tumour"]["eaurc"] == pytest.approx(100 * (0.7 - 0.55))


def test_score_split_scores_every_method_and_the_baseline():
    rows = [{"case_id": f"c{i}", "true": {"pancreas": 0.5 + 0.1 * i, "tumour": 0.1 * i},
             "predicted": {"synthcp": {"pancreas": 0.6, "tumour": 0.1 * i + 0.05},
                           "direct_prediction": {"pancreas": None, "tumour": 0.2}}} for i in range(4)]  # fmt: skip
    true = study._matrix(rows, None)
    res = study.score_split(rows, true, true)
    assert list(res) == ["synthcp", "direct_prediction", study.BASELINE]
    assert res["synthcp"]["tumour"]["mae"] == pytest.approx(5.0)
    assert res["synthcp"]["tumour"]["pearson"] == pytest.approx(100.0)
    assert res["direct_prediction"]["pancreas"]["n"] == 0
    assert res[study.BASELINE]["tumour"]["mae"] == pytest.approx(100 * np.mean(np.abs(0.15 - true[:, 1])))


def test_dice_spread():
    true = np.array([[0.9, 0.05], [0.8, 0.7], [0.7, 0.3], [0.6, np.nan]])
    s = study.dice_spread(true)
    assert s["pancreas"] == pytest.approx({"n": 4, "min": 0.6, "median": 0.75, "max": 0.9, "frac_below_0.1": 0.0,
                                           "frac_above_0.6": 0.75})  # fmt: skip
    assert s["tumour"]["n"] == 3 and s["tumour"]["median"] == pytest.approx(0.3)
    assert s["tumour"]["frac_below_0.1"] == pytest.approx(1 / 3)
    assert s["tumour"]["frac_above_0.6"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------- diagnostics


def _volumes():
    """label: pancreas block with a tumour cube; pred: tumour shifted by 2 voxels along x (TP, FP, FN known)."""
    label = np.zeros((20, 12, 12), np.uint8)
    label[4:16, 2:10, 2:10] = 1
    label[6:10, 4:8, 4:8] = 2
    pred = np.zeros_like(label)
    pred[4:16, 2:10, 2:10] = 1
    pred[8:12, 4:8, 4:8] = 2
    return label, pred


def test_residual_region_means_on_known_masks():
    label, pred = _volumes()
    tp, fp, fn = (pred == 2) & (label == 2), (pred == 2) & (label != 2), (pred != 2) & (label == 2)
    assert tp.sum() == fp.sum() == fn.sum() == 32
    residual = np.zeros(label.shape)
    residual[tp], residual[fp], residual[fn] = 10.0, 20.0, 30.0
    residual[(pred == 1) & (label == 1)] = 5.0
    res = study.residual_region_means(residual, label, pred)
    assert res == pytest.approx({"tumour_tp": 10.0, "tumour_fp": 20.0, "tumour_fn": 30.0, "pancreas_correct": 5.0})
    none = study.residual_region_means(residual, label, np.where(pred == 2, 1, pred))  # no predicted tumour
    assert np.isnan(none["tumour_tp"]) and np.isnan(none["tumour_fp"]) and none["tumour_fn"] == pytest.approx(20.0)


def test_residual_statistics_shell_is_two_voxels_around_the_predicted_tumour():
    pred = np.zeros((15, 15, 15), np.uint8)
    pred[2:13, 2:13, 2:13] = 1
    pred[7, 7, 7] = 2
    residual = np.zeros(pred.shape)
    residual[7, 7, 7] = 50.0
    # 6-connected dilation twice = the L1 ball of radius 2: 24 voxels besides the centre
    ball = np.abs(np.indices(pred.shape) - 7).sum(0)
    residual[(ball >= 1) & (ball <= 2)] = 8.0
    res = study.residual_statistics(residual, pred)
    assert res["pred_tumour"] == pytest.approx(50.0)
    assert res["tumour_shell"] == pytest.approx(8.0)
    assert res["pred_pancreas"] == pytest.approx(8.0 * 24 / ((pred == 1).sum()))
    assert np.isnan(study.residual_statistics(residual, np.minimum(pred, 1))["pred_tumour"])


def test_near_organ_mask_honours_spacing():
    label = np.zeros((41, 5, 5), np.uint8)
    label[20, 2, 2] = 1
    near = study.near_organ_mask(label, (2.0, 1.0, 1.0), mm=10.0)
    line = near[:, 2, 2]
    assert not line[20]  # the organ itself is not background
    assert np.flatnonzero(line).tolist() == [*range(15, 20), *range(21, 26)]  # 5 voxels of 2 mm either side
    assert not study.near_organ_mask(np.zeros((4, 4, 4)), (1, 1, 1)).any()


def test_fidelity_means_per_true_class():
    label, _ = _volumes()
    x = np.zeros(label.shape)
    gy = np.where(label == 2, 30.0, np.where(label == 1, -10.0, 4.0))
    res = study.fidelity_means(x, gy, label, (1.0, 1.0, 1.0), near_mm=1.0)
    assert res == pytest.approx({"background_near": 4.0, "pancreas": 10.0, "tumour": 30.0})


def test_residual_correlations_match_scipy():
    rng = np.random.default_rng(1)
    dice = rng.uniform(0, 1, (9, 2))
    st = [{"a": float(v), "b": 1.0} for v in rng.normal(size=9)]
    st[2]["a"] = float("nan")
    res = study.spearman_pearson_table(st, dice)
    a = np.array([s["a"] for s in st])
    ok = np.isfinite(a)
    assert res["a"]["tumour"]["n"] == 8
    assert res["a"]["tumour"]["pearson"] == pytest.approx(stats.pearsonr(a[ok], dice[ok, 1])[0])
    assert res["a"]["pancreas"]["spearman"] == pytest.approx(stats.spearmanr(a[ok], dice[ok, 0])[0])
    assert np.isnan(res["b"]["tumour"]["pearson"])  # constant statistic


# ----------------------------------------------------------------------------------------------- phantom


def test_phantom_default_labels_are_those_of_the_code_before_the_knobs():
    import hashlib

    from synthcp3d.data.phantom_pancreas import render_case

    h = hashlib.sha256()
    for i in range(8):
        _, label, _ = render_case(sample_case(np.random.default_rng([11, i]), (24, 24, 12)))
        h.update(label.tobytes())
    # the label maps of phantom_pancreas.py at commit 4c3feaf (before tumour_radius_mm / contrast_scale existed);
    # the images differ since tumours became solid masses instead of darkened underlying tissue
    assert h.hexdigest() == "e5ae97862c770c7bddc8c2d6ffc3d99caf71cc02a84c37555e14319e8b6186db"


def test_phantom_defaults_unchanged_by_the_new_knobs(tmp_path):
    for i in range(6):
        a = sample_case(np.random.default_rng([5, i]), (32, 32, 16), (64, 64, 40), "pancreas")
        b = sample_case(np.random.default_rng([5, i]), (32, 32, 16), (64, 64, 40), "pancreas",
                        tumour_radius_mm=(3.0, 22.0), contrast_scale=1.0)  # fmt: skip
        assert a == b
    kw = {"num_cases": 2, "num_test": 1, "size": (24, 24, 12), "seed": 4, "progress": False}
    plain = make_pancreas_dataset(tmp_path / "plain", **kw)
    knobs = make_pancreas_dataset(tmp_path / "knobs", tumour_radius_mm=(3, 22), contrast_scale=1.0, **kw)
    hidden = make_pancreas_dataset(tmp_path / "hidden", hidden_test_labels="labelsTs_hidden", **kw)
    for f in ("imagesTr/pancreas_001.nii.gz", "labelsTr/pancreas_002.nii.gz", "imagesTs/pancreas_003.nii.gz",
              "dataset.json", "phantom_meta.json"):  # fmt: skip
        assert (plain / f).read_bytes() == (knobs / f).read_bytes() == (hidden / f).read_bytes(), f
    assert not (plain / "labelsTs_hidden").exists()


def test_phantom_hidden_test_labels(tmp_path):
    root = make_pancreas_dataset(tmp_path / "d", num_cases=2, num_test=2, size=(24, 24, 12), seed=1, progress=False,
                                 hidden_test_labels=study.HIDDEN_LABELS)  # fmt: skip
    ds = (root / "dataset.json").read_text()
    assert study.HIDDEN_LABELS not in ds
    test = json.loads(ds)["test"]
    assert test == ["./imagesTs/pancreas_003.nii.gz", "./imagesTs/pancreas_004.nii.gz"]
    for rel in test:
        img = nib.load(root / rel)
        lab = nib.load(root / study.HIDDEN_LABELS / rel.split("/")[-1])
        assert lab.shape == img.shape
        np.testing.assert_allclose(lab.affine, img.affine)
        assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2} and (np.asarray(lab.dataobj) == 2).any()
    assert sorted(p.name for p in (root / study.HIDDEN_LABELS).iterdir()) == ["pancreas_003.nii.gz",
                                                                               "pancreas_004.nii.gz"]  # fmt: skip
    for bad in ("../x", "imagesTr", "/abs", "a/b"):
        with pytest.raises(ValueError, match="hidden_test_labels"):
            make_pancreas_dataset(tmp_path / "e", num_cases=1, size=(16, 16, 8), hidden_test_labels=bad, progress=False)


def test_phantom_tumour_knobs():
    rng = [np.random.default_rng([2, i]) for i in range(12)]
    base = [sample_case(np.random.default_rng([2, i]), (32, 32, 16)) for i in range(12)]
    subtle = [sample_case(r, (32, 32, 16), tumour_radius_mm=(3.0, 6.0), contrast_scale=0.5) for r in rng]
    for a, b in zip(base, subtle, strict=True):
        assert len(a.lesions) == len(b.lesions)
        for lesion in b.lesions:
            assert max(lesion.radii_mm) <= 6.0 * 1.3 + 1e-9
        # the knobs change the tumours only: same anatomy, noise and textures as the default twin
        assert dataclasses.replace(b, lesions=a.lesions) == a
        for la, lb in zip(a.lesions, b.lesions, strict=True):
            assert lb.t == la.t and lb.offset_mm == la.offset_mm
            assert lb.contrast_hu == pytest.approx(0.5 * la.contrast_hu)
            assert max(lb.radii_mm) <= max(la.radii_mm) + 1e-9
    assert max(les.contrast_hu for c in subtle for les in c.lesions) <= 55.0
    for bad in ({"tumour_radius_mm": (5.0, 2.0)}, {"tumour_radius_mm": (0.0, 2.0)}, {"contrast_scale": 0.0}):
        with pytest.raises(ValueError):
            sample_case(np.random.default_rng(0), (16, 16, 8), **bad)


# ------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("bad", [
    [], ["--seeds", "0"], ["--seeds", "x"], ["--cases", "3"], ["--test-cases", "0"], ["--settings", "nope"],
    ["--settings", "demo,demo"], ["--settings", ""], ["--amp-dtype", "float16"], ["--threshold", "1.5"],
    ["--threshold", "abc"], ["--override", "noequals"], ["--override", "output_dir=/x"], ["--override", "=3"],
    ["--profile", "../x"], ["--profile", "nope"], ["--bundle", "/nonexistent/bundle"], ["--unknown"],
    ["--threads", "0"], ["--threads", "two"], ["--cases", "-5"],
])  # fmt: skip
def test_cli_usage_errors_exit_2(bad, tmp_path, capsys):
    argv = ["study", *([] if bad == [] else ["--out", str(tmp_path / "s")]), *bad]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage: synthcp3d" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cli_passes_options(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(study, "run_study", lambda out, **kw: seen.update(out=out, **kw) or 0)
    argv = ["study", "--out", str(tmp_path), "--seeds", "2", "--settings", "coarse,subtle", "--cases", "8",
            "--test-cases", "3", "--amp-dtype", "fp32", "--override", "segmenter#max_epochs=4",
            "--override", "spade#patch_size=[16,16,16]", "--override", "note=plain", "--threshold", "0.4"]  # fmt: skip
    assert main(argv) == 0
    assert seen["settings"] == ("coarse", "subtle") and seen["seeds"] == 2 and seen["cases"] == 8
    assert seen["test_cases"] == 3 and seen["amp_dtype"] == "float32" and seen["profile"] == "tiny"
    assert seen["overrides"] == {"segmenter#max_epochs": 4, "spade#patch_size": [16, 16, 16], "note": "plain"}
    assert seen["threshold"] == 0.4 and seen["rescore"] is False and seen["threads"] is None
    assert main(["study", "--out", str(tmp_path), "--threads", "1", "--rescore"]) == 0
    assert seen["threads"] == 1 and seen["rescore"] is True and seen["settings"] == study.DEFAULT_SETTINGS
    assert seen["cases"] == study.DEFAULT_CASES and seen["test_cases"] == study.DEFAULT_TEST_CASES


def test_study_command_reruns_the_study():
    from synthcp3d.cli import build_parser

    cmd = study.study_command("/tmp/s t", seeds=2, settings=("demo", "coarse"), cases=8, test_cases=3,
                              amp_dtype="float32", profile="tiny", bundle="bundles/pancreas_synthcp",
                              overrides={"spade#patch_size": [16, 16, 16]}, threshold=0.5, threads=1)  # fmt: skip
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert str(args.out) == "/tmp/s t" and args.seeds == 2 and args.settings == ("demo", "coarse")
    assert args.override == [("spade#patch_size", [16, 16, 16])] and args.threads == 1


# ----------------------------------------------------------------------------- fake runs: resume and skip

SHAPE = (16, 16, 8)
AFFINE = np.diag([-2.0, -2.0, 2.5, 1.0])


def _case(rng, shift: int):
    label = np.zeros(SHAPE, np.uint8)
    label[3:13, 4:12, 2:6] = 1
    label[5:9, 6:10, 3:5] = 2
    pred = np.zeros_like(label)
    pred[3:13, 4:12, 2:6] = 1
    pred[5 + shift:9 + shift, 6:10, 3:5] = 2
    image = np.where(label == 2, 40, np.where(label == 1, 100, -50)).astype(np.int16) + rng.integers(-5, 5, SHAPE)
    return image.astype(np.int16), label, pred


def make_fake_run(root, *, heldout: bool = True):
    """A run folder with the files the stages write (phantom, index, synth, alarm tables): G(y^) = x + 7 HU."""
    rng = np.random.default_rng(0)
    paths = study.RunPaths(root)
    cv_rows, held_rows, index, meta, tests = [], [], {}, {}, []
    for i in range(6):
        cid = f"pancreas_{i + 1:03d}"
        image, label, pred = _case(rng, shift=i % 4)
        held = i >= 4
        img_p = paths.data / ("imagesTs" if held else "imagesTr") / f"{cid}.nii.gz"
        write_nifti(img_p, image, AFFINE)
        meta[cid] = {"params": {"noise_hu": 10.0 + i}}
        d = case_dice(pred, label)
        if held:
            write_nifti(paths.hidden_label(cid), label, AFFINE)
            pred_p = paths.alarm_heldout / "predictions" / cid / "pred.nii.gz"
            write_nifti(pred_p, pred, AFFINE)
            tests.append(f"./imagesTs/{cid}.nii.gz")
            held_rows.append({"case_id": cid, "split": "new", "image": str(img_p), "pred": str(pred_p),
                              "true": {"pancreas": None, "tumour": None},
                              "predicted": {m: {"pancreas": 0.9, "tumour": 0.3 + 0.1 * i} for m in study.METHODS}})
            continue
        lab_p = paths.data / "labelsTr" / f"{cid}.nii.gz"
        write_nifti(lab_p, label, AFFINE)
        pred_p = paths.runs / "segmenter" / "predictions" / cid / "pred.nii.gz"
        write_nifti(pred_p, pred, AFFINE)
        write_nifti(paths.synth(cid), np.clip(image + 7.0, -87, 199).astype(np.float32), AFFINE)
        index[cid] = {"split": "cv", "fold": i % 2, "image": str(img_p), "label": str(lab_p), "pred": str(pred_p)}
        cv_rows.append({"case_id": cid, "split": "cv", "image": str(img_p), "pred": str(pred_p), "label": str(lab_p),
                        "true": {"pancreas": float(d[0]), "tumour": float(d[1])},
                        # off by 0.05 (k + 1) towards the middle: the MAE is exact and the Dice stays in [0, 1]
                        "predicted": {m: {"pancreas": 0.8, "tumour": float(d[1]) + (0.05 if d[1] < 0.5 else -0.05)
                                          * (k + 1)} for k, m in enumerate(study.METHODS)}})  # fmt: skip
    paths.data.mkdir(parents=True, exist_ok=True)
    (paths.data / "dataset.json").write_text(json.dumps({"training": [], "test": tests}))
    (paths.data / "phantom_meta.json").write_text(json.dumps({"cases": meta}))
    paths.index.write_text(json.dumps(index))
    paths.alarm_table.parent.mkdir(parents=True, exist_ok=True)
    paths.alarm_table.write_text(json.dumps(cv_rows))
    held_text = json.dumps(held_rows)
    if heldout:
        paths.alarm_heldout.mkdir(parents=True, exist_ok=True)
        paths.heldout_table.write_text(held_text)
    return paths, held_text


@pytest.fixture
def no_training(monkeypatch):
    """Bundle configs must not run; G(y) = x + 5 HU instead of a generator; no global torch flag changes."""
    import synthcp3d.demo
    import synthcp3d.engines.precision

    def forbidden(*a, **k):
        raise AssertionError(f"bundle config run: {a[1] if len(a) > 1 else a}")

    def fake_gt(paths, index, case_ids, *a, **k):
        out = {}
        for cid in case_ids:
            x = nib.load(index[cid]["image"])
            p = paths.diagnostics / "gt_synth" / cid / "synth.nii.gz"
            write_nifti(p, np.clip(np.asarray(x.dataobj) + 5.0, -87, 199).astype(np.float32), x.affine)
            out[cid] = str(p)
        return out, (-87.0, 199.0)

    monkeypatch.setattr(synthcp3d.demo, "run_bundle_config", forbidden)
    monkeypatch.setattr(study, "synthesize_ground_truth", fake_gt)
    monkeypatch.setattr(synthcp3d.engines.precision, "set_flush_denormals", lambda on: None)
    return forbidden


def _run(root, **kw):
    args = {"cases": 4, "test_cases": 2, "bundle": study.RunPaths(root).root, "log": lambda m: None}
    return study.run_one(root, "smoke", 0, **{**args, **kw})


def test_finished_run_is_scored_then_reused(tmp_path, no_training):
    paths, _ = make_fake_run(tmp_path / "smoke" / "seed0")
    rec = _run(paths.root)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["reused"] is False and paths.result.is_file()
    assert set(rec["scores"]) == {"cv", "heldout"}
    assert list(rec["scores"]["cv"]) == [*study.METHODS, study.BASELINE]
    assert rec["scores"]["cv"]["synthcp"]["tumour"]["mae"] == pytest.approx(5.0)
    assert rec["scores"]["cv"]["ensemble"]["tumour"]["mae"] == pytest.approx(20.0)
    # held-out true Dice computed from the alarm's segmentation and the hidden labels
    for cid, d in rec["heldout_true"].items():
        lab = np.asarray(nib.load(paths.hidden_label(cid)).dataobj)
        pred = np.asarray(nib.load(paths.alarm_heldout / "predictions" / cid / "pred.nii.gz").dataobj)
        np.testing.assert_allclose(d, case_dice(pred, lab))
    diag = rec["diagnostics"]
    assert diag["cases"] == 4 and diag["max_dice_gap_vs_table"] == pytest.approx(0.0)
    assert diag["generator_fidelity"]["pancreas"]["mean_abs_hu"] == pytest.approx(5.0)
    assert diag["generator_fidelity"]["tumour"]["mean_abs_hu"] == pytest.approx(5.0)
    assert diag["noise_hu_mean"] == pytest.approx(11.5)
    assert diag["residual_regions"]["tumour_tp"]["median_abs_hu"] == pytest.approx(7.0)
    assert diag["residual_regions"]["tumour_fp"]["n"] == 3  # the first case has no FP voxels (shift 0)
    again = _run(paths.root)
    assert again["reused"] is True and again["scores"] == json.loads(paths.result.read_text())["scores"]


def test_unfinished_run_resumes_after_its_last_finished_stage(tmp_path, monkeypatch, no_training):
    import synthcp3d.demo

    paths, held_text = make_fake_run(tmp_path / "run", heldout=False)
    done = [study._stage_key(c) for _, c in study._stage_list()][:-1]  # all but the alarm config
    paths.stages.write_text(json.dumps({k: {"seconds": 1.0} for k in done}))
    calls = []

    def fake_run(bundle, configs, profile="tiny", **overrides):
        calls.append((list(configs), overrides))
        paths.alarm_heldout.mkdir(parents=True, exist_ok=True)
        paths.heldout_table.write_text(held_text)

    monkeypatch.setattr(synthcp3d.demo, "run_bundle_config", fake_run)
    rec = _run(paths.root, overrides={"segmenter#max_epochs": 1})
    assert rec["status"] == "ok", rec.get("traceback")
    assert [c for c, _ in calls] == [["alarm.json"]]
    ov = calls[0][1]
    assert ov["alarm_out"] == str(paths.alarm_heldout) and ov["segmenter#max_epochs"] == 1
    assert ov["alarm_images"] == [str((paths.data / "imagesTs" / f"pancreas_00{i}.nii.gz").resolve()) for i in (5, 6)]
    assert ov["dataset_dir"] == str(paths.data) and ov["models_dir"] == str(paths.models)
    assert "alarm" in json.loads(paths.stages.read_text())


def test_failures_are_recorded_and_the_study_goes_on(tmp_path, monkeypatch, no_training):
    import synthcp3d.demo

    def broken(bundle, configs, profile="tiny", **overrides):
        raise RuntimeError(f"boom in {configs[0]}")

    monkeypatch.setattr(synthcp3d.demo, "run_bundle_config", broken)
    make_fake_run(tmp_path / "smoke" / "seed1")  # a finished run next to a failing one
    rc = study.run_study(tmp_path, seeds=2, settings=("smoke",), cases=4, test_cases=2, bundle=tmp_path)
    assert rc == 1
    doc = json.loads((tmp_path / "study.json").read_text())
    first, second = doc["runs"]
    assert first["status"] == "failed" and first["failed_stage"] == "crossval"
    assert "boom in crossval.json" in first["error"] and "RuntimeError" in first["traceback"]
    assert second["status"] == "ok"
    assert (tmp_path / "smoke" / "seed0" / "stages.json").is_file()  # the phantom stage is kept for the rerun
    rows = list(csv.DictReader((tmp_path / "study.csv").open()))
    assert len(rows) == 2 * (len(study.METHODS) + 1) * len(study.CLASSES)
    assert {r["seed"] for r in rows} == {"1"}
    assert list(rows[0]) == ["setting", "seed", "split", "method", "class", "n", "mae", "std", "pearson", "spearman",
                             "triage_accuracy", "aurc", "eaurc"]
    cv_const = [r for r in rows if r["split"] == "cv" and r["method"] == study.BASELINE]
    cv_true = study._matrix(json.loads(study.RunPaths(tmp_path / "smoke" / "seed1").alarm_table.read_text()), None)
    for r in cv_const:  # the constant baseline ties every case: AURC = mean risk
        k = study.CLASSES.index(r["class"])
        assert float(r["aurc"]) == pytest.approx(100 * (1 - cv_true[:, k].mean()), abs=1e-4)
    assert all(r["aurc"] and r["eaurc"] and float(r["eaurc"]) >= 0 for r in rows if r["split"] == "cv")
    md = (tmp_path / "study.md").read_text()
    tables = [ln for ln in md.splitlines() if ln.startswith("| method |")]
    assert "| method | pancreas MAE | pancreas STD | pancreas P.C. | pancreas S.C. | pancreas triage | tumour MAE" in md
    assert "| method | pancreas AURC | pancreas e-AURC | tumour AURC | tumour e-AURC |" in tables
    assert len(tables) == 2 * 2 * 2  # (Table 2, AURC) x (cv, held-out) x (setting "smoke", pooled)
    lines = md.splitlines()
    for i, ln in enumerate(lines):  # every table row has its header's number of cells
        if ln.startswith("| method |"):
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count("|") == ln.count("|"), lines[j]
                j += 1
    assert "## failures" in md and "boom in crossval.json" in md and "constant" in md
    assert "CPU capability" in md and "precision:" in md and "synthcp3d study --out" in md
    assert doc["summary"]["pooled"]["cv"]["synthcp"]["tumour"]["mae"]["n"] == 1


def test_run_with_other_settings_is_refused(tmp_path, no_training):
    paths, _ = make_fake_run(tmp_path / "run")
    assert _run(paths.root)["status"] == "ok"
    rec = _run(paths.root, cases=9)
    assert rec["status"] == "failed" and "other settings" in rec["error"]


# ------------------------------------------------------------------ baselines: ensemble agreement, MSP, entropy
BASELINES = ("ensemble_agreement", "msp", "entropy")


def test_methods_include_the_baselines_and_confidences_are_scored_by_ranking():
    assert study.METHODS[-3:] == BASELINES and set(study.CONFIDENCE_METHODS) == {"msp", "entropy"}
    rows = [{"case_id": f"c{i}", "true": {"pancreas": 0.5 + 0.1 * i, "tumour": 0.1 * i},
             "predicted": {"msp": {"pancreas": 0.9 + 0.01 * i, "tumour": 0.6 + 0.05 * i},
                           "ensemble_agreement": {"pancreas": 0.4 + 0.1 * i, "tumour": 0.1 * i + 0.05},
                           "entropy": {"pancreas": None, "tumour": None}}} for i in range(4)]  # fmt: skip
    true = study._matrix(rows, None)
    res = study.score_split(rows, true, true)
    assert list(res) == [*BASELINES, study.BASELINE]
    for c in study.CLASSES:  # MSP is no Dice estimate: no MAE / STD / triage, but its ranking is scored
        assert all(np.isnan(res["msp"][c][k]) for k in ("mae", "std", "triage_accuracy"))
        assert res["msp"][c]["spearman"] == pytest.approx(100.0) and np.isfinite(res["msp"][c]["aurc"])
        assert res["msp"][c]["eaurc"] == pytest.approx(0.0)  # ranks the cases as the true Dice does
    assert res["ensemble_agreement"]["tumour"]["mae"] == pytest.approx(5.0)  # a Dice estimate: all metrics
    assert res["entropy"]["tumour"]["n"] == 0 and np.isnan(res["entropy"]["tumour"]["aurc"])  # null everywhere


def test_baselines_are_scored_on_the_heldout_split_and_dashes_on_cv(tmp_path, no_training):
    """The CV rows carry the baselines as null (no fair ensemble there): '–' in the CV tables, numbers held-out."""
    paths, _ = make_fake_run(tmp_path / "smoke" / "seed0")
    cv_rows = json.loads(paths.alarm_table.read_text())
    for r in cv_rows:
        r["predicted"].update({m: {"pancreas": None, "tumour": None} for m in BASELINES})
    paths.alarm_table.write_text(json.dumps(cv_rows))
    held = json.loads(paths.heldout_table.read_text())
    for i, r in enumerate(held):  # distinct values, so that the held-out ranking metrics are defined
        r["predicted"].update({m: {"pancreas": 0.5 + 0.1 * i, "tumour": 0.2 + 0.3 * i} for m in BASELINES})
    paths.heldout_table.write_text(json.dumps(held))
    assert study.run_study(tmp_path, seeds=1, settings=("smoke",), cases=4, test_cases=2, bundle=tmp_path) == 0
    rec = json.loads((tmp_path / "study.json").read_text())["runs"][0]
    for m in BASELINES:
        assert rec["scores"]["cv"][m]["tumour"]["n"] == 0
        assert rec["scores"]["heldout"][m]["tumour"]["n"] == 2 and rec["scores"]["heldout"][m]["tumour"]["aurc"]
    assert rec["scores"]["heldout"]["msp"]["tumour"]["mae"] is None  # NaN -> null in study.json
    assert rec["scores"]["heldout"]["ensemble_agreement"]["tumour"]["mae"] is not None
    md = (tmp_path / "study.md").read_text()
    sections = md.split("## ")
    cv = next(s for s in sections if s.startswith("cross-validation (out-of-fold): smoke"))
    heldout = next(s for s in sections if s.startswith("held-out test cases: smoke"))
    for m in BASELINES:
        cv_lines = [ln for ln in cv.splitlines() if ln.startswith(f"| {m} |")]
        assert len(cv_lines) == 2 and all(set(ln.split("|")[2:-1]) == {" – "} for ln in cv_lines)
        held_aurc = [ln for ln in heldout.splitlines() if ln.startswith(f"| {m} |")][1]
        assert any(cell.strip() != "–" for cell in held_aurc.split("|")[2:-1])
