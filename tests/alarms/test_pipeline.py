import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthcp3d.alarms.ensemble import conformal_quantile
from synthcp3d.alarms.inference import MODEL_FILES, alarm_new_images, export_models, load_alarm_networks
from synthcp3d.alarms.pipeline import METHODS, ensemble_alarm_table, train_comparator_alarms, train_vae_alarm
from synthcp3d.data.io import DataError
from synthcp3d.networks import DirectPredictor, ShapeVAE, SiameseComparator

from .conftest import PIXDIM, ROI

TINY = {"widen_factor": 0.125, "fuse_channels": 8, "hidden": 16}
KEYS = {"case_id", "split", "image", "pred", "synth", "error_map", "label", "true", "predicted", "interval",
        "coverage", "review", "status", "error", "failed_methods"}  # fmt: skip


def _nets():
    torch.manual_seed(0)
    return {
        "comparator": SiameseComparator(3, 1, 3, **TINY),
        "direct": DirectPredictor(3, 1, 3, **TINY),
        "vae": ShapeVAE(3, ROI, in_channels=2, latent_size=8, channels=(4, 8), include_background=True),
    }


@pytest.fixture(scope="module")
def table(fake_run):
    out = fake_run["base"] / "alarms"
    nets = _nets()
    # several steps, so that the bf16 vs fp32 comparison below runs on trained alarm networks
    crop = {"roi_size": ROI, "pixdim": PIXDIM, "iterations": 4, "batch_size": 2, "progress": False}
    train_comparator_alarms(fake_run["index"], fake_run["synth"], out, comparator=nets["comparator"],
                            direct=nets["direct"], **crop)  # fmt: skip
    train_vae_alarm(fake_run["index"], out, vae=nets["vae"], **crop)
    rows = ensemble_alarm_table(out, alpha=0.2)
    return out, rows


def _in01(x):
    return x is None or (isinstance(x, float) and 0.0 <= x <= 1.0)


def test_rows_have_the_contract(table, samples):
    out, rows = table
    weights = json.loads((out / "alarm_models.json").read_text())["ensemble_weight"]
    assert json.loads((out / "alarm_table.json").read_text()) == rows
    assert [r["split"] for r in rows] == ["cv"] * 8 + ["test"] * 2
    true = {s["case_id"]: s["true"] for s in samples}
    for r in rows:
        assert set(r) == KEYS and r["coverage"] == pytest.approx(0.8) and isinstance(r["review"], bool)
        assert set(r["predicted"]) == set(METHODS)
        for c in ("pancreas", "tumour"):
            for m in METHODS:  # agreement: new images only; MSP / entropy from the saved softmax
                if m == "ensemble_agreement":
                    assert r["predicted"][m][c] is None
                    continue
                if m in ("msp", "entropy") and r["predicted"][m][c] is None:  # nothing predicted in the region
                    continue
                assert isinstance(r["predicted"][m][c], float) and _in01(r["predicted"][m][c])
            s_, v_ = r["predicted"]["synthcp"][c], r["predicted"]["vae_alarm"][c]
            assert r["predicted"]["ensemble"][c] == pytest.approx((s_ + v_) / 2)  # the paper's mean
            wtd = r["predicted"]["ensemble_weighted"][c]
            assert min(s_, v_) - 1e-9 <= wtd <= max(s_, v_) + 1e-9  # a convex weight
            if r["split"] == "test":  # the weight fit on all CV cases, kept for new images
                assert wtd == pytest.approx(weights[c] * s_ + (1 - weights[c]) * v_)
            lo, hi = r["interval"][c]
            assert 0.0 <= lo <= r["predicted"]["ensemble"][c] <= hi <= 1.0
            want = true[r["case_id"]][("pancreas", "tumour").index(c)]
            assert r["true"][c] is None if np.isnan(want) else r["true"][c] == pytest.approx(want)
        assert (r["label"] is None) == (r["split"] == "test")
        assert r["error_map"] is not None and r["synth"] is not None
        assert r["review"] == (r["predicted"]["ensemble"]["tumour"] < 0.5)
    for k in (0, 1):  # out-of-fold: one model set per segmenter fold, plus the final one
        assert (out / f"fold_{k}" / "synthcp" / "models" / "model.pt").is_file()
    assert (out / "final" / "vae" / "models" / "model.pt").is_file()


def test_test_intervals_use_all_cv_residuals(table):
    out, rows = table
    cv = [r for r in rows if r["split"] == "cv"]
    settings = json.loads((out / "alarm_models.json").read_text())
    for c in ("pancreas", "tumour"):
        res = [abs(r["predicted"]["ensemble"][c] - r["true"][c]) for r in cv if r["true"][c] is not None]
        q = conformal_quantile(np.array(res), 0.2)
        assert settings["conformal_q"][c] == pytest.approx(q)
        for r in rows[-2:]:
            p = r["predicted"]["ensemble"][c]
            assert r["interval"][c] == pytest.approx([max(p - q, 0.0), min(p + q, 1.0)])


def test_cv_intervals_leave_the_case_fold_out(table):
    _, rows = table
    cv = [r for r in rows if r["split"] == "cv"]
    fold = [k % 2 for k in range(len(cv))]  # the fake index's folds, in case order
    for i, r in enumerate(cv):
        for c in ("pancreas", "tumour"):
            res = [abs(o["predicted"]["ensemble"][c] - o["true"][c])
                   for o, f in zip(cv, fold, strict=True) if f != fold[i] and o["true"][c] is not None]  # fmt: skip
            q = conformal_quantile(np.array(res), 0.2)
            p = r["predicted"]["ensemble"][c]
            assert r["interval"][c] == pytest.approx([max(p - q, 0.0), min(p + q, 1.0)])


def _models_dir(out, tmp_path):
    """A models folder as export_models writes it, from the alarm run ``out`` and random segmenter / generator."""
    from synthcp3d.networks import Segmenter, SPADEGenerator

    torch.manual_seed(0)
    seg = Segmenter(3, 1, 3, backbone="unet", unet_channels=(4, 8), feature_channels=4)
    gen = SPADEGenerator(3, label_nc=3, ngf=4, num_up=2, hidden_channels=8)
    run = tmp_path / "run"
    for rel, net in (("segmenter/final/models/model.pt", seg), ("spade/models/generator.pt", gen)):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), run / rel)
    for name in ("synthcp", "direct", "vae"):
        (run / "alarms/final" / name / "models").mkdir(parents=True)
        src = out / "final" / name / "models/model.pt"
        (run / "alarms/final" / name / "models/model.pt").write_bytes(src.read_bytes())
    (run / "alarms/alarm_models.json").write_text((out / "alarm_models.json").read_text())
    manifest = export_models(run, tmp_path / "models", profile="test")
    assert set(manifest["files"]) == {*MODEL_FILES.values(), "alarm_models.json"} and manifest["profile"] == "test"
    return tmp_path / "models", seg, gen


def test_alarm_new_images(table, fake_run, tmp_path):
    from synthcp3d.networks import Segmenter, SPADEGenerator

    out, _ = table
    models, seg, gen = _models_dir(out, tmp_path)
    nets = load_alarm_networks(models, {"segmenter": Segmenter(3, 1, 3, backbone="unet", unet_channels=(4, 8),
                                                               feature_channels=4),
                                        "generator": SPADEGenerator(3, label_nc=3, ngf=4, num_up=2, hidden_channels=8),
                                        **_nets()})  # fmt: skip
    for a, b in zip(nets["segmenter"].state_dict().values(), seg.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the weights were loaded, not left at a fresh initialisation
    images = sorted((fake_run["root"] / "imagesTs").glob("*.nii.gz"))
    rows = alarm_new_images(images, tmp_path / "new", models_dir=models, **nets, segment_roi_size=(32, 32, 16),
                            synth_roi_size=(32, 32, 16), progress=False)  # fmt: skip
    assert [r["split"] for r in rows] == ["new", "new"]
    assert json.loads((tmp_path / "new" / "alarm_table.json").read_text()) == rows
    import nibabel as nib

    for r, img in zip(rows, images, strict=True):
        assert set(r) == KEYS and r["label"] is None and r["true"] == {"pancreas": None, "tumour": None}
        assert all(_in01(v) for m in METHODS for v in r["predicted"][m].values())
        assert r["synth"].endswith("synth.nii.gz")
        for key in ("pred", "error_map"):
            vol = nib.load(r[key])
            assert vol.shape == nib.load(img).shape
            np.testing.assert_allclose(vol.affine, nib.load(img).affine, atol=1e-4)
    with pytest.raises(DataError, match="nope.nii.gz: file not found"):
        alarm_new_images([tmp_path / "nope.nii.gz"], tmp_path / "bad", models_dir=models, **nets, progress=False)


def test_missing_models_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="ensemble config"):
        load_alarm_networks(tmp_path, _nets())
    with pytest.raises(DataError, match="crossval config"):
        export_models(tmp_path / "run", tmp_path / "models")


def test_ensemble_needs_both_stages_on_the_same_cases(table, tmp_path):
    out, rows = table
    with pytest.raises(DataError, match="run the train_vae config first"):
        (tmp_path / "comparator_predictions.json").write_text((out / "comparator_predictions.json").read_text())
        ensemble_alarm_table(tmp_path)
    vae = json.loads((out / "vae_predictions.json").read_text())
    vae["cases"].pop(sorted(vae["cases"])[0])
    (tmp_path / "vae_predictions.json").write_text(json.dumps(vae))
    with pytest.raises(DataError, match="different cases"):
        ensemble_alarm_table(tmp_path)
    assert ensemble_alarm_table(out, alpha=0.2) == rows  # the combination step alone reproduces the table


@pytest.mark.native_bf16
def test_alarm_path_bf16_within_001_of_fp32(table, fake_run, tmp_path):
    """The whole new-image path (segment, synthesize, compare, VAE, ensemble) under bf16 autocast +
    channels-last predicts every Dice within 0.01 of the fp32 path with the same weights."""
    from synthcp3d.networks import Segmenter, SPADEGenerator

    out, _ = table
    models, _, _ = _models_dir(out, tmp_path)
    nets = load_alarm_networks(models, {"segmenter": Segmenter(3, 1, 3, backbone="unet", unet_channels=(4, 8),
                                                               feature_channels=4),
                                        "generator": SPADEGenerator(3, label_nc=3, ngf=4, num_up=2, hidden_channels=8),
                                        **_nets()})  # fmt: skip
    images = sorted((fake_run["root"] / "imagesTs").glob("*.nii.gz"))
    kw = {"models_dir": models, "segment_roi_size": (32, 32, 16), "synth_roi_size": (32, 32, 16), "progress": False}
    rows = {amp: alarm_new_images(images, tmp_path / str(amp), amp_dtype=amp, **nets, **kw)
            for amp in ("float32", "bfloat16")}  # fmt: skip
    for a, b in zip(rows["float32"], rows["bfloat16"], strict=True):
        for m in ("direct_prediction", "vae_alarm", "synthcp", "ensemble"):
            for c in ("pancreas", "tumour"):
                assert abs(a["predicted"][m][c] - b["predicted"][m][c]) < 0.01, (m, c)


def test_perturbed_copies_synthesized_once_and_kept_in_their_fold(fake_run, tmp_path, monkeypatch):
    from pathlib import Path

    import synthcp3d.alarms.pipeline as pipeline
    from synthcp3d.networks import SPADEGenerator

    calls, seen = [], {}
    real_augment = pipeline.augment_samples

    def augment(samples, *a, **kw):
        calls.append(sorted(s["case_id"] for s in samples))
        return real_augment(samples, *a, **kw)

    def record(net, train, out_dir, **kw):
        seen.setdefault(Path(out_dir).parent.name, []).append(train)

    monkeypatch.setattr(pipeline, "augment_samples", augment)
    monkeypatch.setattr(pipeline, "train_comparator", record)
    torch.manual_seed(0)
    gen = SPADEGenerator(3, 3, 1, ngf=2, num_up=2, hidden_channels=4)
    nets = _nets()
    doc = train_comparator_alarms(fake_run["index"], fake_run["synth"], tmp_path, comparator=nets["comparator"],
                                  direct=nets["direct"], generator=gen, augment_per_case=2, roi_size=ROI,
                                  pixdim=PIXDIM, progress=False)  # fmt: skip
    cv_ids = sorted(c for c, r in doc["cases"].items() if r["split"] == "cv")
    assert calls == [cv_ids]  # one synthesis pass over all CV cases, not one per fold
    groups = {}
    for cid in cv_ids:
        groups.setdefault(doc["cases"][cid]["group"], []).append(cid)
    for tag, trains in seen.items():
        for train in trains:  # the synthcp and direct models of one tag see the same samples
            real = sorted(s["case_id"] for s in train if not s.get("augmented"))
            aug = [s["case_id"] for s in train if s.get("augmented")]
            held = groups[int(tag.split("_")[1])] if tag.startswith("fold_") else []
            assert real == sorted(set(cv_ids) - set(held))
            assert sorted(aug) == sorted(real * 2)  # two copies of every training case, none of a held-out one
    assert set(seen) == {"final", *(f"fold_{k}" for k in groups)}


# ----------------------------------------------------------------------------- inputs the alarm must refuse
@pytest.fixture(scope="module")
def alarm_models(table, fake_run, tmp_path_factory):
    """(models folder, loaded networks) of the fake alarm run, for the input-check tests."""
    from synthcp3d.networks import Segmenter, SPADEGenerator

    out, _ = table
    models, _, _ = _models_dir(out, tmp_path_factory.mktemp("inputs"))
    nets = load_alarm_networks(models, {"segmenter": Segmenter(3, 1, 3, backbone="unet", unet_channels=(4, 8),
                                                               feature_channels=4),
                                        "generator": SPADEGenerator(3, label_nc=3, ngf=4, num_up=2, hidden_channels=8),
                                        **_nets()})  # fmt: skip
    return models, nets


def _alarm(images, out, alarm_models, **kw):
    models, nets = alarm_models
    return alarm_new_images(images, out, models_dir=models, **{**nets, **kw.pop("nets", {})},
                            segment_roi_size=(32, 32, 16), synth_roi_size=(32, 32, 16), progress=False, **kw)


def _test_image(fake_run):
    return sorted((fake_run["root"] / "imagesTs").glob("*.nii.gz"))[0]


def _write_variant(src, dst, fn):
    img = nib.load(src)
    data = fn(np.asarray(img.dataobj, np.float32).copy())
    nib.save(nib.Nifti1Image(data, img.affine), dst)
    return dst


@pytest.mark.parametrize("name, fn, match", [
    ("nan_block.nii.gz", lambda a: (a.__setitem__((slice(2, 12),) * 3, np.nan), a)[1], "NaN/Inf"),
    ("all_nan.nii.gz", lambda a: np.full_like(a, np.nan), "NaN/Inf"),
    ("normalised.nii.gz", lambda a: (a - a.min()) / (a.max() - a.min()), "not CT in Hounsfield"),
    ("constant.nii.gz", lambda a: np.zeros_like(a), "constant or normalised"),
    ("raw_offset.nii.gz", lambda a: a + 3000.0, "median intensity"),
])  # fmt: skip
def test_alarm_refuses_garbage_images_naming_the_file(alarm_models, fake_run, tmp_path, name, fn, match):
    bad = _write_variant(_test_image(fake_run), tmp_path / name, fn)
    with pytest.raises(DataError, match=match) as err:
        _alarm([bad], tmp_path / "out", alarm_models)
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out" / "alarm_table.json").exists()  # no number written for an image with no data


def test_alarm_names_a_truncated_file_and_refuses_an_empty_list(alarm_models, fake_run, tmp_path):
    src = _test_image(fake_run).read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(DataError, match="unreadable or corrupt") as err:
        _alarm([bad], tmp_path / "out", alarm_models)
    assert str(bad) in str(err.value)
    with pytest.raises(DataError, match="image list is empty"):
        _alarm([], tmp_path / "out", alarm_models)


def test_skip_policy_writes_an_error_row_and_judges_the_rest(alarm_models, fake_run, tmp_path):
    good = _test_image(fake_run)
    bad = _write_variant(good, tmp_path / "bad.nii.gz", lambda a: np.full_like(a, np.nan))
    rows = _alarm([bad, good], tmp_path / "out", alarm_models, on_error="skip")
    assert json.loads((tmp_path / "out" / "alarm_table.json").read_text()) == rows
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert "NaN/Inf" in rows[0]["error"] and str(bad) in rows[0]["error"] and rows[0]["review"] is True
    assert all(v is None for m in METHODS for v in rows[0]["predicted"][m].values())
    assert rows[1]["failed_methods"] == [] and all(_in01(v) for v in rows[1]["predicted"]["ensemble"].values())
    with pytest.raises(ValueError, match="on_error"):
        _alarm([good], tmp_path / "out2", alarm_models, on_error="ignore")


def test_rows_flag_a_failed_ensemble_member():
    from synthcp3d.alarms.ensemble import mean_ensemble
    from synthcp3d.alarms.pipeline import rows_for

    preds = {"synthcp": np.array([[0.8, np.nan]]), "vae_alarm": np.array([[0.6, 0.7]]),
             "direct_prediction": np.full((1, 2), np.nan)}  # fmt: skip
    preds["ensemble"] = mean_ensemble(preds["synthcp"], preds["vae_alarm"])
    cases = {"c": {"split": "new", "true": None, "paths": {"image": "i", "pred": "p"}}}
    row = rows_for(cases, preds, np.full((1, 2), 0.1), None, 0.1, 0.5, absent=("direct_prediction",))[0]
    assert row["failed_methods"] == ["synthcp", "ensemble"] and row["review"] is True
    assert row["predicted"]["ensemble"] == {"pancreas": pytest.approx(0.7), "tumour": None}
    assert row["predicted"]["vae_alarm"]["tumour"] == pytest.approx(0.7)  # not passed off as the ensemble's


# ------------------------------------------------------------------------- bring your own segmentation
def test_alarm_judges_a_user_label_map_without_the_segmenter(alarm_models, fake_run, tmp_path):
    from synthcp3d.data.msd import read_volume

    root = fake_run["root"]
    meta = json.loads((root / "dataset.json").read_text())
    image, label = (root / meta["training"][0]["image"]).resolve(), (root / meta["training"][0]["label"]).resolve()
    lab, affine = read_volume(label)
    lab = np.asarray(lab).astype(np.uint8)
    foreign = np.where(lab == 2, 7, lab).astype(np.uint8)  # another tool's value for the tumour
    preds = tmp_path / "preds"
    preds.mkdir()
    cid = image.name.split(".")[0]
    nib.save(nib.Nifti1Image(foreign, affine), preds / f"{cid}.nii.gz")
    with pytest.raises(DataError, match=r"label values \[7\] are outside the trained classes") as err:
        _alarm([image], tmp_path / "out", alarm_models, predictions=preds, nets={"segmenter": None})
    assert f"{cid}.nii.gz" in str(err.value) and "--label-map 7:0" in str(err.value)
    rows = _alarm([image], tmp_path / "out", alarm_models, predictions=preds, label_map="7:2",
                  nets={"segmenter": None})  # fmt: skip
    assert rows[0]["status"] == "ok" and rows[0]["source_pred"] == str(preds / f"{cid}.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(rows[0]["pred"]).dataobj), lab)  # judged: the user's map
    assert not (tmp_path / "out" / "predictions" / cid / "probs.nii.gz").exists()  # the segmenter never ran


def test_user_label_maps_with_wrong_geometry_are_refused(alarm_models, fake_run, tmp_path):
    image = _test_image(fake_run)
    img = nib.load(image)
    shape, affine = img.shape, img.affine
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((shape[0] - 2, *shape[1:]), np.uint8), affine), small)
    with pytest.raises(DataError, match="shape mismatch") as err:
        _alarm([image], tmp_path / "out", alarm_models, predictions=[small])
    assert str(small) in str(err.value)
    moved = tmp_path / "moved.nii.gz"
    shifted = affine.copy()
    shifted[:3, 3] += 7.0
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), shifted), moved)
    with pytest.raises(DataError, match="affine mismatch in origin"):
        _alarm([image], tmp_path / "out", alarm_models, predictions=[moved])
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine @ np.diag([-1.0, 1, 1, 1])), flipped)
    with pytest.raises(DataError, match="affine mismatch"):
        _alarm([image], tmp_path / "out", alarm_models, predictions=[flipped])
    with pytest.raises(DataError, match="1 images but 2 predictions"):
        _alarm([image], tmp_path / "out", alarm_models, predictions=[small, moved])


def test_pair_predictions_by_case_id(tmp_path):
    from synthcp3d.alarms.inference import pair_predictions

    (tmp_path / "p").mkdir()
    for n in ("a.nii.gz", "b.nii"):
        (tmp_path / "p" / n).write_bytes(b"")
    items = pair_predictions(["x/a_0000.nii.gz", {"image": "y/b.nii.gz"}], tmp_path / "p")
    assert [(i["case_id"], Path(i["pred"]).name) for i in items] == [("a_0000", "a.nii.gz"), ("b", "b.nii")]
    with pytest.raises(DataError, match="no prediction for case 'c'"):
        pair_predictions(["c.nii.gz"], tmp_path / "p")
    with pytest.raises(DataError, match="duplicate case ids"):
        pair_predictions(["x/a.nii.gz", "y/a.nii.gz"], None)


def test_alarms_train_on_another_tools_predictions(fake_run, tmp_path):
    """An nnU-Net-style folder of out-of-fold label maps + its splits_final.json -> the CV index the alarm stages
    train on; the alarm table then follows that tool's folds."""
    import shutil

    from synthcp3d.alarms.inference import import_predictions

    root, index = fake_run["root"], json.loads(fake_run["index"].read_text())
    meta = json.loads((root / "dataset.json").read_text())
    items = [{"image": str((root / r["image"]).resolve()), "label": str((root / r["label"]).resolve())}
             for r in meta["training"]]  # fmt: skip
    preds = tmp_path / "nnunet_preds"
    preds.mkdir()
    for cid, rec in index.items():
        if rec["split"] == "cv":
            shutil.copy(rec["pred"], preds / f"{cid}.nii.gz")
    ids = sorted(c for c, r in index.items() if r["split"] == "cv")
    splits = [{"train": [c for c in ids if c not in ids[k::2]], "val": ids[k::2]} for k in range(2)]
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    seg = tmp_path / "other_tool"
    got = import_predictions(items, preds, seg, folds=tmp_path / "splits_final.json")
    assert {c: (r["split"], r["fold"]) for c, r in got.items()} == {c: ("cv", ids.index(c) % 2) for c in ids}
    assert json.loads((seg / "predictions/index.json").read_text()) == got
    for cid in ids:
        np.testing.assert_array_equal(np.asarray(nib.load(got[cid]["pred"]).dataobj),
                                      np.asarray(nib.load(index[cid]["pred"]).dataobj))
    with pytest.raises(DataError, match=r"missing \['pancreas_00"):
        import_predictions(items, preds, tmp_path / "x", folds=[ids[:3], ids[4:]])
    nets = _nets()
    crop = {"roi_size": ROI, "pixdim": PIXDIM, "iterations": 2, "batch_size": 2, "progress": False}
    alarms = tmp_path / "alarms"
    train_comparator_alarms(seg / "predictions/index.json", fake_run["synth"], alarms, comparator=nets["comparator"],
                            direct=None, pred_input="onehot", **crop)  # fmt: skip
    train_vae_alarm(seg / "predictions/index.json", alarms, vae=nets["vae"], **crop)
    rows = ensemble_alarm_table(alarms, alpha=0.2)
    assert sorted(r["case_id"] for r in rows) == ids and all(r["status"] == "ok" for r in rows)
    assert all(r["failed_methods"] == [] for r in rows)  # Direct Prediction absent: not a failure


# --------------------------------------------------- baselines: ensemble agreement of the fold models, MSP, entropy
BASELINES = ("ensemble_agreement", "msp", "entropy")


def test_methods_end_with_the_baselines():
    assert METHODS == ("direct_prediction", "vae_alarm", "synthcp", "ensemble", "ensemble_weighted", *BASELINES)


def test_cv_and_test_rows_carry_the_baselines_as_absent(table, fake_run):
    """No agreement on the out-of-fold CV cases (the fold models trained on them): null, and not a failure. MSP /
    entropy of the saved out-of-fold softmax are fair: computed, checked against the fake run's files."""
    from synthcp3d.alarms.agreement import nifti_uncertainty

    _, rows = table
    index = json.loads(fake_run["index"].read_text())
    for r in rows:
        assert r["predicted"]["ensemble_agreement"] == {"pancreas": None, "tumour": None}
        assert r["failed_methods"] == []
        want = nifti_uncertainty(index[r["case_id"]]["pred"], index[r["case_id"]]["probs"])
        for m in ("msp", "entropy"):
            for k, c in enumerate(("pancreas", "tumour")):
                got = r["predicted"][m][c]
                assert (got is None) if np.isnan(want[m][k]) else got == pytest.approx(want[m][k])


def test_rows_for_nulls_missing_methods_and_tolerates_undefined_confidences():
    from synthcp3d.alarms.pipeline import rows_for

    preds = {"synthcp": np.array([[0.8, 0.4]]), "vae_alarm": np.array([[0.6, 0.2]]),
             "direct_prediction": np.array([[0.7, 0.3]]), "ensemble": np.array([[0.7, 0.3]]),
             "msp": np.array([[0.9, np.nan]]), "entropy": np.array([[0.8, np.nan]])}  # fmt: skip
    cases = {"c": {"split": "new", "true": None, "paths": {"image": "i", "pred": "p"}}}
    row = rows_for(cases, preds, np.full((1, 2), 0.1), None, 0.1, 0.5, undefined_ok=("msp", "entropy"))[0]
    assert row["failed_methods"] == []  # an empty predicted tumour: MSP undefined, not failed
    assert row["predicted"]["msp"] == {"pancreas": pytest.approx(0.9), "tumour": None}
    assert row["predicted"]["ensemble_agreement"] == {"pancreas": None, "tumour": None}  # not in preds: absent
    row = rows_for(cases, preds, np.full((1, 2), 0.1), None, 0.1, 0.5)[0]
    assert row["failed_methods"] == ["msp", "entropy"]  # without undefined_ok a NaN is a failure


def _fold_run(tmp_path, final: Path, folds: dict[int, Path | None]) -> Path:
    """A run folder with the final segmenter and the given fold models (None: a fold without model.pt)."""
    run = tmp_path / "run"
    for k, src in folds.items():
        path = run / "segmenter" / f"fold_{k}" / "models" / "model.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if src is not None:
            path.write_bytes(Path(src).read_bytes())
    (run / "segmenter" / "folds.json").write_text(json.dumps({"final_from_fold": 0}))
    return run


def _random_segmenter_file(path: Path, seed: int) -> Path:
    from synthcp3d.networks import Segmenter

    torch.manual_seed(seed)
    torch.save(Segmenter(3, 1, 3, backbone="unet", unet_channels=(4, 8), feature_channels=4).state_dict(), path)
    return path


@pytest.fixture
def fold_models(table, tmp_path):
    """A models folder with fold 0 = the final segmenter (final_from_fold), folds 2 and 3 of other weights
    and fold 1 without a model (skipped)."""
    out, _ = table
    models, seg, _ = _models_dir(out, tmp_path)
    run = tmp_path / "run"
    final = run / "segmenter/final/models/model.pt"
    other = {k: _random_segmenter_file(tmp_path / f"seg{k}.pt", 10 + k) for k in (2, 3)}
    _fold_run(tmp_path, final, {0: final, 1: None, 2: other[2], 3: other[3]})
    (models / "segmenter_fold_7.pt").write_bytes(b"stale")  # of an earlier export: deleted
    manifest = export_models(run, models, profile="test")
    return models, manifest


def test_export_models_copies_the_fold_segmenters(fold_models):
    from synthcp3d.alarms.inference import fold_model_files

    models, manifest = fold_models
    names = ["segmenter_fold_0.pt", "segmenter_fold_2.pt", "segmenter_fold_3.pt"]
    assert manifest["fold_models"] == names and manifest["final_from_fold"] == 0
    assert {n: manifest["files"][n] for n in names} == {n: f"segmenter/fold_{n[-4]}/models/model.pt" for n in names}
    assert list(fold_model_files(models)) == [0, 2, 3]  # no fold 1 (no model.pt), the stale fold 7 deleted
    assert json.loads((models / "manifest.json").read_text()) == manifest
    assert (models / "segmenter_fold_0.pt").read_bytes() == (models / "segmenter.pt").read_bytes()


def _loaded_nets(models):
    from synthcp3d.networks import Segmenter, SPADEGenerator

    return load_alarm_networks(models, {"segmenter": Segmenter(3, 1, 3, backbone="unet", unet_channels=(4, 8),
                                                               feature_channels=4),
                                        "generator": SPADEGenerator(3, label_nc=3, ngf=4, num_up=2, hidden_channels=8),
                                        **_nets()})  # fmt: skip


def test_alarm_new_images_adds_the_baselines(fold_models, fake_run, tmp_path, caplog):
    import logging

    from synthcp3d.alarms.agreement import foreground_uncertainty, pairwise_dice_agreement

    models, _ = fold_models
    nets = _loaded_nets(models)
    images = sorted((fake_run["root"] / "imagesTs").glob("*.nii.gz"))
    out = tmp_path / "new"
    with caplog.at_level(logging.INFO, logger="synthcp3d.alarms.inference"):
        rows = alarm_new_images(images, out, models_dir=models, **nets, segment_roi_size=(32, 32, 16),
                                synth_roi_size=(32, 32, 16), progress=False)  # fmt: skip
    assert "ensemble_agreement: 2 fold segmenters (folds [2, 3])" in caplog.text  # the cost is logged
    assert "left out of the ensemble" in caplog.text  # fold 0 is the final model
    assert not (out / "predictions_folds" / "fold_0").exists()
    for r in rows:
        assert set(r) == KEYS and r["status"] == "ok" and r["failed_methods"] == []
        cid = r["case_id"]
        final = np.asarray(nib.load(r["pred"]).dataobj)
        folds = [np.asarray(nib.load(out / "predictions_folds" / f"fold_{k}" / cid / "pred.nii.gz").dataobj)
                 for k in (2, 3)]  # fmt: skip
        assert all(f.shape == final.shape for f in folds)
        want = pairwise_dice_agreement([final, *folds])
        assert [r["predicted"]["ensemble_agreement"][c] for c in ("pancreas", "tumour")] == pytest.approx(want)
        probs = np.moveaxis(np.asarray(nib.load(out / "predictions" / cid / "probs.nii.gz").dataobj), -1, 0)
        unc = foreground_uncertainty(probs, final)
        for m in ("msp", "entropy"):
            for k, c in enumerate(("pancreas", "tumour")):
                v = r["predicted"][m][c]
                assert (v is None) if np.isnan(unc[m][k]) else v == pytest.approx(unc[m][k])
                assert _in01(v)
    # the off switch: no fold model runs, agreement absent (not failed), MSP / entropy stay
    rows = alarm_new_images(images[:1], tmp_path / "off", models_dir=models, **nets, fold_ensemble=False,
                            segment_roi_size=(32, 32, 16), synth_roi_size=(32, 32, 16), progress=False)  # fmt: skip
    assert not (tmp_path / "off" / "predictions_folds").exists()
    assert rows[0]["predicted"]["ensemble_agreement"] == {"pancreas": None, "tumour": None}
    assert rows[0]["failed_methods"] == []


def test_a_user_label_map_has_no_baselines(fold_models, fake_run, tmp_path):
    models, _ = fold_models
    nets = _loaded_nets(models)
    image = _test_image(fake_run)
    lab = np.zeros(nib.load(image).shape, np.uint8)
    lab[8:16, 8:16, 4:10] = 1
    lab[10:13, 10:13, 5:8] = 2
    user = tmp_path / "user.nii.gz"
    nib.save(nib.Nifti1Image(lab, nib.load(image).affine), user)
    rows = alarm_new_images([image], tmp_path / "out", models_dir=models, **nets, predictions=[user],
                            segment_roi_size=(32, 32, 16), synth_roi_size=(32, 32, 16), progress=False)  # fmt: skip
    r = rows[0]
    assert r["status"] == "ok" and r["failed_methods"] == []  # absent, not failed
    assert all(r["predicted"][m] == {"pancreas": None, "tumour": None} for m in BASELINES)
    assert not (tmp_path / "out" / "predictions_folds").exists()  # the fold models never ran


def test_a_fold_model_of_another_architecture_is_named(fold_models, fake_run, tmp_path):
    from synthcp3d.networks import Segmenter

    models, _ = fold_models
    torch.save(Segmenter(3, 1, 3, backbone="unet", unet_channels=(8, 16), feature_channels=4).state_dict(),
               models / "segmenter_fold_2.pt")  # fmt: skip
    with pytest.raises(DataError, match="segmenter_fold_2.pt: does not fit the segmenter's architecture"):
        alarm_new_images([_test_image(fake_run)], tmp_path / "out", models_dir=models, **_loaded_nets(models),
                         segment_roi_size=(32, 32, 16), synth_roi_size=(32, 32, 16), progress=False)  # fmt: skip
