"""Cityscapes loader: labelId -> trainId table, datalist by naming convention, and one DataError per bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from synthcp3d.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    LABELS,
    cityscapes_datalist,
    labelids_to_trainids,
    load_cityscapes,
)
from synthcp3d.data.io import DataError, read_png, write_png
from synthcp3d.data.phantom_scenes import make_scene_dataset

SIZE = (48, 96)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_scene_dataset(tmp_path_factory.mktemp("cs"), style="cityscapes", num_images=3, size=SIZE, seed=0,
                              write_color=False)


@pytest.fixture
def root(source, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(source, tmp_path / "cityscapes"))


def test_trainid_mapping_matches_hand_table():
    table = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
             26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
             0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 9: 255, 10: 255, 14: 255, 15: 255, 16: 255,
             18: 255, 29: 255, 30: 255, -1: 255}
    ids = np.array(list(table), dtype=np.int16).reshape(5, 7)
    assert labelids_to_trainids(ids).ravel().tolist() == list(table.values())
    assert labelids_to_trainids(np.array([[7, 26]], np.uint8)).dtype == np.uint8


def test_label_table():
    assert len(LABELS) == 35 and sorted(lab.id for lab in LABELS) == list(range(-1, 34))
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car"
    assert CITYSCAPES_PALETTE.shape == (19, 3) and tuple(CITYSCAPES_PALETTE[0]) == (128, 64, 128)


@pytest.mark.parametrize("bad", [34, 200, -5])
def test_undeclared_labelid_rejected(bad):
    with pytest.raises(DataError, match="not Cityscapes labelIds"):
        labelids_to_trainids(np.array([7, bad]), path="x.png")


def test_datalist_and_monai_dataset(source):
    from monai.data import DataLoader, Dataset

    items = cityscapes_datalist(source, "train", check="full")
    assert [it["case_id"] for it in items] == ["aachen_000000_000019", "bochum_000000_000019", "bremen_000000_000019"]
    assert all(it["label"].endswith("_gtFine_labelIds.png") for it in items)
    sample = Dataset(items, transform=load_cityscapes)[0]
    assert sample["image"].shape == (3, *SIZE) and sample["image"].dtype == np.float32
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert sample["label"].shape == (1, *SIZE) and sample["label"].dtype == np.int64
    assert np.array_equal(sample["label"][0], labelids_to_trainids(read_png(items[0]["label"])))
    assert set(np.unique(sample["label"]).tolist()) <= set(range(19)) | {255}
    assert 255 in sample["label"]  # ego vehicle / border are ignored
    batch = next(iter(DataLoader(Dataset(items, transform=load_cityscapes), batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 3, *SIZE)


def _label(root: Path, stem: str = "aachen_000000_000019") -> Path:
    return root / "gtFine/train/aachen" / f"{stem}_gtFine_labelIds.png"


def _image(root: Path, stem: str = "aachen_000000_000019") -> Path:
    return root / "leftImg8bit/train/aachen" / f"{stem}_leftImg8bit.png"


def test_missing_root_and_split(tmp_path, root):
    with pytest.raises(DataError, match="root folder not found"):
        cityscapes_datalist(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="split folder not found") as e:
        cityscapes_datalist(root, "test")
    assert "leftImg8bit/test" in str(e.value)


def test_image_without_label_named(root):
    _label(root).unlink()
    with pytest.raises(DataError, match="label missing") as e:
        cityscapes_datalist(root, "train")
    assert e.value.path == str(_label(root)) and "aachen_000000_000019_leftImg8bit.png" in e.value.problem


def test_empty_split(root):
    for p in (root / "leftImg8bit/train").rglob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match="no images"):
        cityscapes_datalist(root, "train")


def test_corrupt_png(root):
    _image(root).write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(DataError, match="unreadable or corrupt") as e:
        cityscapes_datalist(root, "train")
    assert e.value.path == str(_image(root))
    items = cityscapes_datalist(root, "train", check="none")
    with pytest.raises(DataError, match="unreadable or corrupt"):
        load_cityscapes(items[0])


def test_shape_mismatch(root):
    write_png(_label(root), np.full((SIZE[0] // 2, SIZE[1]), 7, np.uint8))
    with pytest.raises(DataError, match="does not match image size") as e:
        cityscapes_datalist(root, "train")
    assert e.value.path == str(_label(root))
    with pytest.raises(DataError, match="does not match image size"):
        load_cityscapes(cityscapes_datalist(root, "train", check="none")[0])


def test_label_value_outside_set(root):
    label = read_png(_label(root)).copy()
    label[0, 0] = 40
    write_png(_label(root), label)
    cityscapes_datalist(root, "train")  # header check passes; values need the full check
    with pytest.raises(DataError, match=r"label values \[40\] outside the declared set") as e:
        cityscapes_datalist(root, "train", check="full")
    assert e.value.path == str(_label(root))


def test_rgb_label_rejected(root):
    write_png(_label(root), np.zeros((*SIZE, 3), np.uint8))
    with pytest.raises(DataError, match="single-channel"):
        cityscapes_datalist(root, "train")
