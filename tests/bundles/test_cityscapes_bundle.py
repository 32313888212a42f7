"""cityscapes_synthcp: metadata and network checks for both profiles, and every config in its documented order on a
tiny Cityscapes phantom (32x64, 4 images per split, one-epoch segmenters, a few GAN / comparator iterations)."""

import json
import sys

import numpy as np
import pytest

from .conftest import REPO, SCHEMA, SPADE_2D_FAST, bundle_cmd, run

BUNDLE = REPO / "bundles" / "cityscapes_synthcp"
META = str(BUNDLE / "configs/metadata.json")
MONAI = (sys.executable, "-m", "monai.bundle")
_SEG = {"backbone": "unet", "unet_channels": [4, 8, 16], "unet_res_units": 0, "feature_channels": 4, "dropout": 0.2,
        "max_epochs": 1, "lr": 0.003, "batch_size": 2, "val_interval": 1, "lambda_dice": 1.0}
FAST = {
    "image_size": [32, 64],
    "crop_size": [32, 64],
    "num_folds": 2,
    "mc_samples": 2,
    "segmenters": {"a": _SEG, "b": {**_SEG, "unet_channels": [4, 8], "lambda_dice": 0.0}},
    "spade#size": [32, 64],
    **SPADE_2D_FAST,
    "alarms#widen_factor": 0.125,
    "alarms#fuse_channels": 4,
    "alarms#hidden": 8,
    "alarms#vae_size": [16, 32],
    "alarms#latent_size": 4,
    "alarms#vae_channels": [4, 8],
    "alarms#iterations": 2,
    "alarms#vae_iterations": 2,
    "alarms#batch_size": 2,
}


def _configs(*names):
    return [str(BUNDLE / "configs" / n) for n in names]


@pytest.mark.skipif(not SCHEMA.is_file(), reason="MONAI's metadata schema is kept in ../shared/monai")
def test_verify_metadata():
    r = run([*MONAI, "verify_metadata", "--meta_file", META, "--filepath", str(SCHEMA)])
    assert "metadata is verified with no error" in r.stdout + r.stderr


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_verify_networks_in_out(profile):
    from monai.bundle import verify_net_in_out

    configs = _configs("common.json", f"profiles/{profile}.json")
    r = run([*MONAI, "verify_net_in_out", "network_def", "--meta_file", META, "--config_file", json.dumps(configs)])
    assert "verified with no error" in r.stdout + r.stderr
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    verify_net_in_out(net_id="spade_def", meta_file=META, config_file=configs, n=2,
                      **{"_meta_#network_data_format": meta["network_data_format_spade"]})  # fmt: skip


@pytest.fixture(scope="module")
def cityscapes_phantom(tmp_path_factory):
    from synthcp3d.data.phantom_scenes import make_scene_dataset

    return make_scene_dataset(tmp_path_factory.mktemp("cityscapes"), "cityscapes", num_images=4, size=(32, 64),
                              seed=3, write_color=False)  # fmt: skip


def test_pipeline_configs_in_order(cityscapes_phantom, tmp_path):
    """crossval (a, then b) -> train_spade -> synthesize (a, b) -> train_alarms -> evaluate, as the docs run them."""
    base = ["common.json", "profiles/tiny.json"]
    common = dict(dataset_dir=str(cityscapes_phantom), output_dir=str(tmp_path), **FAST)

    def bundle(config, **kw):
        return run(bundle_cmd([*base, config], bundle=BUNDLE, **common, **kw))

    bundle("crossval.json")
    bundle("crossval.json", segmenter_id="b")
    index = json.loads((tmp_path / "segmenter_a/predictions/index.json").read_text())
    assert sorted(v["split"] for v in index.values()) == ["cv"] * 4 + ["test"] * 4
    folds = json.loads((tmp_path / "segmenter_a/folds.json").read_text())["folds"]
    assert folds == [sorted(folds[0] + folds[1])[:2], sorted(folds[0] + folds[1])[2:]]  # contiguous, sorted
    index_b = json.loads((tmp_path / "segmenter_b/predictions/index.json").read_text())
    assert sorted(v["split"] for v in index_b.values()) == ["test"] * 4  # b: final model only
    assert np.load(index["aachen_000000_000019"]["mc_probs"]).shape == (19, 32, 64)

    with pytest.raises(AssertionError, match="run the train_spade config first"):
        bundle("synthesize.json")
    bundle("train_spade.json")
    bundle("synthesize.json")
    bundle("synthesize.json", segmenter_id="b")
    assert sorted(p.name for p in (tmp_path / "synth_a").iterdir()) == sorted(index)
    bundle("train_alarms.json")
    manifest = json.loads((tmp_path / "alarms_a/failure_models.json").read_text())
    assert set(manifest["networks"]) == {"joint", "score", "error", "direct"} and manifest["vae"]

    r = bundle("evaluate.json")
    doc = json.loads((tmp_path / "report/table1.json").read_text())
    main, gen = doc["tables"]
    methods = ["MSP", "Entropy", "MCDropout", "VAE alarm", "Direct Prediction", "SynthCP-separate", "SynthCP-joint"]
    assert [row["method"] for row in main["rows"]] == methods
    by = {row["method"]: row for row in main["rows"]}
    assert by["MSP"]["mae"] is None and by["VAE alarm"]["aupr_error"] is None
    for m in methods[4:]:
        assert 0 <= by[m]["mae"] <= 100 and 0 <= by[m]["aupr_error"] <= 100 and 0 <= by[m]["auroc"] <= 100
    assert {(row["trained_on"], row["tested_on"]) for row in gen["rows"]} == {("a", "b"), (None, "b")}
    assert [row["method"] for row in gen["rows"]] == methods
    assert "| SynthCP-joint |" in r.stdout  # the Markdown table is printed
    for ext in ("csv", "html", "md"):
        assert (tmp_path / "report" / f"table1.{ext}").is_file()
