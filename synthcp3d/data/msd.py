"""Medical Segmentation Decathlon (Task07 Pancreas) datalists with geometry and content checks.

:func:`msd_datalist` reads ``dataset.json`` through MONAI's ``load_decathlon_datalist`` and checks
every case before training starts, raising one :class:`~synthcp3d.data.io.DataError` that names the
file and the problem: missing file, unreadable NIfTI, image/label size, spacing, origin or direction
mismatch (read from the headers with SimpleITK, without loading voxels), and with ``check="full"``
also NaN/Inf intensities and label values outside the declared ``labels``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from synthcp3d.data.io import DataError, check_finite, check_label_values, read_json

__all__ = ["case_id", "msd_datalist", "msd_labels", "read_geometry", "read_volume"]

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


def _check_pair(image: Path, label: Path, tol: float = 1e-3) -> None:
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
            _check_pair(image, label)
        if check == "full":
            check_finite(read_volume(image)[0], image)
            if label is not None:
                check_label_values(read_volume(label)[0], allowed, label)
    return items
