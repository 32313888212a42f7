import pytest
import torch

from synthcp3d.losses import VAELoss
from synthcp3d.networks import ShapeVAE

from . import assert_all_grads, channels_last, state_dict_roundtrip

TINY = {"latent_size": 8, "channels": (4, 8, 16)}
# MONAI's VarAutoEncoder puts a conv bias right before each InstanceNorm: mathematically no gradient.
REDUNDANT = ("vae.encode.", "vae.decode.decode_0.", "vae.decode.decode_1.")


def assert_grads(v):
    assert_all_grads(
        v, skip=tuple(n for n, _ in v.named_parameters() if n.endswith("conv.bias") and n.startswith(REDUNDANT))
    )


CASES = [(2, (32, 64), 3), (3, (16, 16, 8), 1)]


def masks(shape, channels, batch=2):
    if channels == 1:
        return (torch.rand(batch, 1, *shape) > 0.7).float()
    lab = torch.randint(0, channels, (batch, *shape))
    return torch.nn.functional.one_hot(lab, channels).movedim(-1, 1).float()


@pytest.mark.parametrize("dims,shape,ch", CASES)
def test_forward_backward(dims, shape, ch):
    torch.manual_seed(0)
    v = ShapeVAE(dims, shape, ch, **TINY)
    m = masks(shape, ch)
    recon, mu, logvar, z = v(m)
    assert recon.shape == m.shape and mu.shape == logvar.shape == z.shape == (2, 8)
    assert recon.min() < 0  # logits, not sigmoid
    VAELoss(beta=0.5)(recon, m, mu, logvar)["loss"].backward()
    assert_grads(v)


@pytest.mark.parametrize("dims,shape,ch", CASES)
def test_reconstruction_loss_feature(dims, shape, ch):
    torch.manual_seed(0)
    v = ShapeVAE(dims, shape, ch, **TINY).train()
    m = masks(shape, ch, batch=3)
    f1, f2 = v.reconstruction_loss(m), v.reconstruction_loss(m)
    assert f1.shape == (3,) and ((f1 >= 0) & (f1 <= 1)).all()
    assert torch.equal(f1, f2)  # posterior mean in eval mode: deterministic
    assert v.training  # mode restored


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="divisible"):
        ShapeVAE(3, (20, 16, 16), 1, **TINY)
    v = ShapeVAE(3, (16, 16, 8), 2, **TINY)
    with pytest.raises(ValueError, match="resample masks"):
        v(torch.rand(1, 2, 16, 16, 16))


def test_bf16_channels_last_determinism_roundtrip():
    m = channels_last(masks((16, 16, 8), 2))
    res = []
    for _ in range(2):
        torch.manual_seed(2)
        v = ShapeVAE(3, (16, 16, 8), 2, **TINY)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recon, mu, logvar, _ = v(m)
        assert recon.dtype == torch.bfloat16
        VAELoss()(recon, m, mu, logvar)["loss"].backward()
        assert_grads(v)
        res.append(v.reconstruction_loss(m))
    assert torch.equal(res[0], res[1])
    fresh = state_dict_roundtrip(v, ShapeVAE(3, (16, 16, 8), 2, **TINY))
    assert torch.equal(fresh.reconstruction_loss(m), res[0])


def test_include_background_option():
    torch.manual_seed(0)
    m = masks((16, 16, 8), 3)
    kw = {"spatial_dims": 3, "in_shape": (16, 16, 8), "in_channels": 3, **TINY}
    torch.manual_seed(1)
    fg = ShapeVAE(**kw)
    torch.manual_seed(1)
    allc = ShapeVAE(include_background=True, **kw)
    assert not torch.allclose(fg.reconstruction_loss(m), allc.reconstruction_loss(m))
