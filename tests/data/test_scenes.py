"""Street-scene phantom: exact layouts, label values, determinism, sampling/rendering split."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from synthcp3d.data.cityscapes import LABEL_IDS
from synthcp3d.data.io import read_png
from synthcp3d.data.phantom_scenes import (
    Part,
    make_scene_dataset,
    render,
    sample_scene,
    to_cityscapes,
    to_streethazards,
)
from synthcp3d.data.streethazards import STREETHAZARDS_CLASSES

SIZE = (64, 128)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory) -> Path:
    return make_scene_dataset(tmp_path_factory.mktemp("cs"), style="cityscapes", num_images=4, size=SIZE, seed=3)


@pytest.fixture(scope="module")
def sh_root(tmp_path_factory) -> Path:
    return make_scene_dataset(tmp_path_factory.mktemp("sh"), style="streethazards", num_images=3, size=SIZE, seed=3)


def test_cityscapes_layout_and_names(cs_root):
    names = sorted(p.relative_to(cs_root).as_posix() for p in cs_root.rglob("*.png"))
    train_stems = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000019", "bremen_000000_000019"]
    for stem in train_stems:
        city = stem.split("_")[0]
        assert f"leftImg8bit/train/{city}/{stem}_leftImg8bit.png" in names
        assert f"gtFine/train/{city}/{stem}_gtFine_labelIds.png" in names
        assert f"gtFine/train/{city}/{stem}_gtFine_color.png" in names
    assert "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png" in names
    assert len(names) == 2 * 4 * 3  # 2 splits x 4 images x (image, labelIds, color)
    image = read_png(cs_root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    label = read_png(cs_root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
    assert label.shape == SIZE and label.dtype == np.uint8


def test_cityscapes_label_values(cs_root):
    values = set()
    for p in cs_root.glob("gtFine/*/*/*_labelIds.png"):
        values |= set(np.unique(read_png(p)).tolist())
    assert values <= set(LABEL_IDS.values())
    # ignored ids (ego vehicle, out of roi) and the main train classes all occur
    assert {1, 3, 7, 8, 23, 26} <= values


def test_streethazards_layout_and_anomalies(sh_root):
    folders = {"train": "train/{}/training/t1-3", "val": "train/{}/validation/t4", "test": "test/{}/test/t5"}
    for split, folder in folders.items():
        images = sorted(p.name for p in (sh_root / folder.format("images")).glob("*.png"))
        annotations = sorted(p.name for p in (sh_root / folder.format("annotations")).glob("*.png"))
        assert images == annotations == ["1.png", "2.png", "3.png"], split
        values = set()
        for name in annotations:
            values |= set(np.unique(read_png(sh_root / folder.format("annotations") / name)).tolist())
        assert values <= set(range(1, 15))
        assert (14 in values) == (split == "test"), split  # anomaly (class 13 = value 14) only in test
    assert read_png(sh_root / "test/images/test/t5/1.png").shape == (*SIZE, 3)


def test_part_tables_use_dataset_names():
    parts = np.array([Part.ROAD, Part.SIDEWALK, Part.CAR, Part.SKY, Part.EGO, Part.ROAD_LINE], np.uint8)
    assert to_cityscapes(parts).tolist() == [7, 8, 26, 23, 1, 7]
    sh = to_streethazards(np.array([Part.ROAD, Part.ROAD_LINE, Part.PERSON, Part.ANOMALY, Part.SKY], np.uint8))
    assert [STREETHAZARDS_CLASSES[v - 1] for v in sh] == ["road", "road line", "pedestrian", "anomaly", "unlabeled"]
    with pytest.raises(ValueError):
        to_cityscapes(np.array([Part.ANOMALY], np.uint8))


def test_same_seed_identical_files_different_seed_differs(tmp_path, cs_root):
    again = make_scene_dataset(tmp_path / "a", style="cityscapes", num_images=4, size=SIZE, seed=3)
    assert _digests(again) == _digests(cs_root)
    other = make_scene_dataset(tmp_path / "b", style="cityscapes", num_images=4, size=SIZE, seed=4)
    assert _digests(other).keys() == _digests(cs_root).keys()
    assert all(_digests(other)[k] != v for k, v in _digests(cs_root).items() if "leftImg8bit" in k)


def test_files_do_not_depend_on_generation_order(tmp_path, sh_root):
    fewer = make_scene_dataset(tmp_path, style="streethazards", num_images=1, size=SIZE, seed=3, splits=("test",))
    name = "test/images/test/t5/1.png"
    assert (fewer / name).read_bytes() == (sh_root / name).read_bytes()


def test_sample_then_render_is_deterministic():
    spec = sample_scene(np.random.default_rng(0), SIZE, anomalies=True)
    a, pa = render(spec)
    b, pb = render(spec)
    assert np.array_equal(a, b) and np.array_equal(pa, pb)
    assert a.shape == (*SIZE, 3) and pa.shape == SIZE and pa.dtype == np.uint8
    assert spec.objects and all(o.depth > 0 for o in spec.objects)


def test_full_size_render_is_fast():
    spec = sample_scene(np.random.default_rng(1), (512, 1024))
    start = time.perf_counter()
    image, parts = render(spec)
    assert time.perf_counter() - start < 5.0  # typically ~0.2 s; lenient for shared CI machines
    assert len(np.unique(parts)) >= 8 and image.std() > 10


def test_cli_writes_streethazards(tmp_path):
    from synthcp3d.cli import main

    code = main(["phantom", "scenes", "--style", "streethazards", "--out", str(tmp_path), "--images", "1",
                 "--size", "32", "64", "--seed", "1"])
    assert code == 0
    assert (tmp_path / "test/annotations/test/t5/1.png").is_file()
