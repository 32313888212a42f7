import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthcp3d.losses import ComparatorLoss
from synthcp3d.networks import DirectPredictor, SiameseComparator

from . import assert_all_grads, channels_last, state_dict_roundtrip

TINY = {"widen_factor": 0.125, "fuse_channels": 4, "hidden": 8, "proj_channels": 2}
SHAPES = {2: (2, 32, 64), 3: (2, 32, 32, 16)}


def inputs(dims: int, num_classes: int = 3):
    b, *s = SHAPES[dims]
    return torch.rand(b, 1, *s), torch.rand(b, 1, *s), torch.softmax(torch.randn(b, num_classes, *s), 1)


def train_step(model, out, dims):
    b, *s = SHAPES[dims]
    true = torch.rand(b, 3)
    true[0, 1] = float("nan")
    loss = ComparatorLoss()(out, true, (torch.rand(b, 1, *s) > 0.5).float(), torch.rand(b, 1, *s) > 0.8)
    loss["loss"].backward()
    assert_all_grads(model)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("shared", [True, False])
def test_siamese_shapes_grads_and_weight_sharing(dims, shared):
    torch.manual_seed(0)
    m = SiameseComparator(dims, in_channels=1, num_classes=3, shared_weights=shared, **TINY)
    x, xs, seg = inputs(dims)
    out = m(x, xs, seg)
    assert set(out) == {"scores", "error_logits"}
    assert out["scores"].shape == (2, 3) and ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
    assert out["error_logits"].shape == (2, 1, *SHAPES[dims][1:])
    assert len(m.encoders) == (1 if shared else 2)
    train_step(m, out, dims)


@pytest.mark.parametrize("score_head,error_head", [(True, False), (False, True)])
def test_heads_can_be_switched_off(score_head, error_head):
    torch.manual_seed(0)
    m = SiameseComparator(2, 1, 3, score_head=score_head, error_head=error_head, **TINY)
    out = m(*inputs(2))
    assert ("scores" in out) == score_head and ("error_logits" in out) == error_head
    train_step(m, out, 2)
    with pytest.raises(ValueError, match="at least one"):
        SiameseComparator(2, 1, 3, score_head=False, error_head=False)


def test_synthesised_image_changes_the_prediction():
    torch.manual_seed(0)
    m = SiameseComparator(2, 1, 3, **TINY).eval()
    x, xs, seg = inputs(2)
    with torch.no_grad():
        assert not torch.allclose(m(x, xs, seg)["scores"], m(x, x, seg)["scores"])


@pytest.mark.parametrize("dims", [2, 3])
def test_direct_predictor(dims):
    torch.manual_seed(0)
    m = DirectPredictor(dims, 1, 3, **TINY)
    x, _, seg = inputs(dims)
    out = m(x, seg)
    assert out["scores"].shape == (2, 3) and out["error_logits"].shape == (2, 1, *SHAPES[dims][1:])
    train_step(m, out, dims)
    siamese = SiameseComparator(dims, 1, 3, shared_weights=True, **TINY)
    # same encoder; the siamese heads see 3x the channels (f(x), f(x̂), |f(x)-f(x̂)|)
    assert sum(p.numel() for p in m.encoders.parameters()) == sum(p.numel() for p in siamese.encoders.parameters())


def test_bad_inputs_raise():
    m = SiameseComparator(2, 1, 3, **TINY)
    x, xs, seg = inputs(2)
    with pytest.raises(ValueError, match="seg must be"):
        m(x, xs, seg[:, :2])
    with pytest.raises(ValueError, match="does not match"):
        m(x, xs[..., :32], seg)


@pytest.mark.parametrize("dims", [2, 3])
def test_bf16_channels_last_determinism_roundtrip(dims):
    x, xs, seg = (channels_last(t) for t in inputs(dims))
    res = []
    for _ in range(2):
        torch.manual_seed(5)
        m = SiameseComparator(dims, 1, 3, shared_weights=False, **TINY)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x, xs, seg)
        assert out["error_logits"].dtype == torch.bfloat16
        (out["scores"].float().sum() + out["error_logits"].float().mean()).backward()
        assert_all_grads(m)
        with torch.no_grad():
            res.append(m.eval()(x, xs, seg))
    assert torch.equal(res[0]["scores"], res[1]["scores"])
    assert torch.equal(res[0]["error_logits"], res[1]["error_logits"])
    with torch.no_grad():
        again = state_dict_roundtrip(m, SiameseComparator(dims, 1, 3, shared_weights=False, **TINY))(x, xs, seg)
    assert torch.equal(again["scores"], res[0]["scores"])


@pytest.mark.parametrize("dims", [2, 3])
def test_class_pooled_matches_a_hand_computation(dims):
    from synthcp3d.networks.comparator import class_pooled

    torch.manual_seed(0)
    size = (8,) * dims
    seg = torch.softmax(torch.randn(2, 3, *size), dim=1)
    f = torch.randn(2, 5, *(4,) * dims)
    out = class_pooled([f], seg)
    assert out.shape == (2, 3, 5 + 1 + 3)
    # weights: the mean of seg over each 2^d block (the level is half the input size)
    w = seg.reshape(2, 3, *[v for _ in range(dims) for v in (4, 2)])
    w = w.mean(dim=tuple(range(3, 3 + 2 * dims, 2)))
    for b in range(2):
        for c in range(3):
            want = (w[b, c][None] * f[b]).flatten(1).sum(1) / (w[b, c].sum() + 1e-3)
            torch.testing.assert_close(out[b, c, :5], want, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out[b, c, 5], seg[b, c].mean())
    torch.testing.assert_close(out[0, :, 6:], torch.eye(3))


@pytest.mark.parametrize("dims", [2, 3])
def test_class_pooling_heads(dims):
    size = (32,) * dims
    torch.manual_seed(0)
    seg = F.one_hot(torch.randint(0, 3, (2, *size)), 3).movedim(-1, 1).float()
    for net, args in ((SiameseComparator(dims, 1, 3, widen_factor=0.125, score_pooling="class"), 2),
                      (DirectPredictor(dims, 1, 3, widen_factor=0.125, score_pooling="class"), 1)):  # fmt: skip
        out = net(*[torch.rand(2, 1, *size) for _ in range(args)], seg)
        assert out["scores"].shape == (2, 3) and ((out["scores"] > 0) & (out["scores"] < 1)).all()
        assert out["error_logits"].shape == (2, 1, *size)
        out["scores"].sum().backward()
        assert net.encoders[0].conv1.weight.grad is not None
    with pytest.raises(ValueError, match="score_pooling"):
        SiameseComparator(dims, 1, 3, score_pooling="max")


@pytest.mark.parametrize("dims", [2, 3])
def test_region_stats_against_scipy(dims):
    from scipy import ndimage

    from synthcp3d.networks.comparator import region_stats

    rng = np.random.default_rng(0)
    shape = (9, 10, 7)[:dims]
    labels = rng.integers(0, 3, size=(2, *shape))
    seg = torch.nn.functional.one_hot(torch.as_tensor(labels), 3).movedim(-1, 1).float()
    chans = torch.as_tensor(rng.normal(size=(2, 2, *shape)), dtype=torch.float32)
    out = region_stats(chans, seg, shell=1)
    assert out.shape == (2, 3, 4 + 3 * 4)
    for b in range(2):
        for c in range(3):
            m = labels[b] == c
            ring = ndimage.binary_dilation(m, structure=np.ones((3,) * dims)) & ~m
            want = [chans[b, k].numpy()[m].sum() / (m.sum() + 1e-3) for k in range(2)]
            want += [chans[b, k].numpy()[ring].sum() / (ring.sum() + 1e-3) for k in range(2)]
            np.testing.assert_allclose(out[b, c, :4].numpy(), want, rtol=1e-4, atol=1e-5)
            # the context block is the same table for every class
            np.testing.assert_allclose(out[b, c, 4 + 4 * c : 8 + 4 * c].numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [SiameseComparator, DirectPredictor])
def test_region_stats_head_sees_the_residual(cls):
    torch.manual_seed(0)
    net = cls(3, 1, 3, widen_factor=0.125, fuse_channels=8, hidden=16, score_pooling="class", region_stats=True)
    assert net.stat_channels == (3 if cls is SiameseComparator else 1)
    seg = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 16, 16, 16)), 3).movedim(-1, 1).float()
    x = torch.rand(2, 1, 16, 16, 16)
    args = (x, x.clone(), seg) if cls is SiameseComparator else (x, seg)
    out = net(*args)["scores"]
    assert out.shape == (2, 3) and ((out > 0) & (out < 1)).all()


def _ridge_samples(n: int, dims: int, seed: int = 0) -> list[dict]:
    """Toy crops: an organ box with a tumour whose size sets the target, a synth that misses the tumour."""
    g = torch.Generator().manual_seed(seed)
    shape = (12, 12, 8)[:dims] if dims == 3 else (16, 16)
    out = []
    for i in range(n):
        lab = torch.zeros(shape, dtype=torch.long)
        lab[(slice(2, -2),) * dims] = 1
        size = 1 + i % 4
        lab[(slice(4, 4 + size),) * dims] = 2
        seg = torch.zeros(3, *shape).scatter_(0, lab[None], 1.0)
        img = 0.5 + 0.05 * torch.rand((1, *shape), generator=g)
        img[0][lab == 2] -= 0.2
        synth = img + 0.05 * torch.randn((1, *shape), generator=g)
        target = torch.tensor([float("nan"), 0.8 + 0.01 * (i % 3), size / 4.0])
        error = (torch.rand((1, *shape), generator=g) < 0.2).to(torch.uint8)
        out.append({"image": img, "synth": synth, "probs": seg, "target": target, "error": error, "ignore": None})
    return out


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("branches", [1, 2])
def test_region_ridge_matches_sklearn_ridge(dims, branches):
    from sklearn.linear_model import Ridge

    from synthcp3d.networks import RegionRidgeComparator

    samples = _ridge_samples(24, dims)
    net = RegionRidgeComparator(dims, 1, 3, num_branches=branches, alpha=3.0)
    net.fit(samples)
    feats = torch.stack([net.features(s["image"][None], s["probs"][None],
                                      s["synth"][None] if branches == 2 else None)[0] for s in samples]).double()
    flat = feats.reshape(-1, feats.shape[-1])
    z = ((feats - flat.mean(0)) / flat.std(0).clamp_min(1e-6)).numpy()
    targets = torch.stack([s["target"] for s in samples]).numpy()
    for c in (1, 2):
        ref = Ridge(alpha=3.0).fit(z[:, c], targets[:, c])
        np.testing.assert_allclose(net.coef[c].numpy(), ref.coef_, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(float(net.intercept[c]), ref.intercept_, rtol=1e-4)
    s = samples[5]
    args = (s["image"][None], *([s["synth"][None]] if branches == 2 else []), s["probs"][None])
    out = net(*args)
    want = np.clip([Ridge(alpha=3.0).fit(z[:, c], targets[:, c]).predict(z[5:6, c])[0] for c in (1, 2)], 0, 1)
    np.testing.assert_allclose(out["scores"][0, 1:].numpy(), want, atol=1e-4)
    assert out["error_logits"].shape == (1, 1, *s["image"].shape[1:])
    twin = RegionRidgeComparator(dims, 1, 3, num_branches=branches, alpha=3.0)
    twin.load_state_dict(net.state_dict())
    assert torch.equal(twin(*args)["scores"], out["scores"])


def test_region_ridge_error_map_is_the_logistic_fit_of_the_residual():
    from sklearn.linear_model import LogisticRegression

    from synthcp3d.networks import RegionRidgeComparator

    samples = _ridge_samples(8, 3, seed=1)
    for s in samples:  # voxels with a large residual are the errors, noisily
        r = (s["image"] - s["synth"]).abs()
        s["error"] = ((r + 0.02 * torch.randn_like(r)) > 0.06).to(torch.uint8)
    net = RegionRidgeComparator(3, 1, 3)
    net.fit(samples)
    x = torch.cat([(s["image"] - s["synth"]).abs().flatten()[::7] for s in samples]).double().numpy()
    y = torch.cat([s["error"].flatten()[::7] for s in samples]).numpy()
    ref = LogisticRegression(C=1e8, max_iter=1000).fit(x[:, None], y)
    # one-hot ŷ: its uncertainty 1 - max ŷ is 0 everywhere and keeps coefficient 0
    np.testing.assert_allclose(net.error_coef.numpy(), [ref.coef_[0, 0], 0.0, ref.intercept_[0]], rtol=2e-2)
    assert net.error_coef[0] > 0
    # soft ŷ: both voxel inputs, against scikit-learn on the same (|r|, 1 - max ŷ) pairs
    for s in samples:
        s["probs"] = torch.softmax(3 * s["probs"] + torch.randn_like(s["probs"]), 0)
        u = 1 - s["probs"].amax(0, keepdim=True)
        s["error"] = ((s["error"].bool()) | (u > 0.5)).to(torch.uint8)
    net.fit(samples)
    xu = torch.cat([torch.cat([(s["image"] - s["synth"]).abs(), 1 - s["probs"].amax(0, keepdim=True)])
                    .flatten(1)[:, ::7] for s in samples], 1).double().numpy().T  # fmt: skip
    y = torch.cat([s["error"].flatten()[::7] for s in samples]).numpy()
    ref = LogisticRegression(C=1e8, max_iter=2000).fit(xu, y)
    np.testing.assert_allclose(net.error_coef.numpy(), [*ref.coef_[0], ref.intercept_[0]], rtol=3e-2, atol=1e-2)
    direct = RegionRidgeComparator(3, 1, 3, num_branches=1)
    direct.fit(samples)
    assert direct.error_coef[0] == 0 and direct.error_coef[1] > 0  # uncertainty only: ranks voxels as MSP does
    out = direct(samples[0]["image"][None], samples[0]["probs"][None])["error_logits"]
    assert out.shape == (1, 1, *samples[0]["image"].shape[1:])


def test_region_ridge_bad_input():
    from synthcp3d.networks import RegionRidgeComparator

    with pytest.raises(ValueError, match="num_branches"):
        RegionRidgeComparator(3, 1, 3, num_branches=3)
    net = RegionRidgeComparator(3, 1, 3)
    with pytest.raises(ValueError, match="no labelled samples"):
        net.fit([])
    with pytest.raises(ValueError, match="synthesized"):
        net.features(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 3, 8, 8, 8))


def test_region_ridge_compact_features_by_hand():
    """feature_set='compact': per class the means of x, r, |r| in the region, in its 1-pixel box shell and in the
    other foreground classes, and log(fraction + 1e-4), against numpy / scipy on a hand-made 2D label map."""
    from scipy import ndimage

    from synthcp3d.networks import RegionRidgeComparator

    rng = np.random.default_rng(3)
    lab = np.zeros((12, 12), np.int64)
    lab[2:9, 2:9] = 1
    lab[4:6, 5:8] = 2
    x, xs = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    seg = torch.nn.functional.one_hot(torch.as_tensor(lab), 3).permute(2, 0, 1)[None].float()
    net = RegionRidgeComparator(2, 1, 3, num_branches=2, shell=1, feature_set="compact")
    f = net.features(torch.as_tensor(x)[None, None].float(), seg, torch.as_tensor(xs)[None, None].float())[0]
    assert f.shape == (3, net.num_features) == (3, 10)
    r = x - xs
    for c in (1, 2):
        own = lab == c
        ring = ndimage.binary_dilation(own, np.ones((3, 3))) & ~own
        other = (lab >= 1) & ~own
        want = [v[m].mean() for m in (own, ring) for v in (x, r, np.abs(r))]
        want += [v[other].mean() for v in (x, r, np.abs(r))] + [np.log(own.mean() + 1e-4)]
        np.testing.assert_allclose(f[c].numpy(), want, rtol=2e-3, atol=2e-3)  # the 1e-3 guard of the weighted means
    direct = RegionRidgeComparator(2, 1, 3, num_branches=1, feature_set="compact")
    assert direct.features(torch.as_tensor(x)[None, None].float(), seg).shape == (1, 3, 4)
    with pytest.raises(ValueError, match="feature_set"):
        RegionRidgeComparator(2, 1, 3, feature_set="tiny")
