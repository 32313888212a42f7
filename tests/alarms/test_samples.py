import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from synthcp3d.alarms.samples import _crop_start, build_samples, case_dice, load_index, paste_to_input_grid
from synthcp3d.data.io import DataError, write_nifti

from .conftest import PIXDIM, ROI


def _hand_dice(a: np.ndarray, b: np.ndarray) -> float:
    n = a.sum() + b.sum()
    return float("nan") if n == 0 else 2.0 * (a & b).sum() / n


def test_targets_equal_hand_dice_on_full_volume(samples):
    cv = [s for s in samples if s["split"] == "cv"]
    assert len(cv) == 8
    spread = []
    for s in cv:
        pred = np.asarray(nib.load(s["paths"]["pred"]).dataobj)
        label = np.asarray(nib.load(s["paths"]["label"]).dataobj)
        want = [_hand_dice(pred >= 1, label >= 1), _hand_dice(pred == 2, label == 2)]
        np.testing.assert_allclose(s["true"], want, atol=1e-12)
        np.testing.assert_allclose(s["target"][1:].numpy(), want, atol=1e-6)
        assert torch.isnan(s["target"][0])
        spread.append(want[1])
    assert np.nanstd(spread) > 0.2  # the fake predictions give a Dice spread
    assert all(np.isnan(s["true"]).all() and s["error"] is None for s in samples if s["split"] == "test")


def test_case_dice_absent_class_is_nan():
    z = np.zeros((4, 4, 4), np.uint8)
    p = z.copy()
    p[0, 0, 0] = 1
    assert np.isnan(case_dice(z, z)).all()
    np.testing.assert_array_equal(case_dice(p, p), [1.0, np.nan])
    np.testing.assert_array_equal(case_dice(p, z), [0.0, np.nan])


def test_crops_contain_the_pancreas_and_error_target(samples):
    for s in samples:
        assert s["image"].shape == (1, *ROI) and s["probs"].shape == (3, *ROI)
        assert s["synth"].shape == (1, *ROI) and s["pred_mask"].shape == (2, *ROI)
        ref = s["paths"].get("label") or s["paths"]["pred"]
        organ = np.asarray(nib.load(ref).dataobj) >= 1  # pixdim is the native spacing: same voxels, flipped
        best = max(
            organ[i : i + ROI[0], j : j + ROI[1]].sum()
            for i in range(organ.shape[0] - ROI[0] + 1)
            for j in range(organ.shape[1] - ROI[1] + 1)
        )
        mask = s["label_mask"] if s["label_mask"] is not None else s["pred_mask"]
        assert mask[0].sum() >= 0.9 * best > 0  # as good as the best-placed box, nearly
        if s["error"] is not None:
            want = (s["pred_mask"] != s["label_mask"]).any(0).to(torch.uint8)
            assert torch.equal(s["error"][0], want)
            assert s["error"].sum() > 0


def test_crop_start_centres_on_mask_or_volume():
    m = torch.zeros(40, 40, 20, dtype=torch.bool)
    assert _crop_start(m, (20, 20, 10)) == [10, 10, 5]
    m[30:36, 2:6, 0:4] = True
    assert _crop_start(m, (20, 20, 10)) == [20, 0, 0]  # centred on the centre of mass, clipped into the volume


def test_error_map_paste_back_on_input_grid(samples, tmp_path):
    s = next(x for x in samples if x["split"] == "cv")
    path = paste_to_input_grid(s["label_mask"][:1], s, tmp_path / "m.nii.gz")
    out, img = nib.load(path), nib.load(s["paths"]["image"])
    assert out.shape == img.shape and np.allclose(out.affine, img.affine)
    label = np.asarray(nib.load(s["paths"]["label"]).dataobj) >= 1
    back = out.get_fdata() > 0.5
    assert (back & label).sum() == back.sum() == int(s["label_mask"][0].sum())


def _edit_index(fake_run, tmp_path, edit):
    index = json.loads(fake_run["index"].read_text())
    edit(index)
    p = tmp_path / "index.json"
    p.write_text(json.dumps(index))
    return p


def test_missing_pred_file_names_the_case(fake_run, tmp_path):
    def drop(index):
        index["pancreas_003"]["pred"] = str(tmp_path / "gone" / "pred.nii.gz")

    with pytest.raises(DataError, match="pancreas_003.*pred file not found"):
        load_index(_edit_index(fake_run, tmp_path, drop), fake_run["synth"])


def test_synth_geometry_mismatch(fake_run, tmp_path):
    synth = tmp_path / "synth"
    shutil.copytree(fake_run["synth"], synth)
    bad = synth / "pancreas_002" / "synth.nii.gz"
    img = nib.load(bad)
    data, affine = np.asarray(img.dataobj), img.affine
    write_nifti(bad, data[:, :, :8], affine)
    with pytest.raises(DataError, match="pancreas_002.*synth geometry"):
        load_index(fake_run["index"], synth)
    write_nifti(bad, data, affine @ np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(DataError, match="pancreas_002.*synth geometry"):
        load_index(fake_run["index"], synth)


def test_wrong_probability_channels(fake_run, tmp_path):
    cases = load_index(fake_run["index"], fake_run["synth"])
    with pytest.raises(DataError, match="probability channels"):
        build_samples({"pancreas_001": cases["pancreas_001"]}, roi_size=ROI, pixdim=PIXDIM, num_classes=4)
