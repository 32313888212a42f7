"""`--amp_dtype` from `python -m monai.bundle run`: strings work, a bad value fails before any data is read."""

import subprocess
import sys

import pytest

from .conftest import PANCREAS_BUNDLE, REPO

BUNDLES = ["pancreas_synthcp", "cityscapes_synthcp", "streethazards_synthcp"]


def _run(bundle: str, config: str, *args: str) -> subprocess.CompletedProcess:
    root = REPO / "bundles" / bundle
    files = f"['configs/common.json','configs/profiles/tiny.json','configs/{config}']"
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", files,
                           "--dataset_dir", "/nonexistent/dataset", *args],
                          cwd=root, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("bundle, config", [("pancreas_synthcp", "crossval.json"), ("cityscapes_synthcp",
                                                                                     "crossval.json"),
                                            ("streethazards_synthcp", "train_segmenter.json")])  # fmt: skip
def test_bad_amp_dtype_fails_before_data_is_read(bundle, config):
    r = _run(bundle, config, "--amp_dtype", "nonsense")
    assert r.returncode != 0
    assert "amp_dtype must be one of 'auto', 'float32', 'fp32', 'bfloat16', 'bf16', got 'nonsense'" in r.stderr
    assert "nonexistent" not in r.stderr  # the dataset was never touched


@pytest.mark.parametrize("value, name", [("float32", "float32"), ("fp32", "float32"), ("auto", None)])
def test_amp_dtype_strings_resolve(value, name):
    from monai.bundle import ConfigParser

    from synthcp3d.engines.precision import resolve_precision

    parser = ConfigParser()
    parser.read_config([str(PANCREAS_BUNDLE / "configs" / f) for f in ("common.json", "profiles/tiny.json")])
    parser["amp_dtype"] = value
    p = parser.get_parsed_content("precision")
    assert p.name == (name or resolve_precision("auto").name)
