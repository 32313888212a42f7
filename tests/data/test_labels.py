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


@pytest.mark.parametrize("shape,dims", [((2, 3, 9, 11, 7), 3), ((2, 10, 13), 2), ((6, 5, 4), 3)])
@pytest.mark.parametrize("radius", [1, 2])
def test_box_dilate_matches_scipy_and_max_pool(shape, dims, radius):
    from scipy import ndimage

    from synthcp3d.data.labels import box_dilate

    x = torch.rand(shape, generator=torch.Generator().manual_seed(radius))
    size = [1] * (len(shape) - dims) + [2 * radius + 1] * dims
    ref = ndimage.maximum_filter(x.numpy(), size=size, mode="constant", cval=-np.inf)
    np.testing.assert_array_equal(box_dilate(x, radius, dims).numpy(), ref)
    if len(shape) == dims + 2:
        pool = torch.nn.functional.max_pool3d if dims == 3 else torch.nn.functional.max_pool2d
        assert torch.equal(box_dilate(x, radius, dims), pool(x, 2 * radius + 1, stride=1, padding=radius))
    mask = x > 0.97
    out = box_dilate(mask, radius, dims)
    assert out.dtype == torch.bool
    np.testing.assert_array_equal(out.numpy(), ndimage.binary_dilation(mask.numpy(), np.ones(size, bool)))
    assert torch.equal(box_dilate(x, 0, dims), x)
