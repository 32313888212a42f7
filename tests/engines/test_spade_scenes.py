"""The SPADE engine on 2D street scenes: injected scene loader, ignore -> all-zero one-hot, PNG synthesis."""

import math

import numpy as np
import pytest
import torch

from synthcp3d.data.io import read_png, write_png
from synthcp3d.data.labels import one_hot
from synthcp3d.data.phantom_scenes import make_scene_dataset
from synthcp3d.data.streethazards import NUM_CLASSES, load_streethazards, streethazards_datalist
from synthcp3d.engines.spade import make_scene_loader, synthesize, synthesize_images, train_spade
from synthcp3d.networks import ConditionalDiscriminator, SPADEGenerator

SIZE = (32, 64)


def tiny_nets() -> tuple[SPADEGenerator, ConditionalDiscriminator]:
    torch.manual_seed(0)
    g = SPADEGenerator(2, label_nc=NUM_CLASSES, out_channels=3, ngf=4, num_up=3, hidden_channels=8)
    return g, ConditionalDiscriminator(2, label_nc=NUM_CLASSES, image_channels=3, channels=4, num_d=2, num_layers_d=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_scene_dataset(tmp_path_factory.mktemp("sh"), style="streethazards", num_images=4, size=(48, 96),
                              seed=1, splits=("train",))  # fmt: skip


def test_one_hot_ignore_is_all_zero():
    lab = torch.tensor([[[0, 2], [255, 1]]])[:, None]  # (1, 1, 2, 2)
    oh = one_hot(lab[:, 0], 3, ignore_index=255, dim=1)
    assert oh.shape == (1, 3, 2, 2)
    assert oh[0, :, 1, 0].tolist() == [0, 0, 0]
    assert oh[0, :, 0, 1].tolist() == [0, 0, 1] and oh[0, :, 1, 1].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match=r"outside \[0, 2\].*ignore_index=255"):
        one_hot(torch.tensor([[[3, 255]]]), 3, ignore_index=255, dim=1)
    with pytest.raises(ValueError, match="outside"):
        one_hot(lab[:, 0], 3, dim=1)  # 255 without ignore_index is an error


def test_scene_loader_batches(root):
    items = streethazards_datalist(root, "train")
    loader = make_scene_loader(items, load_streethazards, SIZE, batch_size=3)
    assert len(loader) == 1  # 4 items, drop_last
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, *SIZE) and batch["label"].shape == (3, 1, *SIZE)
    assert batch["label"].dtype == torch.int64 and int(batch["label"].max()) < NUM_CLASSES
    assert -1 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1 and batch["image"].std() > 0.05


def test_train_spade_on_scenes_with_ignore(root, tmp_path):
    items = streethazards_datalist(root, "train")
    loader = make_scene_loader(items, load_streethazards, SIZE, batch_size=2)
    # some ignore pixels: the loader's labels with a 255 band, as Cityscapes' out-of-roi border
    ignored = [{**b, "label": torch.where(torch.arange(SIZE[1]) < 8, 255, b["label"])} for b in loader]
    g, d = tiny_nets()
    init = {k: v.clone() for k, v in g.state_dict().items()}
    res = train_spade(g, d, None, tmp_path, loader=ignored, iterations=3, patch_size=SIZE, num_classes=NUM_CLASSES,
                      ignore_index=255, l1_weight=10.0, log_every=1, checkpoint_every=2, progress=False)  # fmt: skip
    assert res["iterations"] == 3 and all(math.isfinite(v) for v in res["losses"].values())
    assert {"checkpoint_iteration=2.pt", "checkpoint_final.pt", "generator.pt"} <= {
        p.name for p in (tmp_path / "models").iterdir()
    }
    assert any((v != init[k]).any() for k, v in g.state_dict().items() if v.is_floating_point())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "tb"))
    tb.Reload()
    img = tb.Images("samples/label_real_fake")[-1]
    assert (img.height, img.width) == (SIZE[0], 3 * SIZE[1])
    # without ignore_index the 255 band is rejected
    g, d = tiny_nets()
    with pytest.raises(ValueError, match="outside"):
        train_spade(g, d, None, tmp_path / "bad", loader=ignored, iterations=1, num_classes=NUM_CLASSES,
                    progress=False)  # fmt: skip


def test_train_spade_needs_data(tmp_path):
    g, d = tiny_nets()
    with pytest.raises(ValueError, match="train_items and patch_size.*or a loader"):
        train_spade(g, d, None, tmp_path, iterations=1)


def test_synthesize_ignore_and_sliding_window():
    g, _ = tiny_nets()
    g.eval()
    lab = torch.randint(0, NUM_CLASSES, (2, 1, *SIZE))
    y = synthesize(g, lab, NUM_CLASSES, amp_dtype=None)
    assert y.shape == (2, 3, *SIZE) and y.dtype == torch.float32 and -1 <= y.min() and y.max() <= 1
    with torch.no_grad():
        ref = g(torch.nn.functional.one_hot(lab[:, 0], NUM_CLASSES).movedim(-1, 1).float())
    torch.testing.assert_close(y, ref)
    ign = synthesize(g, torch.full((1, 1, *SIZE), 255), NUM_CLASSES, ignore_index=255, amp_dtype=None)
    with torch.no_grad():
        # same layout as synthesize's input: an all-zero map makes every SPADE gamma/beta map constant, and their
        # instance norms amplify the last-bit differences between contiguous and channels-last convolutions
        zeros = torch.zeros(1, NUM_CLASSES, *SIZE).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ign, g(zeros))
    sw = synthesize(g, lab[:1], NUM_CLASSES, roi_size=SIZE, amp_dtype=None)  # one window = the whole map
    torch.testing.assert_close(sw, y[:1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not fit the generator"):
        synthesize(g, torch.zeros(1, 1, 30, 64, dtype=torch.long), NUM_CLASSES, roi_size=(30, 64))
    # the whole-map pass pads an odd shape to the generator's next valid one and crops the output back
    odd = lab[:1, :, : SIZE[0] - 2, : SIZE[1] - 3]
    out = synthesize(g, odd, NUM_CLASSES, amp_dtype=None)
    assert out.shape == (1, 3, *odd.shape[2:])
    padded = torch.nn.functional.pad(odd.float(), (0, 3, 0, 2), mode="replicate").long()
    ref = synthesize(g, padded, NUM_CLASSES, amp_dtype=None)[..., : SIZE[0] - 2, : SIZE[1] - 3]
    torch.testing.assert_close(out, ref)


def test_synthesize_images_png_at_pred_size(tmp_path):
    g, _ = tiny_nets()
    pred = np.random.default_rng(0).integers(0, NUM_CLASSES, (48, 96)).astype(np.uint8)
    write_png(tmp_path / "pred.png", pred)
    out = synthesize_images(g, {"a": {"pred": str(tmp_path / "pred.png")}}, tmp_path / "synth", size=SIZE,
                            num_classes=NUM_CLASSES, progress=False)  # fmt: skip
    assert out == {"a": str(tmp_path / "synth" / "a" / "synth.png")}
    rgb = read_png(out["a"])
    assert rgb.shape == (48, 96, 3) and rgb.dtype == np.uint8 and rgb.std() > 0

