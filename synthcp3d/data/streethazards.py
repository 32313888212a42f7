"""StreetHazards (CAOS benchmark, Hendrycks et al.): datalist and checked loader.

Real layout of the published archives ``streethazards_train.tar`` and ``streethazards_test.tar``
(checked against ``create_dataset.py`` of github.com/hendrycks/anomaly-seg and loaders that read it)::

    ROOT/train/images/training/t1-3/*.png        ROOT/train/annotations/training/t1-3/*.png
    ROOT/train/images/validation/t4/*.png        ROOT/train/annotations/validation/t4/*.png
    ROOT/test/images/test/t5/*.png               ROOT/test/annotations/test/t5/*.png   (also t6)

Town folders are found by listing, so ``t5``, ``t6`` or a merged ``t5-6`` all work. An annotation
has the same file name as its image. Annotation PNGs store ``class + 1`` (1..14), and the reference
loader subtracts 1, giving the 13 in-distribution classes 0..12 plus ``13 = anomaly``, which occurs
only in the test split. Stored 0 and 255 (not used by the real data) are read as 255 = ignore; any
other value is a :class:`DataError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from synthcp3d.data.cityscapes import IGNORE_INDEX, Check, LoadSceneSample, check_scene_items, label_lut
from synthcp3d.data.io import DataError

__all__ = [
    "ANOMALY_INDEX",
    "NUM_CLASSES",
    "SPLIT_FOLDERS",
    "STREETHAZARDS_CLASSES",
    "STREETHAZARDS_PALETTE",
    "load_streethazards",
    "streethazards_datalist",
    "values_to_classes",
]

STREETHAZARDS_CLASSES: tuple[str, ...] = (
    "unlabeled", "building", "fence", "other", "pedestrian", "pole", "road line", "road",
    "sidewalk", "vegetation", "car", "wall", "traffic sign", "anomaly",
)
"""Class names after ``value - 1``: 0 unlabeled ... 12 traffic sign, 13 anomaly."""
STREETHAZARDS_PALETTE: np.ndarray = np.array([
    (0, 0, 0), (70, 70, 70), (190, 153, 153), (250, 170, 160), (220, 20, 60), (153, 153, 153),
    (157, 234, 50), (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (102, 102, 156),
    (220, 220, 0), (60, 250, 240),
], dtype=np.uint8)
"""``(14, 3)`` uint8 RGB colour per class (the benchmark's own colours)."""
ANOMALY_INDEX = 13
NUM_CLASSES = 13
"""In-distribution classes a segmenter is trained on (0..12)."""

SPLIT_FOLDERS: dict[str, tuple[str, str]] = {
    "train": ("train", "training"),
    "val": ("train", "validation"),
    "test": ("test", "test"),
}
"""split -> (archive folder, sub-folder): images in ``ROOT/{archive}/images/{sub}/{town}/``."""

_LUT = label_lut({0: IGNORE_INDEX, 255: IGNORE_INDEX, **{v: v - 1 for v in range(1, 15)}})


def values_to_classes(label: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Map stored annotation values to classes: ``value - 1`` for 1..14, 0/255 -> 255 (ignore).

    Args:
        label: integer array of any shape as stored in the annotation PNG.
        path: file named in the :class:`DataError` raised for other values.

    Returns:
        uint8 array of the same shape with values in ``0..13`` or 255.
    """
    label = np.asarray(label)
    mapped = np.where((label < 0) | (label > 255), -1, _LUT[np.clip(label, 0, 255).astype(np.intp)])
    if np.any(mapped < 0):
        raise DataError(path, f"annotation values {np.unique(label[mapped < 0])[:10].tolist()} outside "
                        "the declared set 0..14, 255")
    return mapped.astype(np.uint8)


_LOAD = LoadSceneSample(_LUT.astype(np.int64))


def load_streethazards(item: Mapping) -> dict:
    """Load one :func:`streethazards_datalist` entry: image float32 ``(3, H, W)``, label int64 ``(1, H, W)``."""
    return _LOAD(item)


def _natural(p: Path) -> tuple:
    return (p.parent.name, int(p.stem) if p.stem.isdigit() else float("inf"), p.name)


def streethazards_datalist(root: str | os.PathLike, split: str, check: Check = "header") -> list[dict]:
    """List image/annotation pairs of one split, sorted by town then by number.

    Args:
        root: folder holding the extracted ``train/`` and/or ``test/`` archives.
        split: ``"train"`` (t1-3), ``"val"`` (t4) or ``"test"`` (t5/t6, with anomalies).
        check: per-pair checks before returning, see :func:`~synthcp3d.data.cityscapes.check_scene_items`.

    Returns:
        ``[{"image": path, "label": path, "case_id": "t5_12"}, ...]`` with string paths.

    Raises:
        DataError: root or split folder missing, an image without annotation, no images at all, or a
            pair failing ``check``.
    """
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "StreetHazards root folder not found")
    archive, sub = SPLIT_FOLDERS[split]
    image_dir, label_dir = root / archive / "images" / sub, root / archive / "annotations" / sub
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DataError(d, f"split folder not found (expected {root}/{archive}/{{images,annotations}}/"
                            f"{sub}/TOWN/*.png)")
    items = []
    for image in sorted(image_dir.glob("*/*.png"), key=_natural):
        label = label_dir / image.parent.name / image.name
        if not label.is_file():
            raise DataError(label, f"annotation missing for image {image}")
        items.append({"image": str(image), "label": str(label), "case_id": f"{image.parent.name}_{image.stem}"})
    if not items:
        raise DataError(image_dir, "no images matching TOWN/*.png")
    check_scene_items(items, _LOAD, check)
    return items
