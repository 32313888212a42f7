import math

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from synthcp3d.data.msd import msd_datalist
from synthcp3d.data.phantom_pancreas import make_pancreas_dataset
from synthcp3d.engines.spade import make_patch_queue, synthesize_volumes, train_spade
from synthcp3d.networks import ConditionalDiscriminator, SPADEGenerator

PIXDIM = (4.0, 4.0, 5.0)  # the phantom's own spacing: volumes are 32 x 32 x 16
HU = (-87.0, 199.0)
PATCH = (16, 16, 16)


def tiny_nets() -> tuple[SPADEGenerator, ConditionalDiscriminator]:
    torch.manual_seed(0)  # num_up=2: seed 4^3 (an axis of 2 hits a CPU bf16 conv3d NaN-gradient bug)
    g = SPADEGenerator(3, label_nc=3, ngf=4, num_up=2, hidden_channels=8)
    return g, ConditionalDiscriminator(3, label_nc=3, channels=4, num_d=2, num_layers_d=1)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = make_pancreas_dataset(tmp_path_factory.mktemp("pancreas"), num_cases=6, size=(32, 32, 16), seed=0,
                                 num_test=1, field_of_view_mm=(128, 128, 80), roi_center="pancreas",
                                 progress=False)  # fmt: skip
    return msd_datalist(root, "training")


@pytest.fixture(scope="module")
def trained(items, tmp_path_factory):
    """Train 2 iterations, then resume to 4: (results of both runs, out_dir, generator)."""
    out = tmp_path_factory.mktemp("spade")
    kw = {"patch_size": PATCH, "pixdim": PIXDIM, "hu_window": HU, "samples_per_volume": 2, "queue_length": 6,
          "log_every": 1, "checkpoint_every": 2, "progress": False, "l1_weight": 10.0}  # fmt: skip
    g, d = tiny_nets()
    first = train_spade(g, d, items, out, iterations=2, **kw)
    after_first = {k: v.clone() for k, v in g.state_dict().items()}
    g2, d2 = tiny_nets()  # fresh networks: everything must come from the checkpoint
    second = train_spade(g2, d2, items, out, iterations=4, **kw)
    return first, second, out, g2, after_first


def test_train_writes_checkpoints_and_finite_losses(trained):
    first, _, out, _, after_first = trained
    assert first["iterations"] == 2 and first["start_iteration"] == 0
    assert all(math.isfinite(v) for v in first["losses"].values())
    assert first["losses"]["loss_d"] > 0 and first["losses"]["g_l1"] > 0
    names = {p.name for p in (out / "models").iterdir()}
    assert {"checkpoint_iteration=2.pt", "checkpoint_final.pt", "generator.pt"} <= names
    ckpt = torch.load(out / "models" / "checkpoint_iteration=2.pt", weights_only=True)
    assert set(ckpt) == {"generator", "discriminator", "opt_g", "opt_d", "engine"}
    assert ckpt["engine"]["iteration"] == 2
    g, _ = tiny_nets()
    g.load_state_dict(torch.load(first["generator"], weights_only=True))  # strict
    assert any((v != after_first[k]).any() for k, v in tiny_nets()[0].state_dict().items())  # trained != init
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tb"))
    tb.Reload()
    assert {"loss_g", "loss_d"} <= set(tb.Tags()["scalars"]) and tb.Tags()["images"] == ["samples/label_real_fake"]


def test_resume_continues_from_saved_iteration(items, trained):
    _, second, out, g2, after_first = trained
    assert second["start_iteration"] == 2 and second["iterations"] == 4
    final = torch.load(out / "models" / "checkpoint_final.pt", weights_only=True)
    assert final["engine"]["iteration"] == 4
    # Adam's step counters carried over (a fresh optimizer would be at 2 after two more iterations)
    steps = [int(s["step"]) for s in final["opt_g"]["state"].values()]
    assert steps and min(steps) >= 3
    assert any((v != after_first[k]).any() for k, v in g2.state_dict().items() if v.is_floating_point())
    # asking for no more than is done is a no-op (ignite would otherwise restart a finished run from 0)
    g, d = tiny_nets()
    again = train_spade(g, d, items, out, iterations=4, patch_size=PATCH, pixdim=PIXDIM, progress=False)
    assert again["start_iteration"] == again["iterations"] == 4
    torch.testing.assert_close(g.state_dict(), g2.state_dict())


def test_synthesize_volumes_geometry_and_range(items, trained, tmp_path):
    _, _, _, g, _ = trained
    index = {it["case_id"]: {"image": it["image"], "pred": it["label"]} for it in items[:1]}
    # a coarser pixdim than the data: resampling, sliding-window padding (z: 14 < 16) and inversion all run
    paths = synthesize_volumes(g, index, tmp_path, roi_size=PATCH, num_classes=3, pixdim=(5.0, 5.0, 6.0),
                               hu_window=HU, amp_dtype="bfloat16", progress=False)  # fmt: skip
    assert set(paths) == set(index)
    for cid, path in paths.items():
        assert path == str(tmp_path / cid / "synth.nii.gz")
        ref, syn = nib.load(index[cid]["image"]), nib.load(path)
        assert syn.shape == ref.shape
        np.testing.assert_allclose(syn.affine, ref.affine, atol=1e-4)
        data = np.asarray(syn.dataobj)
        assert data.dtype == np.float32
        assert HU[0] <= data.min() and data.max() <= HU[1] and data.std() > 0


def test_synthesize_rejects_indivisible_roi(items, tmp_path):
    g, _ = tiny_nets()
    index = {items[0]["case_id"]: {"image": items[0]["image"], "pred": items[0]["label"]}}
    with pytest.raises(ValueError, match=r"roi_size \(16, 16, 10\).*multiple of the total upsampling factor"):
        synthesize_volumes(g, index, tmp_path, roi_size=(16, 16, 10), pixdim=PIXDIM, progress=False)
    assert not list(tmp_path.iterdir())


def test_label_sampler_prefers_tumour(items):
    """Patches from the queue contain tumour far more often than uniformly placed patches do."""
    torch.manual_seed(0)
    patch = (8, 8, 8)
    queue = make_patch_queue(items, patch, pixdim=PIXDIM, hu_window=HU, label_probabilities={0: 1, 1: 2, 2: 3},
                             samples_per_volume=10, queue_length=60)  # fmt: skip
    patches = [queue[i] for i in range(60)]
    assert all(p["image"][tio.DATA].shape == (1, *patch) for p in patches)
    assert all(-1 <= float(p["image"][tio.DATA].min()) and float(p["image"][tio.DATA].max()) <= 1 for p in patches)
    with_tumour = np.mean([bool((p["label"][tio.DATA] == 2).any()) for p in patches])
    uniform = tio.UniformSampler(patch)
    ref = [u for s in queue.subjects_dataset for u in uniform(s, num_patches=10)]
    uniform_tumour = np.mean([bool((u["label"][tio.DATA] == 2).any()) for u in ref])
    assert with_tumour >= 0.4 and with_tumour > uniform_tumour + 0.2, (with_tumour, uniform_tumour)
