"""A tiny synthetic alarm table: 24x24x8 NIfTIs (CT, label, prediction, synth, error map) and known Dice."""

import copy

import nibabel as nib
import numpy as np
import pytest

RAS = np.diag([1.5, 1.5, 3.0, 1.0])
LPS = np.diag([-1.5, -1.5, 3.0, 1.0])
METHODS = ("direct_prediction", "vae_alarm", "synthcp", "ensemble")


def write_case(folder, name, *, tumour_slice=3, affine=RAS, with_tumour=True, seed=0):
    """Write one case; returns the path dict. Tumour at axial slice ``tumour_slice`` (biggest there)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 20, (24, 24, 8)).astype(np.float32) - 50
    label = np.zeros((24, 24, 8), np.uint8)
    label[6:18, 8:16, 1:7] = 1
    if with_tumour:
        label[9:14, 10:14, tumour_slice] = 2
        label[10:13, 11:13, max(tumour_slice - 1, 0)] = 2
    img[label == 1] = 100
    img[label == 2] = 30
    pred = label.copy()
    if with_tumour:
        pred[9:11, 10:12, tumour_slice] = 1  # under-segmented tumour
    synth = img + rng.normal(0, 5, img.shape).astype(np.float32)
    err = np.clip(np.abs(img - synth) / 50, 0, 1).astype(np.float32)
    paths = {}
    for key, arr in (("image", img), ("label", label), ("pred", pred), ("synth", synth), ("error_map", err)):
        p = folder / f"{name}_{key}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), str(p))
        paths[key] = str(p)
    return paths


def make_rows(folder, n=8, seed=0):
    """Rows with all four methods; case 5 has no tumour (true tumour null), case 7 is 'new' (no truth)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        no_tumour, new = i == 5, i == n - 1
        paths = write_case(folder, f"c{i}", tumour_slice=1 + i % 6, affine=LPS if i % 2 else RAS,
                           with_tumour=not no_tumour, seed=i)
        t_tum, t_pan = float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.6, 0.95))
        predicted = {m: {"tumour": float(np.clip(t_tum + rng.normal(0, 0.2), 0, 1)),
                         "pancreas": float(np.clip(t_pan + rng.normal(0, 0.1), 0, 1))} for m in METHODS}
        p = predicted["ensemble"]["tumour"]
        rows.append({
            "case_id": f"case_{i:03d}", "split": "new" if new else ("test" if i >= 4 else "cv"),
            **paths, "label": None if new else paths["label"],
            "true": {"pancreas": None if new else t_pan, "tumour": None if (new or no_tumour) else t_tum},
            "predicted": predicted,
            "interval": {"tumour": [max(p - 0.2, 0.0), min(p + 0.2, 1.0)],
                         "pancreas": [max(predicted["ensemble"]["pancreas"] - 0.1, 0.0), 1.0]},
            "coverage": 0.9, "review": bool(p < 0.5),
        })
    return rows


@pytest.fixture(scope="session")
def _rows(tmp_path_factory):
    return make_rows(tmp_path_factory.mktemp("cases"))


@pytest.fixture
def rows(_rows):
    """A fresh deep copy of the shared synthetic rows (tests may edit it)."""
    return copy.deepcopy(_rows)
