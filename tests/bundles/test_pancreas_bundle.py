import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from .conftest import FAST, PANCREAS_BUNDLE, SCHEMA, bundle_cmd, run

MONAI = (sys.executable, "-m", "monai.bundle")


@pytest.mark.skipif(not SCHEMA.is_file(), reason="MONAI's metadata schema is kept in ../shared/monai")
def test_verify_metadata():
    r = run([*MONAI, "verify_metadata", "--meta_file", str(PANCREAS_BUNDLE / "configs/metadata.json"),
             "--filepath", str(SCHEMA)])  # fmt: skip
    assert "metadata is verified with no error" in r.stdout + r.stderr


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_verify_segmenter_in_out(profile):
    configs = [str(PANCREAS_BUNDLE / "configs" / c) for c in ("common.json", f"profiles/{profile}.json")]
    r = run([*MONAI, "verify_net_in_out", "network_def", "--meta_file", str(PANCREAS_BUNDLE / "configs/metadata.json"),
             "--config_file", json.dumps(configs)])  # fmt: skip
    assert "verified with no error" in r.stdout + r.stderr


def test_verify_generator_in_out():
    """verify_net_in_out checks one ``network_data_format``: the generator's is ``network_data_format_spade``."""
    from monai.bundle import verify_net_in_out

    meta = json.loads((PANCREAS_BUNDLE / "configs/metadata.json").read_text())
    configs = [str(PANCREAS_BUNDLE / "configs" / c) for c in ("common.json", "profiles/tiny.json")]
    verify_net_in_out(net_id="spade_def", meta_file=str(PANCREAS_BUNDLE / "configs/metadata.json"),
                      config_file=configs, n=2, **{"_meta_#network_data_format": meta["network_data_format_spade"]})


def test_pipeline_configs_in_order(pancreas_roi, tmp_path):
    """Every config of the bundle in pipeline order, each by its documented ``monai.bundle run`` command."""
    base = ["common.json", "profiles/tiny.json"]
    common = dict(dataset_dir=str(pancreas_roi), output_dir=str(tmp_path), **FAST)
    run(bundle_cmd([*base, "crossval.json"], **common))
    index = json.loads((tmp_path / "segmenter/predictions/index.json").read_text())
    assert sorted(k for k, v in index.items() if v["split"] == "cv") == [f"pancreas_00{i}" for i in range(1, 7)]
    assert sorted(k for k, v in index.items() if v["split"] == "test") == ["pancreas_007", "pancreas_008"]
    for rec in index.values():
        img, pred = nib.load(rec["image"]), nib.load(rec["pred"])
        assert img.shape == pred.shape
        np.testing.assert_allclose(img.affine, pred.affine, atol=1e-4)
    folds = json.loads((tmp_path / "segmenter/folds.json").read_text())
    assert folds["num_folds"] == 2 and sum(len(f) for f in folds["folds"]) == 6

    with pytest.raises(AssertionError, match="run the train_spade config first"):
        run(bundle_cmd([*base, "synthesize.json"], **common))  # a clear error before SPADE exists
    run(bundle_cmd([*base, "train_spade.json"], **common))
    assert (tmp_path / "spade/models/generator.pt").is_file()
    run(bundle_cmd([*base, "synthesize.json"], **common))
    for cid, rec in index.items():
        synth = nib.load(tmp_path / "synth" / cid / "synth.nii.gz")
        img = nib.load(rec["image"])
        assert synth.shape == img.shape
        np.testing.assert_allclose(synth.affine, img.affine, atol=1e-4)
        values = np.asarray(synth.dataobj)
        assert np.isfinite(values).all() and -87.01 <= values.min() and values.max() <= 199.01

    with pytest.raises(AssertionError, match="run the train_comparator config first"):
        run(bundle_cmd([*base, "ensemble.json"], **common))
    run(bundle_cmd([*base, "train_comparator.json"], **common, **{"alarms#augment_per_case": 1}))
    run(bundle_cmd([*base, "train_vae.json"], **common))
    run(bundle_cmd([*base, "ensemble.json"], **common))
    rows = json.loads((tmp_path / "alarms/alarm_table.json").read_text())
    assert sorted(r["case_id"] for r in rows) == sorted(index)
    methods = {"direct_prediction", "vae_alarm", "synthcp", "ensemble", "ensemble_weighted"}
    baselines = {"ensemble_agreement", "msp", "entropy"}  # agreement: new images only; MSP / entropy: every row
    for row in rows:
        assert set(row["predicted"]) == methods | baselines
        assert row["predicted"]["ensemble_agreement"]["tumour"] is None
        assert all(row["predicted"][m]["pancreas"] is None or 0.0 <= row["predicted"][m]["pancreas"] <= 1.0
                   for m in ("msp", "entropy"))  # fmt: skip
        assert all(0.0 <= row["predicted"][m]["tumour"] <= 1.0 for m in methods)
        lo, hi = row["interval"]["tumour"]
        assert 0.0 <= lo <= hi <= 1.0
        assert (row["true"]["tumour"] is None) == (row["split"] == "test") or row["true"]["tumour"] is None
    run(bundle_cmd([*base, "evaluate.json"], **common))
    for name in ("report.html", "report.csv", "report.json"):
        assert (tmp_path / "report" / name).is_file()
    report = json.loads((tmp_path / "report/report.json").read_text())
    assert set(report["summary"]["methods"]) == methods | baselines

    # new images: gather the weights into a models folder, then the alarm config on the test images
    models = tmp_path / "models"
    with pytest.raises(AssertionError, match="export_models"):
        run(bundle_cmd([*base, "alarm.json"], **common, models_dir=str(models)))
    run(bundle_cmd([*base, "export_models.json"], **common, models_dir=str(models)))
    assert json.loads((models / "manifest.json").read_text())["profile"] == "tiny"
    run(bundle_cmd([*base, "alarm.json"], **common, models_dir=str(models)))
    new = json.loads((tmp_path / "alarm/alarm_table.json").read_text())
    assert sorted(r["case_id"] for r in new) == ["pancreas_007", "pancreas_008"]
    for row in new:
        assert row["split"] == "new" and all(0.0 <= row["predicted"][m]["tumour"] <= 1.0 for m in methods)
        img, seg = nib.load(row["image"]), nib.load(row["pred"])
        assert seg.shape == img.shape and np.allclose(seg.affine, img.affine, atol=1e-4)
        assert nib.load(row["error_map"]).shape == img.shape

    # bring your own segmentation: `synthcp3d alarm` on label maps another tool wrote (the ground truth of two
    # training cases, tumour stored as 5), paired by case id from a folder; the segmenter never runs
    byo = tmp_path / "byo_preds"
    byo.mkdir()
    cases = ["pancreas_001", "pancreas_002"]
    for cid in cases:
        lab = nib.load(pancreas_roi / "labelsTr" / f"{cid}.nii.gz")
        vals = np.asarray(lab.dataobj).astype(np.uint8)
        nib.save(nib.Nifti1Image(np.where(vals == 2, 5, vals).astype(np.uint8), lab.affine), byo / f"{cid}.nii.gz")
    images = [str(pancreas_roi / "imagesTr" / f"{cid}.nii.gz") for cid in cases]
    cli = [sys.executable, "-m", "synthcp3d", "alarm", "--images", *images, "--models", str(models),
           "--amp-dtype", "float32", *(a for k, v in FAST.items() for a in ("--override", f"{k}={json.dumps(v)}"))]
    r = run([*cli, "--preds", str(byo), "--label-map", "5:2", "--out", str(tmp_path / "byo")])
    byo_rows = json.loads((tmp_path / "byo" / "alarm_table.json").read_text())
    assert [(row["case_id"], row["status"]) for row in byo_rows] == [(c, "ok") for c in cases], r.stdout
    for row, cid in zip(byo_rows, cases, strict=True):
        assert row["source_pred"] == str(byo / f"{cid}.nii.gz") and all(
            0.0 <= row["predicted"][m]["tumour"] <= 1.0 for m in methods)
        np.testing.assert_array_equal(np.asarray(nib.load(row["pred"]).dataobj),
                                      np.asarray(nib.load(pancreas_roi / "labelsTr" / f"{cid}.nii.gz").dataobj))
    assert not (tmp_path / "byo" / "predictions" / cases[0] / "probs.nii.gz").exists()
    # without the label map, value 5 is refused naming the file; so is a label map on another grid
    bad_run = subprocess.run([*cli, "--preds", str(byo), "--out", str(tmp_path / "byo_bad")], capture_output=True,
                             text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert bad_run.returncode == 2
    assert bad_run.stderr.strip().splitlines()[-1].startswith(f"synthcp3d: error: {byo / (cases[0] + '.nii.gz')}: "
                                                             "label values [5] are outside the trained classes")
    lab = nib.load(byo / f"{cases[0]}.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, 1:], lab.affine), byo / f"{cases[0]}.nii.gz")
    bad_run = subprocess.run([*cli, "--preds", str(byo), "--label-map", "5:2", "--out", str(tmp_path / "byo_bad")],
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert bad_run.returncode == 2 and "shape mismatch" in bad_run.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "byo_bad" / "alarm_table.json").exists()

    # bad inputs: a missing prediction and a synthesized volume on another grid give errors naming the case
    bad = tmp_path / "bad"
    (bad / "predictions").mkdir(parents=True)
    broken = {k: dict(v) for k, v in index.items()}
    broken["pancreas_002"]["pred"] = str(bad / "predictions/missing.nii.gz")
    (bad / "predictions/index.json").write_text(json.dumps(broken))
    with pytest.raises(AssertionError, match="pancreas_002.*pred file not found"):
        run(bundle_cmd([*base, "train_vae.json"], **common, segmenter_dir=str(bad), alarm_dir=str(bad / "alarms")))
    synth = tmp_path / "synth/pancreas_003/synth.nii.gz"
    vol = nib.load(synth)
    nib.save(nib.Nifti1Image(np.asarray(vol.dataobj)[:, :, :-1], vol.affine), synth)
    with pytest.raises(AssertionError, match="pancreas_003.*synth geometry"):
        run(bundle_cmd([*base, "train_comparator.json"], **common, alarm_dir=str(bad / "alarms2")))


def test_ddp_two_cpu_processes(pancreas_roi, tmp_path):
    """torchrun with the multi_gpu_train.json overlay: two gloo processes train one segmenter."""
    runner = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
              "monai.bundle")  # fmt: skip
    cmd = bundle_cmd(["common.json", "profiles/tiny.json", "train_segmenter.json", "multi_gpu_train.json"],
                     runner=runner, dataset_dir=str(pancreas_roi), output_dir=str(tmp_path), **FAST)  # fmt: skip
    r = run(cmd)
    ckpt = tmp_path / "segmenter/single/models/checkpoint_final.pt"
    assert ckpt.is_file(), r.stdout[-2000:]
    import torch

    state = torch.load(ckpt, weights_only=True)
    # 3 training cases x 1 crop sharded over 2 ranks (padded to 2 each), batch 2: one iteration per rank
    assert state["trainer"]["iteration"] == 1
    assert not any(k.startswith("module.") for k in state["network"])


def test_bundle_run_on_bad_data_ends_with_the_file(pancreas_root, tmp_path):
    """``python -m monai.bundle run`` on a dataset with a missing label: the last line names the file (not
    MONAI's "Failed to evaluate ConfigExpression"), the exit code is non-zero."""
    import shutil

    data = tmp_path / "Task07"
    shutil.copytree(pancreas_root, data)
    (data / "labelsTr" / "pancreas_002.nii.gz").unlink()
    configs = [str(PANCREAS_BUNDLE / "configs" / c) for c in ("common.json", "profiles/tiny.json", "crossval.json")]
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs),
                           "--dataset_dir", str(data), "--output_dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"synthcp3d: error: {data / 'labelsTr' / 'pancreas_002.nii.gz'}: file not found", last
