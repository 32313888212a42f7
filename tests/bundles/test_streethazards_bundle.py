"""bundles/streethazards_synthcp: metadata, network formats, and the documented commands end to end."""

import csv
import json
import sys

import pytest

from .conftest import REPO, SCHEMA, SPADE_2D_FAST, bundle_cmd, run

BUNDLE = REPO / "bundles" / "streethazards_synthcp"
MONAI = (sys.executable, "-m", "monai.bundle")
META = str(BUNDLE / "configs/metadata.json")

# CPU-seconds overrides of the tiny profile: 32x64 scenes, tiny networks, one epoch / two SPADE iterations.
FAST = {
    "image_size": [32, 64],
    "segmenter#unet_channels": [4, 8, 16],
    "segmenter#feature_channels": 8,
    "segmenter#max_epochs": 1,
    "segmenter#batch_size": 2,
    "segmenter#val_interval": 1,
    "anomaly#num_examples": 2,
    **SPADE_2D_FAST,
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from synthcp3d.data.phantom_scenes import make_scene_dataset

    return make_scene_dataset(tmp_path_factory.mktemp("sh_bundle"), style="streethazards", num_images=3,
                              size=(32, 64), seed=4)  # fmt: skip


@pytest.mark.skipif(not SCHEMA.is_file(), reason="MONAI's metadata schema is kept in ../shared/monai")
def test_verify_metadata():
    r = run([*MONAI, "verify_metadata", "--meta_file", META, "--filepath", str(SCHEMA)])
    assert "metadata is verified with no error" in r.stdout + r.stderr


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_verify_segmenter_in_out(profile):
    configs = [str(BUNDLE / "configs" / c) for c in ("common.json", f"profiles/{profile}.json")]
    r = run([*MONAI, "verify_net_in_out", "network_def", "--meta_file", META, "--config_file", json.dumps(configs)])
    assert "verified with no error" in r.stdout + r.stderr


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_verify_generator_in_out(profile):
    """The generator's format is ``network_data_format_spade`` (verify_net_in_out checks one section); n=2: the
    paper generator's 6 upsamplings need a seed of more than one pixel."""
    from monai.bundle import verify_net_in_out

    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    configs = [str(BUNDLE / "configs" / c) for c in ("common.json", f"profiles/{profile}.json")]
    verify_net_in_out(net_id="spade_def", meta_file=META, config_file=configs, n=2,
                      **{"_meta_#network_data_format": meta["network_data_format_spade"]})  # fmt: skip


def test_pipeline_configs_in_order(scenes, tmp_path):
    """train_segmenter -> train_spade -> evaluate, each by its documented ``monai.bundle run`` command."""
    base = ["common.json", "profiles/tiny.json"]
    common = dict(dataset_dir=str(scenes), output_dir=str(tmp_path), **FAST)
    with pytest.raises(AssertionError, match="run the train_segmenter config first"):
        run(bundle_cmd([*base, "evaluate.json"], bundle=BUNDLE, **common))  # a clear error before training
    run(bundle_cmd([*base, "train_segmenter.json"], bundle=BUNDLE, **common))
    assert (tmp_path / "segmenter/models/model.pt").is_file()
    run(bundle_cmd([*base, "train_spade.json"], bundle=BUNDLE, **common))
    assert (tmp_path / "spade/models/generator.pt").is_file()
    run(bundle_cmd([*base, "evaluate.json"], bundle=BUNDLE, **common))

    report = tmp_path / "report"
    rows = list(csv.DictReader((report / "anomaly.csv").open()))
    t3 = [r for r in rows if r["table"] == "table3"]
    assert [r["method"] for r in t3] == ["MSP", "MaxLogit", "SynthCP (t=0.999)", "SynthCP, no post-processing"]
    for r in t3:
        assert 0 <= float(r["fpr95"]) <= 100 and 0 <= float(r["auroc"]) <= 100 and 0 <= float(r["aupr"]) <= 100
    t4 = [r for r in rows if r["table"] == "table4"]
    assert [r["metric"] for r in t4] == ["FPR95 ↓", "AUROC ↑", "AUPR ↑"]
    assert all(r[f"t={t}"] for r in t4 for t in ("0.8", "0.9", "0.99", "0.999", "1"))
    html = (report / "anomaly.html").read_text()
    assert "tiny profile" in html and html.count("data:image/png;base64,") == 1
    metrics = json.loads((report / "anomaly_metrics.json").read_text())
    assert metrics["n_images"] + metrics["n_skipped"] == 3 and metrics["n_images"] >= 1
