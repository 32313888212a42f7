"""Medical Segmentation Decathlon (Task07 Pancreas) datalists with geometry and content checks.

:func:`msd_datalist` reads ``dataset.json`` through MONAI's ``load_decathlon_datalist`` and checks
every case before training starts, raising one :class:`~synthcp3d.data.io.DataError` that names the
file and the problem: missing file, unreadable NIfTI, image/label size, spacing, origin or direction
mismatch (read from the headers with SimpleITK, without loading voxels), and with ``check="full"``
also NaN/Inf intensities and label values outside the declared ``labels``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from synthcp3d.data.io import DataError, check_finite, check_label_values, read_json

__all__ = ["CT_MEDIAN_RANGE_HU", "MIN_CT_SPREAD_HU", "case_id", "check_ct_volume", "check_pair", "msd_datalist",
           "msd_labels", "read_ct_image", "read_geometry", "read_volume"]

# What a CT in Hounsfield units looks like, loosely enough for any scanner, field of view or padding value: its
# median voxel is air, fat, soft tissue or bone, and its bulk spans more than noise. A normalised ([0, 1]) or
# constant volume fails the spread, a wrongly rescaled one (e.g. raw 12-bit values +1024) the median.
CT_MEDIAN_RANGE_HU: tuple[float, float] = (-1100.0, 1500.0)
MIN_CT_SPREAD_HU = 20.0
MIN_WINDOW_FRACTION = 0.005  # voxels inside the model's HU window: below it the networks see a clipped constant
MIN_SIZE = 4

Section = Literal["training", "validation", "test"]


def case_id(path: str | os.PathLike) -> str:
    """``.../pancreas_001.nii.gz`` -> ``pancreas_001``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_geometry(path: str | os.PathLike) -> dict:
    """Read size, spacing, origin and direction from an image header with SimpleITK (no voxel data).

    Returns:
        ``{"size": (X, Y, Z), "spacing": (sx, sy, sz), "origin": (3,), "direction": (9,)}``.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DataError(p, f"unreadable or corrupt image ({str(e).strip().splitlines()[-1]})") from None
    return {
        "size": tuple(reader.GetSize()),
        "spacing": tuple(reader.GetSpacing()),
        "origin": tuple(reader.GetOrigin()),
        "direction": tuple(reader.GetDirection()),
    }


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume with nibabel: ``(array (X, Y, Z), affine (4, 4))``; DataError if unreadable."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    try:
        img = nib.load(str(p))
        return np.asanyarray(img.dataobj), img.affine
    except Exception as e:  # nibabel raises several types (ImageFileError, EOFError, zlib.error, ...)
        raise DataError(p, f"unreadable or corrupt NIfTI ({type(e).__name__}: {e})") from None


def check_ct_volume(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike | None, *,
                    hu_window: tuple[float, float] | None = None) -> np.ndarray:
    """Refuse a volume no alarm can judge, with a :class:`DataError` naming ``path``; returns it as (X, Y, Z).

    Checks: 3 spatial axes (trailing singleton axes dropped) of at least ``MIN_SIZE`` voxels; a finite, invertible
    affine; finite intensities; plausible Hounsfield units (median in :data:`CT_MEDIAN_RANGE_HU`, 1st-99th
    percentile spread >= :data:`MIN_CT_SPREAD_HU`); with ``hu_window``, at least 0.5 % of voxels inside it.
    """
    a = np.asarray(array)
    while a.ndim > 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise DataError(path, f"expected a 3D volume, got shape {tuple(np.shape(array))}")
    if min(a.shape) < MIN_SIZE:
        raise DataError(path, f"volume of shape {a.shape} is too small (every axis needs >= {MIN_SIZE} voxels)")
    aff = np.asarray(affine, np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise DataError(path, "the affine (voxel-to-world matrix) is missing, non-finite or singular")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(path, f"intensities of type {a.dtype} are not real numbers")
    check_finite(a, path)
    sample = a.ravel()[:: max(1, a.size // 1_000_000)].astype(np.float64)  # quantiles of <= 1M voxels: fast
    p1, med, p99 = np.percentile(sample, [1, 50, 99])
    if p99 - p1 < MIN_CT_SPREAD_HU:
        raise DataError(path, f"intensities span only {p1:.4g}..{p99:.4g} (1st-99th percentile): a constant or "
                              "normalised image, not CT in Hounsfield units")  # fmt: skip
    lo, hi = CT_MEDIAN_RANGE_HU
    if not lo <= med <= hi:
        raise DataError(path, f"median intensity {med:.4g} is outside {lo:g}..{hi:g} HU: not CT in Hounsfield "
                              "units (check the rescale slope/intercept)")  # fmt: skip
    if hu_window is not None:
        inside = float(np.mean((sample >= hu_window[0]) & (sample <= hu_window[1])))
        if inside < MIN_WINDOW_FRACTION:
            raise DataError(path, f"only {100 * inside:.2g}% of voxels lie in the model's HU window "
                                  f"{list(hu_window)}: no soft tissue to segment")  # fmt: skip
    return a


def read_ct_image(path: str | os.PathLike, *, hu_window: tuple[float, float] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`read_volume` then :func:`check_ct_volume`: ``(array (X, Y, Z), affine (4, 4))`` or a DataError."""
    array, affine = read_volume(path)
    return check_ct_volume(array, affine, path, hu_window=hu_window), affine


def check_pair(image: Path, label: Path, tol: float = 1e-3) -> None:
    """DataError naming ``label`` unless it shares ``image``'s size, spacing, origin and direction (headers only)."""
    gi, gl = read_geometry(image), read_geometry(label)
    if gi["size"][:3] != gl["size"][:3]:
        raise DataError(label, f"image/label shape mismatch: image {gi['size']} vs label {gl['size']}")
    for key in ("spacing", "origin", "direction"):
        n = 9 if key == "direction" else 3
        a, b = np.asarray(gi[key][:n]), np.asarray(gl[key][:n])
        if a.shape != b.shape or not np.allclose(a, b, atol=tol * max(1.0, float(np.abs(a).max()))):
            raise DataError(
                label, f"image/label affine mismatch in {key}: image {np.round(a, 4).tolist()} vs label "
                f"{np.round(b, 4).tolist()}"
            )


def msd_labels(root: str | os.PathLike) -> dict[int, str]:
    """The ``labels`` of ``dataset.json`` as ``{value: name}``."""
    meta = read_json(Path(root) / "dataset.json")
    try:
        return {int(k): str(v) for k, v in meta["labels"].items()}
    except (KeyError, AttributeError, ValueError):
        raise DataError(Path(root) / "dataset.json", "missing or malformed 'labels' mapping") from None


def msd_datalist(
    root: str | os.PathLike,
    section: Section = "training",
    check: Literal["none", "header", "full"] = "header",
) -> list[dict]:
    """Read an MSD task's ``dataset.json`` into a MONAI datalist and check every case.

    Args:
        root: the task folder holding ``dataset.json``.
        section: ``"training"`` (image+label), ``"test"`` (image only) or ``"validation"``.
        check: ``"header"`` checks files exist and image/label geometry agree (fast, headers only);
            ``"full"`` also loads voxels to check for NaN/Inf and undeclared label values.

    Returns:
        ``[{"image": abs path, "label": abs path (if labelled), "case_id": "pancreas_001"}, ...]``.

    Raises:
        DataError: naming the file and the problem.
    """
    from monai.data import load_decathlon_datalist

    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    meta_path = root / "dataset.json"
    meta = read_json(meta_path)
    if section not in meta:
        lists = sorted(k for k in meta if isinstance(meta[k], list))
        raise DataError(meta_path, f"no '{section}' section (sections: {lists})")
    try:
        items = load_decathlon_datalist(meta_path, is_segmentation=True, data_list_key=section, base_dir=root)
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(meta_path, f"malformed '{section}' list ({e})") from None
    if not items:
        raise DataError(meta_path, f"empty dataset: the '{section}' list has no cases")
    allowed = msd_labels(root)
    for item in items:
        item["case_id"] = case_id(item["image"])
        image = Path(item["image"])
        label = Path(item["label"]) if "label" in item else None
        if check == "none":
            continue
        if label is None:
            read_geometry(image)
        else:
            check_pair(image, label)
        if check == "full":
            check_finite(read_volume(image)[0], image)
            if label is not None:
                values = read_volume(label)[0]
                check_label_values(values, allowed, label)
                if not np.any(values):
                    # legal (a scan without the organ) but a segmenter learns nothing from it, and its
                    # validation Dice of 0 would be logged as a "best metric"
                    warnings.warn(f"{label}: case {item['case_id']!r} has an all-background label", stacklevel=2)
    return items
