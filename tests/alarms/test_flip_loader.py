import torch

from synthcp3d.alarms.training import flip_loader


def _flips(items, **kw):
    loader = flip_loader(items, ["x"], batch_size=1, flip_prob=1.0, **kw)
    return next(iter(loader))["x"][0]


def test_flip_axes_follow_the_tensor_ndim():
    x2 = torch.arange(6.0).view(1, 2, 3)
    assert torch.equal(_flips([{"x": x2}]), x2.flip(1, 2))  # 2D: both spatial axes, not a third
    x3 = torch.arange(24.0).view(1, 2, 3, 4)
    assert torch.equal(_flips([{"x": x3}]), x3.flip(1, 2, 3))
    assert torch.equal(_flips([{"x": x2}], flip_axes=[1]), x2.flip(2))  # left-right only
