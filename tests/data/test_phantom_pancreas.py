import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.data import load_decathlon_datalist

from synthcp3d.cli import main
from synthcp3d.data.phantom_pancreas import make_pancreas_dataset, render_case, sample_case


def test_cli_writes_msd_layout(tmp_path):
    out = tmp_path / "Task07"
    assert main(["phantom", "pancreas", "--out", str(out), "--cases", "4", "--size", "48", "48", "32"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "pancreas", "2": "cancer"}
    assert meta["numTraining"] == 4 and len(meta["test"]) == meta["numTest"] == 1
    assert meta["training"][0] == {"image": "./imagesTr/pancreas_001.nii.gz", "label": "./labelsTr/pancreas_001.nii.gz"}
    params = json.loads((out / "phantom_meta.json").read_text())["cases"]
    items = load_decathlon_datalist(out / "dataset.json", True, "training")
    assert len(items) == 4
    for item in items:
        img, lab = nib.load(item["image"]), nib.load(item["label"])
        assert img.shape == lab.shape == (48, 48, 32)
        assert img.get_data_dtype() == np.int16
        label = np.asarray(lab.dataobj)
        assert set(np.unique(label)) <= {0, 1, 2}
        assert (label == 2).any() and (label == 1).any()
        spacing = params[item["image"].split("/")[-1][:-7]]["params"]["spacing"]
        np.testing.assert_allclose(img.header.get_zooms(), spacing, rtol=1e-5)
        np.testing.assert_allclose(lab.header.get_zooms(), spacing, rtol=1e-5)
        assert spacing[2] != pytest.approx(spacing[0])  # anisotropic
        image = np.asarray(img.dataobj)
        assert -1024 <= image.min() and image.max() <= 3071


def test_nibabel_simpleitk_round_trip(pancreas_root):
    path = pancreas_root / "imagesTr" / "pancreas_002.nii.gz"
    nimg = nib.load(path)
    simg = sitk.ReadImage(str(path))
    # SimpleITK arrays are (Z, Y, X); nibabel (X, Y, Z); spacing and LPS origin agree with the RAS affine.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(simg).transpose(2, 1, 0), np.asarray(nimg.dataobj))
    np.testing.assert_allclose(simg.GetSpacing(), nimg.header.get_zooms(), rtol=1e-6)
    lps_origin = nimg.affine[:3, 3] * np.array([-1, -1, 1])
    np.testing.assert_allclose(simg.GetOrigin(), lps_origin, atol=1e-4)
    assert nib.aff2axcodes(nimg.affine) == ("L", "P", "S")


def test_deterministic_for_seed(tmp_path):
    a = make_pancreas_dataset(tmp_path / "a", num_cases=2, size=(32, 32, 16), seed=7, progress=False)
    b = make_pancreas_dataset(tmp_path / "b", num_cases=2, size=(32, 32, 16), seed=7, progress=False)
    c = make_pancreas_dataset(tmp_path / "c", num_cases=2, size=(32, 32, 16), seed=8, progress=False)
    for sub in ("imagesTr/pancreas_001.nii.gz", "labelsTr/pancreas_002.nii.gz", "imagesTs/pancreas_003.nii.gz"):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
        assert (a / sub).read_bytes() != (c / sub).read_bytes()


def test_realistic_spacing_and_variety():
    cases = [sample_case(np.random.default_rng([0, i]), (512, 512, 90)) for i in range(40)]
    for case in cases:
        assert 0.7 <= case.spacing[0] == case.spacing[1] <= 0.9
        assert 1.5 <= case.spacing[2] <= 3.0
    contrasts = [lesion.contrast_hu for c in cases for lesion in c.lesions]
    radii = [max(lesion.radii_mm) for c in cases for lesion in c.lesions]
    assert min(contrasts) < 20 and max(contrasts) > 45  # nearly invisible to obvious
    assert min(radii) < 6 and max(radii) > 15  # a few mm to several cm
    assert any(len(c.lesions) == 2 for c in cases)


def test_tumour_is_hypodense_and_roi_mode():
    case = sample_case(np.random.default_rng(5), (64, 64, 32), field_of_view_mm=(128, 128, 80), roi_center="pancreas")
    assert case.spacing == pytest.approx((2.0, 2.0, 2.5))
    image, label, affine = render_case(case)
    assert (label == 2).any()
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), case.spacing)
    # Lesions are darker than the surrounding pancreas on average (before noise they are by construction).
    assert image[label == 2].mean() < image[label == 1].mean()


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        sample_case(np.random.default_rng(0), (4, 64, 64))
    with pytest.raises(ValueError, match="roi_center"):
        sample_case(np.random.default_rng(0), (32, 32, 32), roi_center="liver")


def test_tumour_is_a_solid_mass_inside_the_hu_window():
    # A large tumour reaches past the pancreas into fat; it must stay a visible mass there (parenchyma HU minus its
    # contrast), not fat darkened below the soft-tissue window's floor of -87 HU.
    rng = np.random.default_rng(3)
    case = sample_case(rng, (64, 64, 32), field_of_view_mm=(128, 128, 80), roi_center="pancreas",
                       tumour_radius_mm=(18.0, 20.0))  # fmt: skip
    for lesion in case.lesions:
        lesion.necrosis = 0.0
    image, label, _ = render_case(case)
    tumour = image[label == 2].astype(float)
    worst = case.organ_hu["pancreas"] - max(lesion.contrast_hu for lesion in case.lesions)
    assert (tumour < -87).mean() < 0.05
    assert np.median(tumour) == pytest.approx(worst, abs=3 * case.noise_hu + 25)
