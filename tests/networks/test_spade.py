import copy

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import SPADE

from synthcp3d.networks import SPADEGenerator
from synthcp3d.networks.spade import SPADENorm, SPADEResBlock

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


# --- the optimised forward (SPADENorm / SPADEResBlock / SPADEGenerator) against a straightforward computation ---


def naive_forward(g: SPADEGenerator, seg: torch.Tensor) -> torch.Tensor:
    """The generator as written in its docstring, every SPADE norm through MONAI's own ``SPADE.forward``
    (interpolates the full-resolution label map per norm, two separate instance norms, ``n * (1 + gamma) + beta``)."""

    def block(b, x):
        x_s = b.conv_s(SPADE.forward(b.norm_s, x, seg)) if b.learned_shortcut else x
        dx = b.conv_0(F.leaky_relu(SPADE.forward(b.norm_0, x, seg), 0.2))
        dx = b.conv_1(F.leaky_relu(SPADE.forward(b.norm_1, dx, seg), 0.2))
        return x_s + dx

    x = g.fc(F.interpolate(seg, size=g.seed_shape(seg.shape[2:]), mode="nearest"))
    x = g._up(block(g.head_0, x), "head")
    x = g._up(block(g.middle_0, x), "middle")
    x = block(g.middle_1, x)
    for i, b in enumerate(g.up_blocks):
        x = block(b, g._up(x, f"up{i}"))
    return torch.tanh(g.conv_img(F.leaky_relu(x, 0.2)))


def _grads(model, fn, seg):
    model.zero_grad(set_to_none=True)
    y = fn(seg)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


EQUIV = [
    (2, {"num_up": 5}, (1, 32, 64)),
    (2, {"num_up": 5, "norm": "INSTANCE"}, (2, 32, 64)),
    (3, {"num_up": 3}, (2, 16, 16, 8)),
    (3, {"up_factors": [(2, 2, 1), 2, 2]}, (1, 32, 24, 8)),
]


@pytest.mark.parametrize("dims,kw,shape", EQUIV)
@pytest.mark.parametrize("cl", [False, True], ids=["contiguous", "channels_last"])
def test_optimised_forward_equals_straightforward(dims, kw, shape, cl):
    """Outputs, gradients and batch-norm running stats against the straightforward computation, run contiguous:
    in channels-last the straightforward path itself gets wrong gradients (``F.instance_norm``'s input gradient is
    wrong on CPU for a channels-last grad_output at batch 1, torch 2.13), the optimised one must not."""
    torch.manual_seed(0)
    g = SPADEGenerator(dims, label_nc=3, out_channels=2, **kw, **TINY)
    seg = onehot(3, *shape, ignore=True).contiguous()
    ref, ref_seg = copy.deepcopy(g), seg
    if cl:
        g, seg = g.to(memory_format=torch.channels_last_3d if dims == 3 else torch.channels_last), channels_last(seg)
    # eval / no_grad (the in-place path) and train mode with autograd (batch statistics, running-stat updates)
    with torch.no_grad():
        torch.testing.assert_close(g.eval()(seg), naive_forward(ref.eval(), ref_seg), rtol=1e-4, atol=1e-5)
    g.train(), ref.train()
    y, grads = _grads(g, g, seg)
    y0, grads0 = _grads(ref, lambda s: naive_forward(ref, s), ref_seg)
    torch.testing.assert_close(y, y0, rtol=1e-4, atol=1e-5)
    scale = max(v.abs().max() for v in grads0.values())
    for n, v in grads0.items():  # biases in front of a norm have ~0 gradient: compare against the overall scale
        torch.testing.assert_close(grads[n], v, rtol=1e-3, atol=1e-4 * scale, msg=n)
    for (n, b), b0 in zip(g.named_buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, b0, rtol=1e-4, atol=1e-6, msg=n)


def test_instance_norm_channels_last_grad_bug_is_avoided():
    """The torch bug the optimised SPADE norm sidesteps (if this starts failing, torch fixed it: keep the test for
    the SPADE part). The SPADE norm's gradients do not depend on the grad_output's memory format."""
    torch.manual_seed(0)
    x, go = torch.randn(1, 4, 8, 16), torch.randn(1, 4, 8, 16)

    def grad(fn, fmt):
        xx = x.clone().requires_grad_(True)
        fn(xx).backward(go.contiguous(memory_format=fmt))
        return xx.grad

    bug = (grad(F.instance_norm, torch.contiguous_format) - grad(F.instance_norm, torch.channels_last)).abs().max()
    if bug < 1e-4:
        pytest.skip("this torch computes F.instance_norm's channels-last input gradient correctly")
    norm = SPADENorm(label_nc=3, norm_nc=4, spatial_dims=2, hidden_channels=4, norm="BATCH",
                     norm_params={"affine": False})  # fmt: skip
    seg = onehot(3, 1, 8, 16)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        n = copy.deepcopy(norm)
        n(x, seg).backward(go.contiguous(memory_format=fmt))
        grads.append(n.mlp_shared.conv.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_optimised_forward_bf16_autocast_as_close_to_fp32_as_straightforward():
    torch.manual_seed(0)
    g = SPADEGenerator(2, label_nc=3, num_up=3, **TINY).eval().to(memory_format=torch.channels_last)
    seg = channels_last(onehot(3, 2, 32, 64))
    with torch.no_grad():
        y32 = g(seg)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, y0 = g(seg), naive_forward(g, seg)
    assert y.dtype == y0.dtype == torch.bfloat16
    err, err0 = (y.float() - y32).abs(), (y0.float() - y32).abs()
    assert err.mean() <= 1.25 * err0.mean() and err.max() < 0.2


def test_spade_norm_uses_fast_path_and_equals_monai():
    torch.manual_seed(0)
    norm = SPADENorm(label_nc=3, norm_nc=6, spatial_dims=2, hidden_channels=4, norm="BATCH",
                     norm_params={"affine": False})  # fmt: skip
    assert norm._fused  # MONAI's layout as expected: the fast path is taken, not the fallback
    x, seg = torch.randn(2, 6, 8, 16), onehot(3, 2, 16, 32)  # seg at 2x: interpolated inside
    for train in (False, True):
        norm.train(train)
        a, b = copy.deepcopy(norm), copy.deepcopy(norm)
        with torch.no_grad():
            torch.testing.assert_close(a(x, seg), SPADE.forward(b, x, seg), rtol=1e-4, atol=1e-5)


def test_state_dict_keys_unchanged():
    """Checkpoints of the MONAI-block layout still load: same keys as MONAI's SPADE and the original layout."""
    blk = SPADEResBlock(2, 8, 4, 3, hidden_channels=4)
    conv_keys = {"parametrizations.weight.0._u", "parametrizations.weight.0._v", "parametrizations.weight.original"}
    expected = {f"conv_{c}.{k}" for c in "01s" for k in conv_keys} | {"conv_1.bias"}
    monai = SPADE(label_nc=3, norm_nc=8, spatial_dims=2, hidden_channels=4, norm="BATCH", norm_params={"affine": False})
    assert set(monai.state_dict()) == {
        *(f"mlp_{m}.conv.{p}" for m in ("shared", "gamma", "beta") for p in ("weight", "bias")),
        *(f"param_free_norm.{b}" for b in ("running_mean", "running_var", "num_batches_tracked")),
    }
    expected |= {f"norm_{n}.{k}" for n in "01s" for k in monai.state_dict()}
    assert set(blk.state_dict()) == expected
    g = SPADEGenerator(2, label_nc=3, **TINY)
    top = {"fc", "head_0", "middle_0", "middle_1", "up_blocks", "conv_img"}
    assert {k.split(".")[0] for k in g.state_dict()} == top
    assert len(g.state_dict()) == 227
    assert all(f"up_blocks.{i}.norm_s.mlp_gamma.conv.weight" in g.state_dict() for i in range(4))
