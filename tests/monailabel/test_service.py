"""The alarm service behind the MONAI Label app (core install: no MONAI Label needed)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthcp3d.alarms.inference import MODEL_FILES
from synthcp3d.data.io import DataError
from synthcp3d.monailabel.service import (
    ERROR_LEVELS,
    AlarmService,
    alarm_summary,
    bundle_parser,
    error_levels,
    export_volume,
)

METHODS = ("direct_prediction", "vae_alarm", "synthcp", "ensemble", "ensemble_weighted")


@pytest.fixture(scope="module")
def service(label_models):
    s = AlarmService(label_models, device="cpu")
    yield s
    s.close()


def test_error_levels_bins_by_hand():
    p = np.array([0.0, 0.2499, 0.25, 0.4, 0.5, 0.74, 0.75, 1.0], np.float32).reshape(2, 2, 2)
    want = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.uint8).reshape(2, 2, 2)
    got = error_levels(p)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert set(ERROR_LEVELS.values()) == {1, 2, 3}


def test_summary_message_and_fields():
    row = {"case_id": "c1", "coverage": 0.9, "review": True, "pred": "/srv/x.nii.gz",
           "predicted": {m: {"pancreas": 0.8, "tumour": 0.31} for m in METHODS},
           "interval": {"pancreas": [0.6, 1.0], "tumour": [0.01, 0.61]}}  # fmt: skip
    s = alarm_summary(row, 0.5)
    assert s["message"] == "predicted tumour Dice 0.31 (90% interval 0.01-0.61), pancreas 0.80; REVIEW: below 0.50"
    assert "pred" not in s and s["review_threshold"] == 0.5 and s["predicted"] == row["predicted"]
    ok = alarm_summary({**row, "review": False, "interval": {"pancreas": [None, None], "tumour": [None, None]}}, 0.5)
    assert ok["message"].endswith("pancreas 0.80; no review flag") and "interval" not in ok["message"]


def test_missing_models_name_the_commands(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        AlarmService(tmp_path)
    msg = str(e.value)
    assert "segmenter.pt" in msg and "alarm_models.json" in msg and "make demo" in msg
    assert "crossval, train_spade, synthesize, train_comparator, train_vae, ensemble, export_models" in msg


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="known: .*tiny"):
        bundle_parser(profile="nope")


def test_untrained_models_folder(label_models):
    files = {p.name for p in Path(label_models).iterdir()}
    assert files == {*MODEL_FILES.values(), "alarm_models.json", "manifest.json"}
    assert json.loads((label_models / "manifest.json").read_text())["profile"] == "tiny"


def test_alarm_on_one_image(service, phantom_images, label_models, tmp_path):
    image = next(iter(phantom_images.values()))
    first = service.alarm(image)
    again = service.alarm(image)
    assert not first["cached"] and again["cached"] and again["row"] == first["row"]
    s = first["summary"]
    settings = json.loads((label_models / "alarm_models.json").read_text())
    for c, k in (("pancreas", 0), ("tumour", 1)):
        assert s["predicted"]["vae_alarm"][c] == pytest.approx(settings["regressor"]["intercept"][k])  # coef 0
        ens = (s["predicted"]["synthcp"][c] + s["predicted"]["vae_alarm"][c]) / 2
        q = settings["conformal_q"][c]
        assert s["predicted"]["ensemble"][c] == pytest.approx(ens)
        assert s["interval"][c] == pytest.approx([max(ens - q, 0.0), min(ens + q, 1.0)])
    assert s["review"] == (s["predicted"]["ensemble"]["tumour"] < settings["review_threshold"])
    ref = nib.load(image)
    service.alarm(image, "segmentation", tmp_path / "segmentation.nii.gz")
    for kind, dtype in (("segmentation", np.uint8), ("error_map", np.float32), ("error_levels", np.uint8)):
        if kind != "segmentation":
            export_volume(first, kind, tmp_path / f"{kind}.nii.gz")
        vol = nib.load(tmp_path / f"{kind}.nii.gz")
        assert vol.shape == ref.shape and vol.get_data_dtype() == dtype
        np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    heat = np.asarray(nib.load(tmp_path / "error_map.nii.gz").dataobj)
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    levels = np.asarray(nib.load(tmp_path / "error_levels.nii.gz").dataobj)
    assert np.array_equal(levels, (heat >= 0.25).astype(np.uint8) + (heat >= 0.5) + (heat >= 0.75))
    assert set(np.unique(np.asarray(nib.load(tmp_path / "segmentation.nii.gz").dataobj))) <= {0, 1, 2}


def test_alarm_judges_a_client_label(service, phantom_images, tmp_path):
    image = list(phantom_images.values())[2]
    ref = nib.load(image)
    label = np.zeros(ref.shape, np.uint8)
    label[8:16, 8:16, 4:12] = 1
    label[10:13, 10:13, 6:9] = 2
    path = tmp_path / "client_label.nii.gz"
    nib.save(nib.Nifti1Image(label, ref.affine), path)
    result = service.alarm(image, "segmentation", tmp_path / "returned.nii.gz", label=path)
    assert not result["cached"] and result["summary"]["segmentation"] == "client label"
    assert result["row"]["source_pred"] == str(path) and result["summary"]["status"] == "ok"
    # the alarm is about the client's label: the returned segmentation is that label, not the segmenter's
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "returned.nii.gz").dataobj), label)
    assert service.alarm(image, label=path)["cached"] and not service.alarm(image)["cached"]
    nib.save(nib.Nifti1Image(np.full(ref.shape, 4, np.uint8), ref.affine), tmp_path / "foreign.nii.gz")
    with pytest.raises(DataError, match=r"foreign.nii.gz: label values \[4\] are outside the trained classes"):
        service.alarm(image, label=tmp_path / "foreign.nii.gz")


def test_summary_of_a_failed_member_asks_for_review():
    row = {"case_id": "c1", "coverage": 0.9, "review": True, "status": "ok", "failed_methods": ["synthcp", "ensemble"],
           "predicted": {m: {"pancreas": 0.8, "tumour": None if m in ("synthcp", "ensemble") else 0.7}
                         for m in METHODS},
           "interval": {"pancreas": [0.6, 1.0], "tumour": [None, None]}}  # fmt: skip
    s = alarm_summary(row, 0.5)
    assert s["message"] == "no predicted tumour Dice (failed: synthcp, ensemble); REVIEW"
    assert s["failed_methods"] == ["synthcp", "ensemble"] and s["review"] is True


def test_bad_images_and_outputs(service, tmp_path):
    with pytest.raises(DataError, match="file not found"):
        service.alarm(tmp_path / "nope.nii.gz")
    (tmp_path / "bad.nii.gz").write_text("not a NIfTI file")
    with pytest.raises(DataError, match="unreadable or corrupt"):
        service.alarm(tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match="output must be"):
        export_volume({"row": {}}, "probs", tmp_path / "x.nii.gz")


def test_cache_keeps_the_last_results(label_models, phantom_images, monkeypatch):
    a, b = list(phantom_images.values())[:2]
    service = AlarmService(label_models, device="cpu", cache_size=1)
    runs = []

    def fake_run(path, label):  # the cache logic alone: no networks run
        runs.append(path.name)
        d = service._work / f"run{len(runs)}"
        d.mkdir()
        return {"row": {}, "summary": {}, "seconds": 0.0, "dir": d}

    monkeypatch.setattr(service, "_run", fake_run)
    try:
        first = service.alarm(a)
        assert service.alarm(a)["cached"] and not service.alarm(b)["cached"]
        assert not first["dir"].exists()  # a's result was evicted by b's
        assert not service.alarm(a)["cached"] and runs == [a.name, b.name, a.name]
    finally:
        service.close()
    assert not first["dir"].parent.exists()


# ------------------------------------------------------------------ baselines: ensemble agreement, MSP, entropy
BASELINES = ("ensemble_agreement", "msp", "entropy")


def test_summary_passes_the_baselines_through():
    from synthcp3d.alarms.pipeline import METHODS as ROW_METHODS

    assert ROW_METHODS == (*METHODS, *BASELINES)
    row = {"case_id": "c1", "coverage": 0.9, "review": False, "status": "ok", "failed_methods": [],
           "predicted": {**{m: {"pancreas": 0.8, "tumour": 0.61} for m in METHODS},
                         "ensemble_agreement": {"pancreas": 0.9, "tumour": 0.55},
                         "msp": {"pancreas": 0.97, "tumour": None}, "entropy": {"pancreas": None, "tumour": None}},
           "interval": {"pancreas": [0.6, 1.0], "tumour": [0.31, 0.91]}}  # fmt: skip
    s = alarm_summary(row, 0.5)
    assert s["predicted"] == row["predicted"] and list(s["predicted"]) == list(ROW_METHODS)
    assert s["predicted"] is not row["predicted"] and s["predicted"]["msp"] is not row["predicted"]["msp"]  # copies
    # the message and the review flag rest on the SynthCP + VAE ensemble alone
    assert s["message"] == "predicted tumour Dice 0.61 (90% interval 0.31-0.91), pancreas 0.80; no review flag"


def test_service_reports_the_baselines_of_fold_models(label_models, phantom_images, tmp_path):
    import shutil

    import torch

    models = tmp_path / "models"
    shutil.copytree(label_models, models)
    torch.manual_seed(123)  # a fold segmenter of other (untrained) weights
    torch.save(bundle_parser(profile="tiny").get_parsed_content("network_def").state_dict(),
               models / "segmenter_fold_1.pt")  # fmt: skip
    service = AlarmService(models, device="cpu")
    try:
        res = service.alarm(next(iter(phantom_images.values())))
    finally:
        service.close()
    s = res["summary"]
    assert list(s["predicted"]) == [*METHODS, *BASELINES] and s["failed_methods"] == []
    agreement = s["predicted"]["ensemble_agreement"]
    assert all(isinstance(agreement[c], float) and 0.0 <= agreement[c] <= 1.0 for c in ("pancreas", "tumour"))
    for m in ("msp", "entropy"):  # null where the untrained segmenter predicts an empty region
        assert all(v is None or 0.0 <= v <= 1.0 for v in s["predicted"][m].values())
