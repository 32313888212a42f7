"""The app class in-process: configuration errors and a server without trained models."""

import importlib.util
import sys
from pathlib import Path

import pytest

from .conftest import monailabel_or_skip

monailabel_or_skip()

APP = Path(__file__).resolve().parents[2] / "apps" / "synthcp_pancreas"


@pytest.fixture(scope="module")
def app_module():
    from monailabel.config import settings

    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False  # no file-watcher thread in the test process
    sys.path.insert(0, str(APP))  # as `monailabel start_server` does: main.py imports lib.infers
    try:
        spec = importlib.util.spec_from_file_location("synthcp_pancreas_main", APP / "main.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(APP))


def test_without_models_the_app_lists_none_and_says_how_to_train(app_module, phantom_images, tmp_path):
    from fastapi import HTTPException

    studies = str(Path(next(iter(phantom_images.values()))).parent)
    app = app_module.SynthCPPancreasApp(str(tmp_path), studies, {"models": "all", "models_dir": str(tmp_path)})
    assert app.info()["models"] == {}
    with pytest.raises(HTTPException) as e:
        app.infer({"model": "synthcp_pancreas", "image": next(iter(phantom_images))})
    assert e.value.status_code == 503 and "make demo" in e.value.detail and "export_models" in e.value.detail


def test_unknown_model_name_in_conf(app_module, tmp_path):
    with pytest.raises(ValueError, match="unknown; this app serves 'synthcp_pancreas'"):
        app_module.SynthCPPancreasApp(str(tmp_path), str(tmp_path), {"models": "spleen"})
