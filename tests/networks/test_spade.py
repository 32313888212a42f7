import pytest
import torch
import torch.nn.functional as F

from synthcp3d.networks import SPADEGenerator

from . import assert_all_grads, channels_last, state_dict_roundtrip

TINY = {"ngf": 4, "hidden_channels": 8}


def onehot(label_nc: int, *shape: int, ignore: bool = False) -> torch.Tensor:
    lab = torch.randint(0, label_nc, shape)
    seg = F.one_hot(lab, label_nc).movedim(-1, 1).float()
    if ignore:
        seg[:, :, shape[1] // 2 : shape[1] // 2 + 2] = 0  # ignore voxels: all channels zero
    return seg


CASES = [
    (2, {"num_up": 5}, (2, 32, 64)),
    (3, {"num_up": 3}, (2, 16, 16, 8)),
    (3, {"up_factors": [(2, 2, 1), 2, 2]}, (1, 32, 24, 8)),  # anisotropic, non-cubic
]


@pytest.mark.parametrize("dims,kw,shape", CASES)
def test_forward_backward_shapes_and_grads(dims, kw, shape):
    torch.manual_seed(0)
    g = SPADEGenerator(dims, label_nc=3, out_channels=2, **kw, **TINY)
    seg = onehot(3, *shape, ignore=True)
    y = g(seg)
    assert y.shape == (shape[0], 2, *shape[1:])
    assert y.abs().max() <= 1
    y.square().mean().backward()
    assert_all_grads(g)


def test_layout_and_upsampling_positions():
    g = SPADEGenerator(2, label_nc=3, **TINY)
    assert g.total_factor == (32, 32)
    assert g.seed_shape((256, 512)) == (8, 16)
    assert len(g.up_blocks) == 4 and g.fc.out_channels == 16 * 4 and g.conv_img.in_channels == 4
    assert SPADEGenerator(2, label_nc=3, num_up=6, **TINY).seed_shape((256, 512)) == (4, 8)
    g3 = SPADEGenerator(3, label_nc=2, up_factors=[(2, 2, 1), (2, 2, 1), 2, 2, 2], **TINY)
    assert g3.seed_shape((96, 96, 32)) == (3, 3, 4)


def test_invalid_inputs_raise():
    g = SPADEGenerator(3, label_nc=3, num_up=3, **TINY)
    with pytest.raises(ValueError, match="multiple of the total upsampling factor"):
        g(onehot(3, 1, 16, 16, 12))
    with pytest.raises(ValueError, match="more than one voxel"):
        g(onehot(3, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="one-hot label map"):
        g(onehot(4, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="1 or 2 per axis"):
        SPADEGenerator(3, label_nc=3, up_factors=[(2, 2)], **TINY)
    with pytest.raises(ValueError):
        SPADEGenerator(3, label_nc=3, num_up=7, **TINY)


@pytest.mark.parametrize("kw", [{"spectral_norm": False}, {"norm": "INSTANCE"}, {"num_up": 6}])
def test_options(kw):
    g = SPADEGenerator(2, label_nc=3, **{**TINY, **kw})
    y = g(onehot(3, 2, 64, 128))
    y.mean().backward()
    assert y.shape == (2, 1, 64, 128)
    assert_all_grads(g)
    sn = any("parametrizations" in n for n, _ in g.named_parameters())
    assert sn == kw.get("spectral_norm", True)


def test_determinism_and_state_dict_roundtrip():
    seg = onehot(3, 1, 16, 16, 8)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        g = SPADEGenerator(3, label_nc=3, num_up=3, **TINY).eval()
        with torch.no_grad():
            outs.append(g(seg))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(4)
    fresh = SPADEGenerator(3, label_nc=3, num_up=3, **TINY)
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(seg), outs[0])
        assert torch.equal(state_dict_roundtrip(g, fresh)(seg), outs[0])


@pytest.mark.parametrize("dims,shape", [(2, (1, 32, 64)), (3, (1, 16, 16, 8))])
def test_bf16_autocast_channels_last(dims, shape):
    torch.manual_seed(0)
    g = SPADEGenerator(dims, label_nc=3, num_up=3, **TINY)
    seg = channels_last(onehot(3, *shape))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g(seg)
    assert y.dtype == torch.bfloat16 and y.shape == (1, 1, *shape[1:])
    assert torch.isfinite(y.float()).all()
    y.float().mean().backward()
    assert_all_grads(g)
