"""StreetHazards loader: layout, value - 1 mapping, anomaly only in test, one DataError per bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from synthcp3d.data.io import DataError, read_png, write_png
from synthcp3d.data.phantom_scenes import make_scene_dataset
from synthcp3d.data.streethazards import (
    ANOMALY_INDEX,
    STREETHAZARDS_CLASSES,
    STREETHAZARDS_PALETTE,
    load_streethazards,
    streethazards_datalist,
    values_to_classes,
)

SIZE = (48, 96)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_scene_dataset(tmp_path_factory.mktemp("sh"), style="streethazards", num_images=3, size=SIZE, seed=0)


@pytest.fixture
def root(source, tmp_path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "streethazards"))


def test_value_minus_one_mapping():
    stored = np.array([1, 2, 8, 9, 11, 14, 0, 255], np.uint8)
    assert values_to_classes(stored).tolist() == [0, 1, 7, 8, 10, 13, 255, 255]
    assert STREETHAZARDS_CLASSES[ANOMALY_INDEX] == "anomaly" and STREETHAZARDS_CLASSES[7] == "road"
    assert len(STREETHAZARDS_CLASSES) == 14 and STREETHAZARDS_PALETTE.shape == (14, 3)
    with pytest.raises(DataError, match=r"\[15\]"):
        values_to_classes(np.array([3, 15]))


def test_datalists_sorted_and_anomaly_only_in_test(source):
    from monai.data import Dataset

    for split, town in (("train", "t1-3"), ("val", "t4"), ("test", "t5")):
        items = streethazards_datalist(source, split, check="full")
        assert [it["case_id"] for it in items] == [f"{town}_1", f"{town}_2", f"{town}_3"]
        labels = [s["label"] for s in Dataset(items, transform=load_streethazards)]
        values = set(np.unique(np.concatenate([lab.ravel() for lab in labels])).tolist())
        assert values <= set(range(14))
        assert (ANOMALY_INDEX in values) == (split == "test")
        assert labels[0].shape == (1, *SIZE) and labels[0].dtype == np.int64
    sample = load_streethazards(items[0])
    assert np.array_equal(sample["label"][0], read_png(items[0]["label"]).astype(np.int64) - 1)
    assert sample["image"].shape == (3, *SIZE) and sample["image"].dtype == np.float32


def test_natural_sort(root):
    folder_img, folder_ann = root / "train/images/training/t1-3", root / "train/annotations/training/t1-3"
    for i in (10, 2):
        shutil.copy(folder_img / "1.png", folder_img / f"{i}.png")
        shutil.copy(folder_ann / "1.png", folder_ann / f"{i}.png")
    names = [Path(it["image"]).name for it in streethazards_datalist(root, "train")]
    assert names == ["1.png", "2.png", "3.png", "10.png"]


def test_missing_root_split_and_annotation(tmp_path, root):
    with pytest.raises(DataError, match="root folder not found"):
        streethazards_datalist(tmp_path / "nope", "test")
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match="split folder not found"):
        streethazards_datalist(root, "test")
    missing = root / "train/annotations/validation/t4/2.png"
    missing.unlink()
    with pytest.raises(DataError, match="annotation missing") as e:
        streethazards_datalist(root, "val")
    assert e.value.path == str(missing)


def test_empty_split(root):
    for p in (root / "train/images/validation").rglob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match="no images"):
        streethazards_datalist(root, "val")


def test_corrupt_mismatched_and_out_of_set(root):
    image = root / "test/images/test/t5/1.png"
    image.write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable or corrupt") as e:
        streethazards_datalist(root, "test")
    assert e.value.path == str(image)

    ann = root / "train/annotations/training/t1-3/2.png"
    write_png(ann, np.ones((SIZE[0], SIZE[1] + 4), np.uint8))
    with pytest.raises(DataError, match="does not match image size"):
        streethazards_datalist(root, "train")

    ann = root / "train/annotations/validation/t4/3.png"
    values = read_png(ann).copy()
    values[5, 5] = 20
    write_png(ann, values)
    with pytest.raises(DataError, match=r"\[20\] outside the declared set") as e:
        streethazards_datalist(root, "val", check="full")
    assert e.value.path == str(ann)
