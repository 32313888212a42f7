"""Comparator / VAE-alarm samples of the 3D pancreas pipeline: one organ-centred crop per case.

Each case of a prediction index (:data:`~synthcp3d.engines.segmentation.PREDICTION_LAYOUT`) is loaded with
MONAI (RAS orientation, resampling to ``pixdim``, HU window to [0, 1]); a fixed ``roi_size`` crop is centred
on the centre of mass of the predicted ∪ true pancreas (predicted only without ground truth; the volume
centre if both are empty), so the 3D networks see the organ at a useful resolution. Targets are the true
per-class Dice of the case on the FULL input-grid volume (:func:`case_dice`) and the voxel error map inside
the crop.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.data import MetaTensor

from synthcp3d.data.io import DataError, read_json, write_nifti
from synthcp3d.data.labels import one_hot
from synthcp3d.data.msd import read_volume
from synthcp3d.data.transforms import ct_inference_transforms, load_resampled
from synthcp3d.metrics.segmentation import dice_iou

__all__ = ["CLASS_NAMES", "build_samples", "case_dice", "load_index", "mask_channels", "paste_to_input_grid"]

CLASS_NAMES = ("pancreas", "tumour")
"""Dice targets, in order: pancreas = label >= 1 (pancreas incl. tumour, as MSD evaluates), tumour = label 2."""


def mask_channels(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Label map ``(..., *S)`` with 0/1/2 -> float mask ``(..., 2, *S)``: channels ``[label >= 1, label == 2]``.

    A leading singleton channel (``(1, *S)``) is replaced by the two region channels.
    """
    t = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
    if t.ndim >= 4 and t.shape[-4] == 1:
        t = t.squeeze(-4)
    return torch.stack([t >= 1, t == 2], dim=-4).float()


def case_dice(pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> np.ndarray:
    """True per-class Dice of one case, ``[pancreas, tumour]`` (float64, shape (2,)).

    Regions as in :data:`CLASS_NAMES`; NaN where a region is absent from both prediction and label (the
    :func:`~synthcp3d.metrics.dice_iou` convention). ``pred`` and ``label``: integer maps of one shape.
    """
    p, t = mask_channels(torch.as_tensor(np.asarray(pred))), mask_channels(torch.as_tensor(np.asarray(label)))
    dice, _ = dice_iou(p.to(torch.uint8), t.to(torch.uint8), num_classes=2)  # the two regions as two "cases"
    return dice[:, 1].numpy()


def _resolve(path: str | Path, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _header(path: Path, case_id: str, key: str) -> tuple[tuple[int, ...], np.ndarray]:
    import nibabel as nib

    if not path.is_file():
        raise DataError(path, f"case {case_id!r}: {key} file not found")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types
        raise DataError(path, f"case {case_id!r}: unreadable {key} NIfTI ({type(e).__name__}: {e})") from None
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)


def _check_case(case_id: str, paths: Mapping[str, Path]) -> None:
    """DataError unless every file exists and shares the image's grid (shape and affine)."""
    ref_shape, ref_affine = _header(paths["image"], case_id, "image")
    for key, path in paths.items():
        if key == "image":
            continue
        shape, affine = _header(path, case_id, key)
        tol = 1e-3 * max(1.0, float(np.abs(ref_affine).max()))
        if shape[:3] != ref_shape[:3] or not np.allclose(affine, ref_affine, atol=tol):
            raise DataError(path, f"case {case_id!r}: {key} geometry {shape[:3]} / affine "
                                  f"{np.round(affine[:3], 3).tolist()} differs from the image's {ref_shape[:3]} / "
                                  f"{np.round(ref_affine[:3], 3).tolist()}")  # fmt: skip
        if key == "probs" and len(shape) != 4:
            raise DataError(path, f"case {case_id!r}: probs must be (X, Y, Z, C), got shape {shape}")


def load_index(
    index: str | Path | Mapping[str, Mapping],
    synth_dir: str | Path | None = None,
    splits: Sequence[str] = ("cv", "test"),
    check: bool = True,
) -> dict[str, dict]:
    """Read a prediction index and attach each case's synthesized volume, checking files and geometry.

    Args:
        index: ``predictions/index.json`` path (relative paths inside resolve against its folder) or the dict.
        synth_dir: folder with ``<case_id>/synth.nii.gz``; ``None`` leaves ``"synth"`` out (Direct only).
        splits: keep cases of these splits.
        check: verify files exist and image / pred / probs / synth / label share shape and affine.

    Returns:
        ``{case_id: {"split", "fold", "image", "pred", "probs"?, "synth"?, "label"?}}`` (absolute path strings).

    Raises:
        DataError: naming the case and the missing or mismatching file.
    """
    root = Path(".")
    if not isinstance(index, Mapping):
        root = Path(index).parent
        index = read_json(index)
    out = {}
    for cid in sorted(index):
        rec = index[cid]
        if rec.get("split") not in splits:
            continue
        paths = {}
        for key in ("image", "pred", "probs", "label"):
            if rec.get(key):
                paths[key] = _resolve(rec[key], root)
            elif key in ("image", "pred"):  # no probs: a label map from another tool (one-hot ŷ only)
                raise DataError(None, f"case {cid!r}: index entry has no {key!r} path")
        if synth_dir is not None:
            paths["synth"] = Path(synth_dir) / cid / "synth.nii.gz"
        if check:
            _check_case(cid, paths)
        out[cid] = {"split": rec["split"], "fold": rec.get("fold"), **{k: str(v) for k, v in paths.items()}}
    return out


def _resample_chain(pixdim: Sequence[float], mode: str) -> mt.Compose:
    return mt.Compose([*load_resampled(["image"], pixdim, [mode]), mt.EnsureTyped(keys="image", track_meta=True)])


def _crop_start(mask: torch.Tensor, roi: Sequence[int]) -> list[int]:
    """Start of a ``roi`` box centred on the centre of mass of ``mask`` (*S) (the volume centre if empty),
    shifted to lie inside the volume. (The centre of mass keeps more of an elongated organ inside the box
    than the bounding-box centre.)"""
    shape = mask.shape
    nz = torch.nonzero(mask).double()
    centre = (nz.mean(0) + 0.5).tolist() if len(nz) else [s / 2 for s in shape]
    return [int(min(max(round(c - r / 2), 0), max(s - r, 0))) for c, r, s in zip(centre, roi, shape, strict=True)]


def _crop(t: torch.Tensor, start: Sequence[int], roi: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """``t`` (C, *S) -> (C, *roi): the box at ``start``, zero-padded at the end where it leaves the volume."""
    sl = tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))
    c = torch.as_tensor(t)[(slice(None), *sl)]
    pad = []
    for have, r in zip(reversed(c.shape[1:]), reversed(roi), strict=True):
        pad += [0, r - have]
    return F.pad(c, pad, value=value) if any(pad) else c.clone()


def build_samples(
    cases: Mapping[str, Mapping],
    *,
    roi_size: Sequence[int],
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    num_classes: int = 3,
    pred_input: str = "probs",
    read_synth: bool = True,
) -> list[dict]:
    """Load every case of :func:`load_index` into an in-memory, organ-centred crop.

    Args:
        cases: ``{case_id: {"split", "fold", "image", "pred", "probs", "synth"?, "label"?}}``.
        roi_size: crop ``(X, Y, Z)`` on the resampled grid.
        pixdim, hu_window: as the segmenter (MONAI :func:`~synthcp3d.data.transforms.ct_inference_transforms`).
        num_classes: channels of the probability maps.
        pred_input: what the comparator sees as ŷ under ``"probs"``: the segmenter's ``"probs"`` (softmax) or
            ``"onehot"`` of its label map (the paper's ŷ; also what perturbed label maps give, see
            :mod:`~synthcp3d.alarms.augment`).
        read_synth: load the ``"synth"`` volume; False leaves ``"synth"`` None without reading the file (for
            x̂ made on the crop by :func:`~synthcp3d.alarms.augment.synthesize_crops`; ``"paths"`` keeps it).

    Returns:
        One dict per case (R = ``roi_size``): ``"case_id"``, ``"split"``, ``"fold"``, ``"paths"`` (the input
        record), ``"image"`` (1, *R) in [0, 1], ``"synth"`` (1, *R) or None, ``"probs"`` (C, *R) (ŷ input),
        ``"pred_mask"`` (2, *R) and ``"label_mask"`` (2, *R) or None (uint8 :func:`mask_channels`), ``"error"``
        (1, *R) uint8 {0, 1} = pred != label or None, ``"ignore"`` (1, *R) bool (padding beyond the volume),
        ``"true"`` (2,) float64 full-volume Dice ``[pancreas, tumour]`` (NaN: no label / absent class),
        ``"target"`` (C,) float32 score targets ``[NaN, pancreas, tumour]`` (background never scored), and
        ``"grid"`` (what :func:`paste_to_input_grid` needs to put a crop back on the input grid).
    """
    if pred_input not in ("probs", "onehot"):
        raise ValueError(f"pred_input must be 'probs' or 'onehot', got {pred_input!r}")
    roi = tuple(int(r) for r in roi_size)
    img_tf = ct_inference_transforms(pixdim, hu_window, with_label=False)
    lab_tf, prob_tf = _resample_chain(pixdim, "nearest"), _resample_chain(pixdim, "bilinear")
    samples = []
    for cid, rec in cases.items():
        image = img_tf({"image": rec["image"]})["image"]
        pred = lab_tf({"image": rec["pred"]})["image"][0].round().long()
        if pred_input == "probs":  # one-hot ŷ needs no probability map: skip reading and resampling it
            if not rec.get("probs"):
                raise DataError(rec["pred"], f"case {cid!r}: pred_input 'probs' needs a probability map; a label "
                                             "map alone gives pred_input 'onehot'")  # fmt: skip
            probs = prob_tf({"image": rec["probs"]})["image"].as_tensor().float()
            if probs.shape[0] != num_classes:
                raise DataError(rec["probs"], f"case {cid!r}: {probs.shape[0]} probability channels, "
                                              f"expected {num_classes}")  # fmt: skip
        label = lab_tf({"image": rec["label"]})["image"][0].round().long() if rec.get("label") else None
        union = pred >= 1 if label is None else (pred >= 1) | (label >= 1)
        start = _crop_start(union.as_tensor(), roi)
        ones = torch.ones((1, *image.shape[1:]), dtype=torch.bool)
        s = {
            "case_id": cid, "split": rec.get("split", "new"), "fold": rec.get("fold"), "paths": dict(rec),
            "image": _crop(image.as_tensor().float(), start, roi),
            "synth": None,
            "probs": _crop(probs, start, roi) if pred_input == "probs" else
            one_hot(_crop(pred.as_tensor()[None], start, roi)[0], num_classes),
            "pred_mask": mask_channels(_crop(pred.as_tensor()[None], start, roi)).to(torch.uint8),
            "label_mask": None, "error": None,
            "ignore": ~_crop(ones, start, roi, value=False),
            "true": np.full(2, np.nan), "target": torch.full((num_classes,), float("nan")),
            "grid": {"meta": copy.deepcopy(dict(image.meta)), "ops": copy.deepcopy(image.applied_operations),
                     "shape": tuple(image.shape[1:]), "start": start, "roi": roi, "transform": img_tf},
        }  # fmt: skip
        if read_synth and rec.get("synth"):
            s["synth"] = _crop(img_tf({"image": rec["synth"]})["image"].as_tensor().float(), start, roi)
        if label is not None:
            s["label_mask"] = mask_channels(_crop(label.as_tensor()[None], start, roi)).to(torch.uint8)
            s["error"] = _crop((pred != label).as_tensor()[None].to(torch.uint8), start, roi)
            s["true"] = case_dice(read_volume(rec["pred"])[0], read_volume(rec["label"])[0])
            s["target"][1:3] = torch.as_tensor(s["true"], dtype=torch.float32)
        samples.append(s)
    return samples


def paste_to_input_grid(crop: torch.Tensor, sample: Mapping, path: str | Path) -> str:
    """Put a crop ``(1, *R)`` back into a zero volume of the resampled grid, invert MONAI's resampling and
    orientation (linear interpolation) onto the case's input grid and write it as float32 NIfTI.

    Returns:
        ``str(path)``.
    """
    g = sample["grid"]
    vol = torch.zeros((1, *g["shape"]), dtype=torch.float32)
    box = tuple(slice(s, min(s + r, n)) for s, r, n in zip(g["start"], g["roi"], g["shape"], strict=True))
    vol[(slice(None), *box)] = crop[(slice(None), *(slice(0, b.stop - b.start) for b in box))].float()
    t = MetaTensor(vol, meta=copy.deepcopy(g["meta"]), applied_operations=copy.deepcopy(g["ops"]))
    inv = g["transform"].inverse({"image": t})["image"]  # the very Compose that resampled the image
    write_nifti(path, inv[0].numpy().astype(np.float32), np.asarray(inv.affine, dtype=np.float64))
    return str(path)
