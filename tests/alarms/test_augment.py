import numpy as np
import pytest
import torch
from scipy import ndimage

from synthcp3d.alarms.augment import PERTURBATIONS, apply_perturbation, augment_samples, draw_perturbation
from synthcp3d.networks import SPADEGenerator

from .conftest import ROI


def _label() -> torch.Tensor:
    lab = torch.zeros(20, 20, 12, dtype=torch.long)
    lab[4:16, 5:15, 2:10] = 1
    lab[8:12, 8:12, 4:8] = 2  # a 4 x 4 x 4 tumour inside the organ
    return lab


def _hand_dice(a: np.ndarray, b: np.ndarray) -> float:
    n = a.sum() + b.sum()
    return float("nan") if n == 0 else 2.0 * (a & b).sum() / n


def test_tumour_morphology_matches_scipy():
    lab = _label()
    cube = np.ones((3, 3, 3), bool)
    dil = apply_perturbation(lab, [{"op": "tumour_dilate", "radius": 1}]).numpy()
    np.testing.assert_array_equal(dil == 2, ndimage.binary_dilation(lab.numpy() == 2, cube))
    ero = apply_perturbation(lab, [{"op": "tumour_erode", "radius": 1}]).numpy()
    np.testing.assert_array_equal(ero == 2, ndimage.binary_erosion(lab.numpy() == 2, cube))
    assert ((ero >= 1) == (lab.numpy() >= 1)).all()  # eroded tumour voxels stay organ


def test_drop_shift_add_and_organ_ops():
    lab = _label()
    assert not (apply_perturbation(lab, [{"op": "tumour_drop"}]) == 2).any()
    shifted = apply_perturbation(lab, [{"op": "tumour_shift", "shift": [2, 0, -1]}]).numpy()
    np.testing.assert_array_equal(shifted == 2, np.roll(lab.numpy() == 2, (2, 0, -1), axis=(0, 1, 2)))
    added = apply_perturbation(lab, [{"op": "tumour_add", "radius": 2, "position": [0.0, 0.0, 0.0]}]).numpy()
    assert (added == 2).sum() > (lab == 2).sum() and ((added >= 1) >= (lab.numpy() >= 1)).all()
    grown = apply_perturbation(lab, [{"op": "organ_dilate", "radius": 2}]).numpy()
    np.testing.assert_array_equal(grown >= 1, ndimage.binary_dilation(lab.numpy() >= 1, np.ones((5, 5, 5), bool)))
    with pytest.raises(ValueError, match="unknown perturbation"):
        apply_perturbation(lab, [{"op": "melt"}])


def test_draw_is_seeded_and_valid():
    a = draw_perturbation(np.random.default_rng(3))
    b = draw_perturbation(np.random.default_rng(3))
    assert a == b and 1 <= len(a) <= 2 and all(p["op"] in PERTURBATIONS for p in a)
    ops = {p["op"] for s in range(200) for p in draw_perturbation(np.random.default_rng(s))}
    assert ops == set(PERTURBATIONS)


def test_augment_samples_targets_are_true_crop_dice(samples):
    torch.manual_seed(0)
    gen = SPADEGenerator(3, label_nc=3, ngf=4, num_up=2, hidden_channels=8)
    cv = [s for s in samples if s["label_mask"] is not None][:3]
    aug = augment_samples(cv, gen, per_case=3, seed=1)
    assert len(aug) == 9
    dice = []
    for a in aug:
        label = (a["label_mask"][0] + a["label_mask"][1]).numpy()
        pred = a["probs"].argmax(0).numpy()
        assert a["probs"].shape == (3, *ROI) and a["synth"].shape == (1, *ROI)
        assert 0.0 <= float(a["synth"].min()) and float(a["synth"].max()) <= 1.0
        np.testing.assert_array_equal(a["error"][0].numpy(), pred != label)
        np.testing.assert_array_equal(a["pred_mask"][1].numpy(), pred == 2)
        want = [_hand_dice(pred >= 1, label >= 1), _hand_dice(pred == 2, label == 2)]
        np.testing.assert_allclose(a["true"], want)
        np.testing.assert_allclose(a["target"][1:].numpy(), want, rtol=1e-6)
        dice.append(want[1])
    assert np.nanstd(dice) > 0.05  # perturbations spread the tumour Dice
    assert augment_samples(cv, gen, per_case=3, seed=1)[4]["perturbation"] == aug[4]["perturbation"]
