import numpy as np
import pytest
import torch

from synthcp3d.data.labels import one_hot


def test_one_hot_matches_numpy_and_dims():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(2, 5, 6, 3))
    want = np.eye(4, dtype=np.float32)[lab]  # (..., C)
    batched = one_hot(torch.as_tensor(lab), 4, dim=1)
    assert batched.shape == (2, 4, 5, 6, 3) and batched.dtype == torch.float32
    np.testing.assert_array_equal(batched.numpy(), np.moveaxis(want, -1, 1))
    np.testing.assert_array_equal(one_hot(torch.as_tensor(lab[0]), 4).numpy(), np.moveaxis(want[0], -1, 0))


def test_one_hot_ignore_and_errors():
    lab = torch.tensor([[0, 255], [3, 1]])
    oh = one_hot(lab, 4, ignore_index=255)
    assert oh[:, 0, 1].sum() == 0 and oh.sum() == 3 and oh[3, 1, 0] == 1
    with pytest.raises(ValueError, match=r"outside \[0, 3\].*ignore_index=255"):
        one_hot(torch.tensor([4, 255]), 4, ignore_index=255)
    with pytest.raises(ValueError, match="outside"):
        one_hot(torch.tensor([-1, 0]), 4)
