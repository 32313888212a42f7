"""Fixtures of the MONAI Label app tests: a models folder of untrained tiny-profile networks and a studies
folder of small phantom CT volumes. The server tests need the ``[label]`` extra (``make test-label``)."""

import importlib.util
import os
import shutil

import pytest

LABEL_ENV = "SYNTHCP3D_LABEL_TESTS"


def monailabel_or_skip() -> None:
    """Skip the calling test module without MONAI Label; with ``SYNTHCP3D_LABEL_TESTS=1`` (``make test-label``,
    CI) fail instead, so the server tests cannot silently not run."""
    if importlib.util.find_spec("monailabel") is not None:
        return
    msg = "monailabel is not installed: `make test-label` (installs the [label] extra into .venv-label)"
    if os.environ.get(LABEL_ENV) == "1":
        pytest.fail(f"{LABEL_ENV}=1 but {msg}", pytrace=False)
    pytest.skip(msg, allow_module_level=True)


@pytest.fixture(scope="session")
def label_models(tmp_path_factory):
    """Untrained tiny-profile networks in the models-folder layout (numbers meaningless, shapes real)."""
    from synthcp3d.monailabel.service import write_untrained_models

    return write_untrained_models(tmp_path_factory.mktemp("label") / "models", profile="tiny")


@pytest.fixture(scope="session")
def phantom_images(tmp_path_factory):
    """Three unlabelled phantom CT volumes of 24 x 24 x 16 voxels (64 x 64 x 80 mm: one 32^3 window at the
    tiny profile's spacing), copied into a studies folder; ``{image id: path}``."""
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    base = tmp_path_factory.mktemp("label_data")
    root = make_pancreas_dataset(base / "data", num_cases=1, num_test=3, size=(24, 24, 16), seed=7,
                                 field_of_view_mm=(64, 64, 80), roi_center="pancreas", progress=False)  # fmt: skip
    studies = base / "studies"
    studies.mkdir()
    images = {}
    for src in sorted((root / "imagesTs").glob("*.nii.gz")):
        images[src.name.removesuffix(".nii.gz")] = shutil.copy(src, studies / src.name)
    return images
