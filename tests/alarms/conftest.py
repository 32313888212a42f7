"""A tiny phantom with FAKE predictions and synthesized volumes in the prediction-index layout, so the alarm
tests need no trained segmenter or GAN."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from synthcp3d.data.io import write_nifti
from synthcp3d.data.msd import read_volume
from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

PIXDIM = (4.0, 4.0, 5.0)  # the phantom's own spacing: 128 x 128 x 80 mm over 32 x 32 x 16 voxels
ROI = (24, 24, 16)


def _perturb(label: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A fake prediction with a case-dependent error: erode / dilate / drop or shift the tumour."""
    pred = label.copy()
    pan = label >= 1
    tum = label == 2
    mode = k % 4
    if mode == 0:
        pan = ndimage.binary_erosion(pan, iterations=1)
    elif mode == 1:
        pan = ndimage.binary_dilation(pan, iterations=1)
    elif mode == 2:
        tum = np.zeros_like(tum)
    else:
        tum = np.roll(tum, 1 + k % 2, axis=0)
    pred = np.where(pan, 1, 0)
    pred[tum] = 2
    flip = rng.random(label.shape) < 0.002
    return np.where(flip, 1 - (pred > 0), pred).astype(np.uint8)


def _probs(pred: np.ndarray) -> np.ndarray:
    onehot = np.eye(3, dtype=np.float32)[pred]
    return (0.8 * onehot + 0.2 / 3).astype(np.float32)


def write_fake_run(root: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Fake ``predictions/index.json`` and ``synth/<case>/synth.nii.gz`` for every phantom case."""
    rng = np.random.default_rng(seed)
    meta = json.loads((root / "dataset.json").read_text())
    index = {}
    cases = [(r["image"], r["label"]) for r in meta["training"]] + [(t, None) for t in meta["test"]]
    for k, (img_rel, lab_rel) in enumerate(cases):
        img_path = (root / img_rel).resolve()
        cid = img_path.name.split(".")[0]
        image, affine = read_volume(img_path)
        if lab_rel is not None:
            label = np.asarray(read_volume(root / lab_rel)[0])
            pred = _perturb(label, k, rng)
        else:
            label, pred = None, _perturb(np.asarray(read_volume(root / meta["training"][0]["label"])[0]), k, rng)
        d = out / "predictions" / cid
        write_nifti(d / "pred.nii.gz", pred, affine)
        write_nifti(d / "probs.nii.gz", _probs(pred), affine)
        synth = np.asarray(image, np.float32) + rng.normal(0, 20, image.shape).astype(np.float32)
        write_nifti(out / "synth" / cid / "synth.nii.gz", synth, affine)
        rec = {
            "split": "cv" if label is not None else "test",
            "fold": (k % 2) if label is not None else None,
            "image": str(img_path),
            "pred": str(d / "pred.nii.gz"),
            "probs": str(d / "probs.nii.gz"),
        }
        if lab_rel is not None:
            rec["label"] = str((root / lab_rel).resolve())
        index[cid] = rec
    idx = out / "predictions" / "index.json"
    idx.write_text(json.dumps(index, indent=1))
    return idx, out / "synth"


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    """8 labelled (2 folds) + 2 test phantom cases of 32 x 32 x 16 with fake predictions and synth volumes."""
    base = tmp_path_factory.mktemp("alarms")
    root = make_pancreas_dataset(
        base / "data",
        num_cases=8,
        num_test=2,
        size=(32, 32, 16),
        seed=5,
        field_of_view_mm=(128, 128, 80),
        roi_center="pancreas",
        progress=False,
    )
    idx, synth = write_fake_run(root, base / "run")
    return {"root": root, "index": idx, "synth": synth, "base": base}


@pytest.fixture(scope="session")
def samples(fake_run):
    from synthcp3d.alarms.samples import build_samples, load_index

    cases = load_index(fake_run["index"], fake_run["synth"])
    return build_samples(cases, roi_size=ROI, pixdim=PIXDIM)
