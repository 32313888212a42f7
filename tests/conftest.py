import os

import pytest
import torch

from synthcp3d.engines.precision import native_bf16

# Tests are sized for 2 CPU cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    config.addinivalue_line("markers", "native_bf16: compares bf16 with fp32; runs only where the CPU has native bf16")


def pytest_collection_modifyitems(config, items):
    """Skip ``native_bf16`` tests where bf16 is emulated (14-150x slower than fp32 there, and not what runs)."""
    native, why = native_bf16("cpu")
    if native:
        return
    skip = pytest.mark.skip(reason=f"bf16 is emulated on this CPU ({why}); `auto` runs fp32 here")
    for item in items:
        if "native_bf16" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pancreas_root(tmp_path_factory):
    """A tiny MSD Task07-style phantom shared by the data tests (4 training + 1 test cases, 48x48x32)."""
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    return make_pancreas_dataset(tmp_path_factory.mktemp("pancreas"), num_cases=4, size=(48, 48, 32), seed=3,
                                 progress=False)
