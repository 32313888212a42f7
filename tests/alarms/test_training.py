import nibabel as nib
import numpy as np
import pytest
import torch

from synthcp3d.alarms.comparator import predict_comparator, train_comparator
from synthcp3d.alarms.vae import (
    FEATURE_NAMES,
    fit_dice_regressor,
    predict_dice_regressor,
    train_shape_vae,
    vae_features,
)
from synthcp3d.networks import DirectPredictor, ShapeVAE, SiameseComparator

from .conftest import ROI

TINY = {"widen_factor": 0.125, "fuse_channels": 8, "hidden": 16}


def _vae() -> ShapeVAE:
    return ShapeVAE(3, ROI, in_channels=2, latent_size=8, channels=(4, 8), include_background=True)


@pytest.mark.parametrize("cls", [SiameseComparator, DirectPredictor])
def test_comparator_trains_and_resumes(cls, samples, tmp_path):
    samples = samples[:4] + samples[-1:]  # 4 labelled + 1 test case keep it quick
    torch.manual_seed(0)
    net = cls(3, 1, 3, **TINY)
    first = train_comparator(net, samples, tmp_path, iterations=2, batch_size=2, checkpoint_every=1, progress=False)
    assert first["iterations"] == 2 and first["start_iteration"] == 0 and np.isfinite(first["loss"])
    assert (tmp_path / "models" / "checkpoint_final.pt").is_file() and (tmp_path / "models" / "model.pt").is_file()
    again = train_comparator(net, samples, tmp_path, iterations=3, batch_size=2, progress=False)
    assert again["start_iteration"] == 2 and again["iterations"] == 3
    fresh = cls(3, 1, 3, **TINY)
    train_comparator(fresh, samples, tmp_path, iterations=3, progress=False)  # resumes at 3: nothing to do
    fresh.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    for a, b in zip(fresh.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    errs = tmp_path / "err" if cls is SiameseComparator else None
    pred = predict_comparator(net, samples, error_map_dir=errs)
    assert pred.shape == (len(samples), 2) and ((pred >= 0) & (pred <= 1)).all()
    if errs is not None:
        for s in samples:
            out, img = nib.load(errs / s["case_id"] / "error_map.nii.gz"), nib.load(s["paths"]["image"])
            assert out.shape == img.shape and np.allclose(out.affine, img.affine)
            m = out.get_fdata()
            assert m.min() >= 0 and m.max() <= 1 and m.max() > 0


@pytest.mark.native_bf16
@pytest.mark.parametrize("cls", [SiameseComparator, DirectPredictor])
def test_comparator_bf16_matches_fp32_after_training(cls, samples, tmp_path):
    torch.manual_seed(0)
    net = cls(3, 1, 3, **TINY)
    before = [p.detach().clone() for p in net.parameters()]
    train_comparator(net, samples, tmp_path, iterations=6, batch_size=2, lr=3e-3, progress=False)
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))  # trained weights
    bf16 = predict_comparator(net, samples, amp_dtype="bfloat16")
    fp32 = predict_comparator(net, samples, amp_dtype="float32")
    assert np.abs(bf16 - fp32).max() < 0.01


def test_direct_needs_no_synth_but_synthcp_does(samples):
    no_synth = [dict(s, synth=None) for s in samples[:2]]
    assert predict_comparator(DirectPredictor(3, 1, 3, **TINY), no_synth).shape == (2, 2)
    with pytest.raises(ValueError, match="synth"):
        predict_comparator(SiameseComparator(3, 1, 3, **TINY), no_synth)


def test_vae_alarm_trains_resumes_and_regresses(samples, tmp_path):
    torch.manual_seed(0)
    vae = _vae()
    cv = [s for s in samples if s["label_mask"] is not None]
    r = train_shape_vae(vae, [s["label_mask"] for s in cv], tmp_path, iterations=3, batch_size=4, progress=False)
    assert r["iterations"] == 3 and np.isfinite(r["loss"])
    r = train_shape_vae(vae, [s["label_mask"] for s in cv], tmp_path, iterations=4, batch_size=4, progress=False)
    assert r["start_iteration"] == 3 and r["iterations"] == 4
    masks = [s["pred_mask"] for s in samples]
    f32 = vae_features(vae, masks, amp_dtype="float32")
    assert f32.shape == (len(samples), len(FEATURE_NAMES)) and np.isfinite(f32).all()
    params = fit_dice_regressor(f32[: len(cv)], np.stack([s["true"] for s in cv]))
    d32 = predict_dice_regressor(params, f32)
    assert ((d32 >= 0) & (d32 <= 1)).all()


@pytest.mark.native_bf16
def test_vae_alarm_bf16_matches_fp32_after_training(samples, tmp_path):
    torch.manual_seed(0)
    vae = _vae()
    cv = [s for s in samples if s["label_mask"] is not None]
    train_shape_vae(vae, [s["label_mask"] for s in cv], tmp_path, iterations=6, batch_size=4, progress=False)
    masks = [s["pred_mask"] for s in samples]
    f16, f32 = vae_features(vae, masks, amp_dtype="bfloat16"), vae_features(vae, masks, amp_dtype="float32")
    params = fit_dice_regressor(f32[: len(cv)], np.stack([s["true"] for s in cv]))
    d16, d32 = predict_dice_regressor(params, f16), predict_dice_regressor(params, f32)
    assert np.abs(d16 - d32).max() < 0.01
