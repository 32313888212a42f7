import pytest
import torch

from synthcp3d.losses import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from synthcp3d.networks import ConditionalDiscriminator

from . import assert_all_grads, channels_last, state_dict_roundtrip


@pytest.mark.parametrize(
    "dims,shape,num_layers_d", [(2, (2, 32, 64), 2), (3, (2, 32, 32, 16), 1), (3, (1, 64, 64, 32), 2)]
)
def test_outputs_features_and_grads(dims, shape, num_layers_d):
    torch.manual_seed(0)
    d = ConditionalDiscriminator(dims, label_nc=3, image_channels=1, channels=4, num_d=2, num_layers_d=num_layers_d)
    seg, img = torch.rand(shape[0], 3, *shape[1:]), torch.rand(shape[0], 1, *shape[1:])
    outs, feats = d(seg, img)
    assert len(outs) == 2 and len(feats) == 2
    # scale i has num_layers_d * (i + 1) layers: that many normalised maps plus the initial conv
    assert [len(f) for f in feats] == [num_layers_d + 1, 2 * num_layers_d + 1]
    assert all(o.shape[:2] == (shape[0], 1) and o.ndim == dims + 2 for o in outs)
    assert outs[1].shape[2:] == d.layer_shapes(shape[1:], 2 * num_layers_d)[-1]
    loss = discriminator_hinge_loss(outs, [o.detach() - 1 for o in outs]) + feature_matching_loss(feats, feats)
    loss.backward()
    assert_all_grads(d)


def test_condition_is_used():
    torch.manual_seed(0)
    d = ConditionalDiscriminator(2, label_nc=3, channels=4, num_d=1, num_layers_d=2).eval()
    img = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a = d(torch.zeros(1, 3, 32, 32), img)[0][0]
        b = d(torch.ones(1, 3, 32, 32), img)[0][0]
    assert not torch.allclose(a, b)


def test_too_small_input_raises_with_hint():
    d = ConditionalDiscriminator(3, label_nc=3, channels=4, num_d=2, num_layers_d=2)
    with pytest.raises(ValueError, match=r"scale 1 .*num_layers_d <= 1"):
        d(torch.rand(2, 3, 32, 32, 16), torch.rand(2, 1, 32, 32, 16))
    with pytest.raises(ValueError, match="differ in size"):
        d(torch.rand(2, 3, 32, 32, 16), torch.rand(2, 1, 32, 32, 8))


def test_bf16_channels_last_determinism_roundtrip():
    seg, img = channels_last(torch.rand(1, 3, 32, 32, 16)), channels_last(torch.rand(1, 1, 32, 32, 16))
    res = []
    for _ in range(2):
        torch.manual_seed(1)
        d = ConditionalDiscriminator(3, label_nc=3, channels=4, num_d=2, num_layers_d=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs, _ = d(seg, img)
        assert outs[0].dtype == torch.bfloat16
        generator_hinge_loss(outs).backward()
        assert_all_grads(d)
        with torch.no_grad():
            res.append(d.eval()(seg, img)[0][1])
    assert torch.equal(res[0], res[1])
    fresh = ConditionalDiscriminator(3, label_nc=3, channels=4, num_d=2, num_layers_d=1)
    with torch.no_grad():
        assert torch.equal(state_dict_roundtrip(d, fresh)(seg, img)[0][1], res[0])


@pytest.mark.parametrize("norm", ["BATCH", None])
def test_norm_options(norm):
    torch.manual_seed(0)
    d = ConditionalDiscriminator(2, label_nc=2, channels=4, num_d=1, num_layers_d=3, norm=norm)
    # 16x16 -> the last layer has 1x1 outputs: allowed only without a norm layer
    seg, img = torch.rand(2, 2, 16, 16), torch.rand(2, 1, 16, 16)
    if norm is None:
        outs, _ = d(seg, img)
        assert outs[0].shape == (2, 1, 1, 1)
        generator_hinge_loss(outs).backward()
        assert_all_grads(d)
    else:
        with pytest.raises(ValueError, match="too small"):
            d(seg, img)
        assert d(torch.rand(2, 2, 32, 32), torch.rand(2, 1, 32, 32))[0][0].shape == (2, 1, 3, 3)
