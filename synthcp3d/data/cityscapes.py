"""Cityscapes fine annotations: label table, datalist and a checked image/label loader.

Real layout (``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png   RGB
    ROOT/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png    uint8 labelIds

``gtFine_labelIds`` holds the 34 Cityscapes label ids; training uses the 19 ``trainId`` classes and
255 = ignore (the official ``cityscapesscripts.helpers.labels`` table, reproduced in :data:`LABELS`).

:class:`LoadSceneSample` is the shared 2D loader (also used by :mod:`synthcp3d.data.streethazards`):
a dict transform for ``monai.data.Dataset(datalist, transform=...)`` that reads both PNGs, checks
them and maps label values through a 256-entry look-up table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from synthcp3d.data.io import DataError, read_png

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "IGNORE_INDEX",
    "LABELS",
    "LABEL_IDS",
    "LoadSceneSample",
    "NUM_CLASSES",
    "check_scene_items",
    "cityscapes_datalist",
    "label_lut",
    "labelids_to_trainids",
    "load_cityscapes",
]

IGNORE_INDEX = 255


class Label(NamedTuple):
    """One row of the official Cityscapes label table."""

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


# name, labelId, trainId, colour (cityscapesscripts/helpers/labels.py); ignored classes map to 255.
LABELS: tuple[Label, ...] = tuple(
    Label(*row)
    for row in [
        ("unlabeled", 0, 255, (0, 0, 0)),
        ("ego vehicle", 1, 255, (0, 0, 0)),
        ("rectification border", 2, 255, (0, 0, 0)),
        ("out of roi", 3, 255, (0, 0, 0)),
        ("static", 4, 255, (0, 0, 0)),
        ("dynamic", 5, 255, (111, 74, 0)),
        ("ground", 6, 255, (81, 0, 81)),
        ("road", 7, 0, (128, 64, 128)),
        ("sidewalk", 8, 1, (244, 35, 232)),
        ("parking", 9, 255, (250, 170, 160)),
        ("rail track", 10, 255, (230, 150, 140)),
        ("building", 11, 2, (70, 70, 70)),
        ("wall", 12, 3, (102, 102, 156)),
        ("fence", 13, 4, (190, 153, 153)),
        ("guard rail", 14, 255, (180, 165, 180)),
        ("bridge", 15, 255, (150, 100, 100)),
        ("tunnel", 16, 255, (150, 120, 90)),
        ("pole", 17, 5, (153, 153, 153)),
        ("polegroup", 18, 255, (153, 153, 153)),
        ("traffic light", 19, 6, (250, 170, 30)),
        ("traffic sign", 20, 7, (220, 220, 0)),
        ("vegetation", 21, 8, (107, 142, 35)),
        ("terrain", 22, 9, (152, 251, 152)),
        ("sky", 23, 10, (70, 130, 180)),
        ("person", 24, 11, (220, 20, 60)),
        ("rider", 25, 12, (255, 0, 0)),
        ("car", 26, 13, (0, 0, 142)),
        ("truck", 27, 14, (0, 0, 70)),
        ("bus", 28, 15, (0, 60, 100)),
        ("caravan", 29, 255, (0, 0, 90)),
        ("trailer", 30, 255, (0, 0, 110)),
        ("train", 31, 16, (0, 80, 100)),
        ("motorcycle", 32, 17, (0, 0, 230)),
        ("bicycle", 33, 18, (119, 11, 32)),
        ("license plate", -1, 255, (0, 0, 142)),  # trainId -1 in the official table: ignored
    ]
)

LABEL_IDS: dict[str, int] = {lab.name: lab.id for lab in LABELS}
"""Label name -> labelId as stored in ``gtFine_labelIds.png``."""

_TRAIN = sorted((lab for lab in LABELS if lab.train_id != IGNORE_INDEX), key=lambda lab: lab.train_id)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN)
"""The 19 evaluation classes in trainId order (road=0 ... bicycle=18)."""
CITYSCAPES_PALETTE: np.ndarray = np.array([lab.color for lab in _TRAIN], dtype=np.uint8)
"""``(19, 3)`` uint8 RGB colour of each trainId, for visualisation."""
NUM_CLASSES = len(CITYSCAPES_CLASSES)


def label_lut(mapping: Mapping[int, int]) -> np.ndarray:
    """Build a 256-entry int16 look-up table from ``{stored value: target}``; undeclared values are -1."""
    lut = np.full(256, -1, dtype=np.int16)
    for src, dst in mapping.items():
        if 0 <= src < 256:
            lut[src] = dst
    return lut


_TRAINID_LUT = label_lut({lab.id: lab.train_id for lab in LABELS})


def labelids_to_trainids(label: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Map Cityscapes labelIds to trainIds (255 = ignore) with one table look-up.

    Args:
        label: integer array of any shape holding labelIds (-1, the licence plate, maps to 255).
        path: file named in the :class:`DataError` raised for ids outside the table.

    Returns:
        uint8 array of the same shape with values in ``0..18`` or 255.
    """
    label = np.asarray(label)
    bad = (label < -1) | (label > 255)
    mapped = np.where(label == -1, IGNORE_INDEX, _TRAINID_LUT[np.clip(label, 0, 255).astype(np.intp)])
    bad |= mapped < 0
    if np.any(bad):
        raise DataError(path, f"label values {np.unique(label[bad])[:10].tolist()} are not Cityscapes "
                        "labelIds (-1..33)")
    return mapped.astype(np.uint8)


class LoadSceneSample:
    """Dict transform: read an RGB image and its label PNG, check them and map label values.

    Works as ``monai.data.Dataset(datalist, transform=LoadSceneSample(lut))`` or inside a MONAI
    ``Compose``. Every problem raises one :class:`DataError` naming the file: missing or corrupt PNG,
    image not RGB, label not single-channel, image/label size mismatch, label value not in ``lut``.

    Args:
        lut: 256-entry int array, stored label value -> training label (-1 = value not allowed).
        image_key: key holding the image path; replaced by a float32 ``(3, H, W)`` array in [0, 1].
        label_key: key holding the label path; replaced by an int64 ``(1, H, W)`` array.

    The input paths are kept under ``f"{key}_path"``.
    """

    def __init__(self, lut: np.ndarray, image_key: str = "image", label_key: str = "label"):
        self.lut = np.asarray(lut, dtype=np.int64)
        if self.lut.shape != (256,):
            raise ValueError("lut must have 256 entries")
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, item: Mapping) -> dict:
        out = dict(item)
        image_path, label_path = Path(item[self.image_key]), Path(item[self.label_key])
        image = read_png(image_path)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(image_path, f"expected an 8-bit RGB image, got shape {image.shape} {image.dtype}")
        label = read_png(label_path)
        if label.ndim != 2:
            raise DataError(label_path, f"expected a single-channel label map, got shape {label.shape}")
        if label.shape != image.shape[:2]:
            raise DataError(label_path, f"label size {label.shape} does not match image size "
                            f"{image.shape[:2]} of {image_path.name}")
        if label.dtype != np.uint8 and (label.min() < 0 or label.max() > 255):
            raise DataError(label_path, f"label values outside 0..255 (range {label.min()}..{label.max()})")
        mapped = self.lut[label.astype(np.intp)]
        if np.any(mapped < 0):
            bad = np.unique(label[mapped < 0])
            allowed = np.nonzero(self.lut >= 0)[0]
            raise DataError(label_path, f"label values {bad[:10].tolist()} outside the declared set "
                            f"{allowed.tolist()}")
        out[self.image_key] = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
        out[self.label_key] = mapped[None]
        out[f"{self.image_key}_path"] = str(image_path)
        out[f"{self.label_key}_path"] = str(label_path)
        return out


Check = Literal["none", "header", "full"]


def _png_header(path: Path) -> tuple[tuple[int, int], str]:
    """``((H, W), mode)`` from a PNG header without decoding pixels; DataError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return (im.height, im.width), im.mode
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(path, f"unreadable or corrupt PNG ({e})") from None


def check_scene_items(items: list[dict], loader: LoadSceneSample, check: Check = "header") -> None:
    """Check every datalist entry before training, raising the first :class:`DataError`.

    Args:
        items: entries with ``"image"`` and ``"label"`` paths.
        loader: the dataset's :class:`LoadSceneSample` (used by ``check="full"``).
        check: ``"header"`` reads PNG headers only (readable, RGB image, single-channel label, equal
            sizes); ``"full"`` loads every pair, also checking label values; ``"none"`` skips.
    """
    if check == "none":
        return
    if check not in ("header", "full"):
        raise ValueError(f"check must be 'none', 'header' or 'full', got {check!r}")
    for item in items:
        if check == "full":
            loader(item)
            continue
        image, label = Path(item["image"]), Path(item["label"])
        (size, mode), (lsize, lmode) = _png_header(image), _png_header(label)
        if mode != "RGB":
            raise DataError(image, f"expected an 8-bit RGB image, got PNG mode {mode}")
        if lmode not in ("L", "P", "I", "I;16"):
            raise DataError(label, f"expected a single-channel label map, got PNG mode {lmode}")
        if lsize != size:
            raise DataError(label, f"label size {lsize} does not match image size {size} of {image.name}")


def load_cityscapes(item: Mapping) -> dict:
    """Load one :func:`cityscapes_datalist` entry: image float32 ``(3, H, W)``, label int64 trainIds ``(1, H, W)``."""
    return _LOAD_CITYSCAPES(item)


_LOAD_CITYSCAPES = LoadSceneSample(_TRAINID_LUT.astype(np.int64))

_IMAGE_SUFFIX = "_leftImg8bit.png"
_NAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})$")


def cityscapes_datalist(root: str | os.PathLike, split: str, cities: Sequence[str] | None = None,
                        check: Check = "header") -> list[dict]:
    """List image/label pairs of one split by the real Cityscapes naming convention, sorted.

    Args:
        root: dataset folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        cities: restrict to these city folders (default: all).
        check: per-pair checks before returning, see :func:`check_scene_items`.

    Returns:
        ``[{"image": path, "label": path, "case_id": "aachen_000000_000019"}, ...]`` with string paths.

    Raises:
        DataError: root or split folder missing, an image without its ``gtFine_labelIds.png``, a file
            name not following the convention, no images at all, or a pair failing ``check``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "Cityscapes root folder not found")
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DataError(d, f"split folder not found (expected {root}/{{leftImg8bit,gtFine}}/{split}/CITY/)")
    items = []
    for image in sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}")):
        city = image.parent.name
        if cities is not None and city not in cities:
            continue
        stem = image.name[: -len(_IMAGE_SUFFIX)]
        if not _NAME.match(stem) or not stem.startswith(city + "_"):
            raise DataError(image, f"name does not follow {city}_SSSSSS_FFFFFF{_IMAGE_SUFFIX}")
        label = label_dir / city / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise DataError(label, f"label missing for image {image}")
        items.append({"image": str(image), "label": str(label), "case_id": stem})
    if not items:
        raise DataError(image_dir, f"no images matching CITY/*{_IMAGE_SUFFIX}")
    check_scene_items(items, _LOAD_CITYSCAPES, check)
    return items
