import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from synthcp3d.data.io import DataError, write_nifti
from synthcp3d.data.msd import msd_datalist


@pytest.fixture
def root(pancreas_root, tmp_path):
    dst = tmp_path / "Task07"
    shutil.copytree(pancreas_root, dst)
    return dst


def test_reads_training_and_test(root):
    items = msd_datalist(root, "training", check="full")
    assert [i["case_id"] for i in items] == [f"pancreas_00{k}" for k in range(1, 5)]
    assert all(i["image"].startswith(str(root)) and "label" in i for i in items)
    test = msd_datalist(root, "test")
    assert [i["case_id"] for i in test] == ["pancreas_005"] and "label" not in test[0]


def _label(root, k=2):
    return root / "labelsTr" / f"pancreas_00{k}.nii.gz"


def test_missing_file(root):
    _label(root).unlink()
    with pytest.raises(DataError, match=r"pancreas_002\.nii\.gz: file not found"):
        msd_datalist(root)


def test_corrupt_nifti(root):
    _label(root).write_bytes(b"this is not a nifti file" * 10)
    with pytest.raises(DataError, match="unreadable or corrupt"):
        msd_datalist(root)


def test_shape_mismatch(root):
    lab = nib.load(_label(root))
    write_nifti(_label(root), np.zeros((48, 48, 30), np.uint8), lab.affine)
    with pytest.raises(DataError, match=r"shape mismatch: image \(48, 48, 32\) vs label \(48, 48, 30\)"):
        msd_datalist(root)


def test_affine_mismatch(root):
    lab = nib.load(_label(root))
    affine = lab.affine.copy()
    affine[2, 2] *= 1.5
    write_nifti(_label(root), np.asarray(lab.dataobj), affine)
    with pytest.raises(DataError, match="affine mismatch in spacing"):
        msd_datalist(root)


def test_label_outside_declared_set(root):
    lab = nib.load(_label(root))
    data = np.asarray(lab.dataobj).copy()
    data[0, 0, 0] = 5
    write_nifti(_label(root), data, lab.affine)
    msd_datalist(root, check="header")  # headers alone cannot see it
    with pytest.raises(DataError, match=r"label values \[5\] outside the declared set \[0, 1, 2\]"):
        msd_datalist(root, check="full")


def test_nan_intensities(root):
    path = root / "imagesTr" / "pancreas_003.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[1, 2, 3] = np.nan
    write_nifti(path, data, img.affine)
    with pytest.raises(DataError, match="pancreas_003.nii.gz: 1 NaN/Inf"):
        msd_datalist(root, check="full")


def test_empty_and_missing(root, tmp_path):
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = []
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="empty dataset"):
        msd_datalist(root)
    with pytest.raises(DataError, match="dataset folder not found"):
        msd_datalist(tmp_path / "nowhere")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        msd_datalist(root)


def test_all_background_label_warns_naming_the_case(root):
    lab = nib.load(_label(root))
    write_nifti(_label(root), np.zeros(lab.shape, np.uint8), lab.affine)
    with pytest.warns(UserWarning, match=r"pancreas_002\.nii\.gz: case 'pancreas_002' has an all-background label"):
        msd_datalist(root, check="full")


def test_ct_checks_refuse_what_no_alarm_can_judge(root):
    from synthcp3d.data.msd import check_ct_volume, read_ct_image

    path = root / "imagesTr" / "pancreas_001.nii.gz"
    a, affine = read_ct_image(path, hu_window=(-87, 199))  # a phantom CT passes
    assert a.ndim == 3
    with pytest.raises(DataError, match="expected a 3D volume"):
        check_ct_volume(a[..., 0], affine, path)
    check_ct_volume(a[..., None], affine, path)  # a trailing singleton axis is dropped
    with pytest.raises(DataError, match="too small"):
        check_ct_volume(a[:3], affine, path)
    with pytest.raises(DataError, match="singular"):
        check_ct_volume(a, np.zeros((4, 4)), path)
    with pytest.raises(DataError, match="no soft tissue"):
        check_ct_volume(np.where(np.arange(a.size).reshape(a.shape) % 2, -1000.0, 1000.0), affine, path,
                        hu_window=(-87, 199))  # fmt: skip
