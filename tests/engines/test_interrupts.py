"""Kill-and-resume with real signals: a trainer stopped by SIGINT / SIGTERM writes a resumable checkpoint, and
resuming it gives the same weights as a run that was never interrupted.

* shape-VAE trainer (the generic loop of ``alarms/training.py``) in a real subprocess, signalled from here;
* segmenter trainer (MONAI ``SupervisedTrainer``, whose ``StatsHandler`` used to re-raise before the checkpoint
  handler ran) signalled by its own loss function, in this process;
* SPADE trainer (an endless TorchIO patch stream, not epochs of a loader) signalled by its generator's forward
  pass, in this process.

The comparisons are exact (``torch.equal``): a checkpoint holds the random generators (global, the loader's
shuffling generator, the MONAI transforms') and a resume replays the saved epoch's loader up to the saved
iteration (SPADE: the patch stream from its start). Every run here uses one torch thread, so the subprocess and
this process compute bit-identically.
"""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from synthcp3d.engines.checkpoints import FINAL_CHECKPOINT, TrainingInterrupted

ITERATIONS = 12  # 8 masks, batch 2: 4 iterations per epoch
VAE_SCRIPT = textwrap.dedent(f"""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_interrupts import train_vae
    print(json.dumps(train_vae(sys.argv[1], delay=float(sys.argv[2]))), flush=True)
""")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_vae(out_dir: str, delay: float = 0.0) -> dict:
    """Train a tiny shape VAE for ITERATIONS iterations (checkpoint every 2); ``delay`` seconds of sleep per
    forward pass slow the run down so it can be signalled mid-way (it changes no number)."""
    from synthcp3d.alarms.vae import train_shape_vae
    from synthcp3d.networks import ShapeVAE

    fg = torch.rand(8, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.6
    masks = torch.cat([~fg, fg], 1).float()
    torch.manual_seed(0)
    vae = ShapeVAE(3, (8, 8, 8), in_channels=2, latent_size=4, channels=(4, 8), include_background=True)
    if delay:
        forward = vae.forward

        def slow(*args, **kwargs):
            time.sleep(delay)
            return forward(*args, **kwargs)

        vae.forward = slow
    out = train_shape_vae(vae, masks, out_dir, iterations=ITERATIONS, batch_size=2, checkpoint_every=2,
                          amp_dtype="float32", progress=False)  # fmt: skip
    return {k: out[k] for k in ("model", "iterations", "start_iteration")}


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def vae_reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of an uninterrupted run (this process, one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _weights(train_vae(str(tmp_path_factory.mktemp("vae_ref")))["model"])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_vae_killed_by_a_signal_resumes_to_the_uninterrupted_weights(sig, vae_reference, tmp_path, one_thread):
    out = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(VAE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen([sys.executable, str(script), str(out), "0.25"], stdout=so, stderr=se, env=env)
        try:
            marker = out / "models" / "checkpoint_iteration=2.pt"
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert proc.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.02)
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = (tmp_path / "stderr").read_text()
    assert rc != 0 and "TrainingInterrupted" in err and signal.Signals(sig).name in err, err[-3000:]
    assert not (tmp_path / "stdout").read_text().strip()  # it did not finish
    models = out / "models"
    assert not (models / "model.pt").exists()
    ckpt = torch.load(models / FINAL_CHECKPOINT, weights_only=True)  # the resumable checkpoint
    stopped = ckpt["engine"]["iteration"]
    assert 2 <= stopped < ITERATIONS and {"network", "optimizer", "engine"} <= set(ckpt)
    # re-run (here, same seed, one thread like the subprocess) to completion
    resumed = train_vae(str(out))
    assert resumed["start_iteration"] == stopped and resumed["iterations"] == ITERATIONS
    final = _weights(resumed["model"])
    assert final.keys() == vae_reference.keys()
    for k, v in final.items():
        assert torch.equal(v, vae_reference[k]), k  # exact: the resumed run continues the same random streams
    assert any(not torch.equal(v, ckpt["network"][k]) for k, v in final.items())  # and it did train further


# ---------------------------------------------------------------- segmenter (MONAI SupervisedTrainer)
@pytest.fixture(scope="module")
def roi_items(tmp_path_factory):
    from synthcp3d.data.msd import msd_datalist
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    root = make_pancreas_dataset(tmp_path_factory.mktemp("roi"), num_cases=3, size=(32, 32, 16), seed=1, num_test=0,
                                 field_of_view_mm=(128, 128, 80), roi_center="pancreas", progress=False)  # fmt: skip
    return msd_datalist(root)


def _train_segmenter(items, out_dir, max_epochs=2, signal_at=None):
    """2 epochs x 2 iterations (3 cases x 1 crop, batch 2), validation every epoch; seeded crops."""
    from monai.losses import DiceCELoss

    from synthcp3d.data.transforms import ct_train_transforms
    from synthcp3d.engines.segmentation import train_segmenter
    from synthcp3d.networks import Segmenter

    torch.manual_seed(0)
    net = Segmenter(3, 1, 3, backbone="unet", unet_channels=(4, 8, 16), feature_channels=4)
    pixdim, roi = (4.0, 4.0, 5.0), (16, 16, 16)
    crops = ct_train_transforms(pixdim, (-87.0, 199.0), roi, 3, (1.0, 2.0, 3.0), num_samples=1).set_random_state(0)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    calls = []

    def loss(pred, label):
        calls.append(1)
        if signal_at is not None and len(calls) == signal_at[0]:
            os.kill(os.getpid(), signal_at[1])  # a real signal to this process, mid-iteration
        return dice_ce(pred, label)

    result = train_segmenter(net, items, items[:1], out_dir, max_epochs=max_epochs, roi_size=roi, pixdim=pixdim,
                             batch_size=2, val_interval=1, progress=False, train_transform=crops,
                             loss_function=loss, amp_dtype="float32")  # fmt: skip
    return result, net


def test_segmenter_interrupted_by_sigint_writes_checkpoint_final_and_resumes_exactly(roi_items, tmp_path, one_thread):
    reference, ref_net = _train_segmenter(roi_items, tmp_path / "ref")
    assert reference["iterations"] == 4
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="SIGINT"):
        _train_segmenter(roi_items, tmp_path / "run", signal_at=(3, signal.SIGINT))  # during iteration 3
    assert signal.getsignal(signal.SIGINT) is before
    models = tmp_path / "run" / "models"
    ckpt = torch.load(models / FINAL_CHECKPOINT, weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3  # iteration 3 completed, mid-epoch 2
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=1.pt", FINAL_CHECKPOINT]
    resumed, net = _train_segmenter(roi_items, tmp_path / "run")
    assert resumed["iterations"] == 4
    for (k, a), b in zip(net.state_dict().items(), ref_net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # asking for fewer epochs than done says how to start fresh; as many is a no-op
    with pytest.raises(ValueError, match=r"beyond the requested max_epochs=1.*resume=False"):
        _train_segmenter(roi_items, tmp_path / "run", max_epochs=1)
    assert _train_segmenter(roi_items, tmp_path / "run")[0]["iterations"] == 4


# ---------------------------------------------------------------- SPADE (endless TorchIO patch stream)
SPADE_ITERATIONS = 8  # 3 cases x 2 patches, batch 1: 6 iterations per pass over the queue


def _train_spade(items, out_dir, signal_at=None):
    """A tiny 3D SPADE run (16^3 patches, float32); ``signal_at=(k, sig)`` sends ``sig`` to this process during
    the k-th generator forward pass, i.e. mid-iteration k."""
    from synthcp3d.engines.spade import train_spade
    from synthcp3d.networks import ConditionalDiscriminator, SPADEGenerator

    torch.manual_seed(0)
    g = SPADEGenerator(3, label_nc=3, ngf=4, num_up=2, hidden_channels=8)
    d = ConditionalDiscriminator(3, label_nc=3, channels=4, num_d=2, num_layers_d=1)
    if signal_at is not None:
        forward, calls = g.forward, []

        def signalling(*args, **kwargs):
            calls.append(1)
            if len(calls) == signal_at[0]:
                os.kill(os.getpid(), signal_at[1])  # a real signal to this process, mid-iteration
            return forward(*args, **kwargs)

        g.forward = signalling
    result = train_spade(g, d, items, out_dir, iterations=SPADE_ITERATIONS, patch_size=(16, 16, 16),
                         pixdim=(4.0, 4.0, 5.0), samples_per_volume=2, queue_length=6, l1_weight=10.0,
                         amp_dtype="float32", checkpoint_every=4, log_every=100, progress=False)  # fmt: skip
    return result, g, d


def test_spade_interrupted_by_sigterm_resumes_to_the_uninterrupted_weights(roi_items, tmp_path, one_thread,
                                                                           caplog):  # fmt: skip
    _, ref_g, ref_d = _train_spade(roi_items, tmp_path / "ref")
    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        _train_spade(roi_items, tmp_path / "run", signal_at=(7, signal.SIGTERM))  # the 2nd pass over the queue
    models = tmp_path / "run" / "models"
    ckpt = torch.load(models / FINAL_CHECKPOINT, weights_only=True)
    assert ckpt["engine"]["iteration"] == 7 and "stream" in ckpt["engine"]["rng"]
    assert not (models / "generator.pt").exists()
    with caplog.at_level(logging.INFO, logger="synthcp3d.engines.checkpoints"):
        resumed, g, d = _train_spade(roi_items, tmp_path / "run")
    assert resumed["start_iteration"] == 7 and resumed["iterations"] == SPADE_ITERATIONS
    assert any("replaying 7 batches of the data stream" in m for m in caplog.messages)
    # exact: the resumed run trained on the same 8th patch, with the same random streams, as the uninterrupted one
    for net, ref in ((g, ref_g), (d, ref_d)):
        for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
    assert any(not torch.equal(v, ckpt["generator"][k]) for k, v in g.state_dict().items())  # it trained further
