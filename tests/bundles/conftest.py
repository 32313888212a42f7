import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PANCREAS_BUNDLE = REPO / "bundles" / "pancreas_synthcp"
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"

# CPU-seconds overrides of the tiny profile: smaller crops, resampling and networks, one epoch.
FAST = {
    "roi_size": [16, 16, 16],
    "pixdim": [4.0, 4.0, 5.0],
    "segmenter#unet_channels": [4, 8, 16],
    "segmenter#max_epochs": 1,
    "segmenter#batch_size": 2,
    "segmenter#num_samples": 1,
    "segmenter#val_interval": 1,
    "num_folds": 2,
    "spade#ngf": 4,
    "spade#num_up": 2,
    "spade#hidden_channels": 8,
    "spade#ndf": 8,
    "spade#num_layers_d": 1,
    "spade#patch_size": [16, 16, 16],
    "spade#iterations": 2,
    "spade#samples_per_volume": 2,
    "spade#queue_length": 4,
    "spade#checkpoint_every": 1,
    "alarms#roi_size": [16, 16, 16],
    "alarms#widen_factor": 0.125,
    "alarms#latent_size": 4,
    "alarms#vae_channels": [4, 8],
    "alarms#comparator_iterations": 2,
    "alarms#vae_iterations": 2,
    "alarms#batch_size": 2,
}

# the 2D scene bundles' SPADE at CPU-seconds size (32x64 images): shared by cityscapes and streethazards tests
SPADE_2D_FAST = {
    "spade#ngf": 4,
    "spade#num_up": 3,
    "spade#hidden_channels": 8,
    "spade#ndf": 4,
    "spade#num_layers_d": 1,
    "spade#iterations": 2,
    "spade#batch_size": 2,
    "spade#checkpoint_every": 1,
}


def bundle_cmd(configs, *, bundle=PANCREAS_BUNDLE, runner=(sys.executable, "-m", "monai.bundle"), **overrides):
    """The documented ``python -m monai.bundle run`` command for ``configs`` with ``--key value`` overrides."""
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [*runner, "run", "--config_file", json.dumps(files), "--meta_file", str(bundle / "configs/metadata.json"),
           "--logging_file", str(bundle / "configs/logging.conf"), "--bundle_root", str(bundle)]  # fmt: skip
    for k, v in overrides.items():
        cmd += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return cmd


def run(cmd, timeout=600, **env):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=REPO)
    assert r.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}"
    return r


@pytest.fixture(scope="session")
def pancreas_roi(tmp_path_factory):
    """Six pancreas-centred 32x32x16 phantom cases + two test cases."""
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    return make_pancreas_dataset(tmp_path_factory.mktemp("bundle_data"), num_cases=6, size=(32, 32, 16), seed=2,
                                 num_test=2, field_of_view_mm=(128, 128, 80), roi_center="pancreas", progress=False)
