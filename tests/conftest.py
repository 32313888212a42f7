import os

import pytest
import torch

# Tests are sized for 2 CPU cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def pancreas_root(tmp_path_factory):
    """A tiny MSD Task07-style phantom shared by the data tests (4 training + 1 test cases, 48x48x32)."""
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    return make_pancreas_dataset(tmp_path_factory.mktemp("pancreas"), num_cases=4, size=(48, 48, 32), seed=3,
                                 progress=False)
