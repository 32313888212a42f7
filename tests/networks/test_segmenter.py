import pytest
import torch

from synthcp3d.networks import Segmenter

from . import assert_all_grads, channels_last, state_dict_roundtrip

UNET = {"backbone": "unet", "feature_channels": 4, "unet_channels": (4, 8, 16)}


@pytest.mark.parametrize(
    "dims,kw,shape",
    [
        (3, {"feature_channels": 8}, (2, 32, 32, 32)),  # MONAI AHNet, 3D
        (2, {"feature_channels": 8}, (2, 32, 64)),  # MONAI AHNet, 2D
        (3, UNET, (2, 16, 16, 8)),
        (2, UNET, (2, 32, 64)),
    ],
)
def test_logits_features_and_grads(dims, kw, shape):
    torch.manual_seed(0)
    m = Segmenter(dims, in_channels=1, out_channels=3, **kw)
    x = torch.rand(shape[0], 1, *shape[1:])
    logits, feats = m.forward_features(x)
    assert logits.shape == (shape[0], 3, *shape[1:])
    assert feats.shape == (shape[0], kw["feature_channels"], *shape[1:])
    assert (feats >= 0).all()  # post-ReLU features (eq. 9)
    (logits.square().mean() + feats.mean()).backward()
    assert_all_grads(m)


def test_invalid_sizes_and_options_raise():
    with pytest.raises(ValueError, match="multiple of"):
        Segmenter(2, **UNET)(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="backbone"):
        Segmenter(3, backbone="vnet")
    with pytest.raises(ValueError, match="dropout > 0"):
        Segmenter(2, dropout=0.0, **UNET).mc_predict(torch.rand(1, 1, 16, 16), 3)


def test_eval_is_deterministic_and_mc_dropout_is_not():
    torch.manual_seed(0)
    m = Segmenter(3, out_channels=3, dropout=0.3, **UNET)
    m.train()
    m(torch.rand(2, 1, 16, 16, 16))  # populate BatchNorm running stats
    m.eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    mean, var = m.mc_predict(x, n=4)
    assert mean.shape == var.shape == (1, 3, 16, 16, 16)
    assert torch.allclose(mean.sum(1), torch.ones(1, 16, 16, 16), atol=1e-5)
    assert var.max() > 0
    assert not m.training and not any(mod.training for mod in m.modules())  # mode restored
    m.train()
    m.mc_predict(x, n=2)
    assert all(mod.training for mod in m.modules())


def test_ahnet_2d_dropout_mc_bf16_and_size_check():
    torch.manual_seed(0)
    m = Segmenter(2, out_channels=2, feature_channels=4, dropout=0.5)  # one AHNet: ~25 M parameters
    drops = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Dropout)]
    assert "head_dropout" in drops and "body.layer4.1" in drops
    with pytest.raises(ValueError, match=r"multiple of \(32, 32\)"):
        m(torch.rand(1, 1, 48, 32))
    x = channels_last(torch.rand(2, 1, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = m.forward_features(x)
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 2, 32, 32) and feats.shape == (2, 4, 32, 32)
    logits.float().mean().backward()
    assert_all_grads(m)
    mean, var = m.mc_predict(x, n=2)
    assert var.max() > 0 and m.training


def test_bf16_channels_last_and_roundtrip_3d():
    x = channels_last(torch.rand(2, 1, 16, 16, 8))
    torch.manual_seed(0)
    m = Segmenter(3, out_channels=2, **UNET)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = m.forward_features(x)
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 2, 16, 16, 8)
    logits.float().mean().backward()
    assert_all_grads(m)
    m.eval()
    with torch.no_grad():
        ref = m(x)
        fresh = Segmenter(3, out_channels=2, **UNET)
        assert not torch.equal(fresh.eval()(x), ref)
        assert torch.equal(state_dict_roundtrip(m, fresh)(x), ref)


def test_ahnet_divisibility_follows_psp_block_num():
    m = Segmenter(2, out_channels=2, feature_channels=4, psp_block_num=3)
    with pytest.raises(ValueError, match=r"multiple of \(64, 32\)"):
        m(torch.rand(1, 1, 32, 32))
