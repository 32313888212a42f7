"""The label-free baselines of synthcp3d.alarms.agreement against hand computations, scipy and brute-force loops."""

from itertools import combinations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import dice as scipy_dice_dissimilarity
from scipy.stats import entropy as scipy_entropy

from synthcp3d.alarms.agreement import REGIONS, foreground_uncertainty, pairwise_dice_agreement, region_masks
from synthcp3d.alarms.samples import CLASS_NAMES, case_dice


def test_regions_are_those_of_case_dice():
    assert [name for name, _ in REGIONS] == list(CLASS_NAMES)
    lab = np.array([0, 1, 2, 2, 1, 0])
    masks = region_masks(lab)
    assert masks.shape == (2, 6)
    np.testing.assert_array_equal(masks[0], lab >= 1)  # pancreas incl. tumour, as case_dice counts it
    np.testing.assert_array_equal(masks[1], lab == 2)


def test_pairwise_dice_by_hand():
    a = np.array([0, 1, 1, 2, 0])
    b = np.array([0, 1, 2, 2, 2])
    c = np.zeros(5, int)
    # pancreas {1, 2}: a = {1, 2, 3}, b = {1, 2, 3, 4}, c = {} -> D(a, b) = 6/7, D(a, c) = D(b, c) = 0
    # tumour {2}: a = {3}, b = {2, 3, 4}, c = {} -> D(a, b) = 2/4, D(a, c) = D(b, c) = 0
    np.testing.assert_allclose(pairwise_dice_agreement([a, b, c]), [(6 / 7) / 3, 0.5 / 3])
    np.testing.assert_allclose(pairwise_dice_agreement([a, b]), [6 / 7, 0.5])
    # two empty masks agree perfectly, one empty one not
    np.testing.assert_allclose(pairwise_dice_agreement([c, c]), [1.0, 1.0])
    np.testing.assert_allclose(pairwise_dice_agreement([np.array([0, 1, 1, 0, 0]), np.array([0, 1, 0, 0, 0])]),
                               [2 / 3, 1.0])  # neither predicts tumour  # fmt: skip
    np.testing.assert_allclose(pairwise_dice_agreement([a, c]), [0.0, 0.0])
    got = pairwise_dice_agreement([a, b, c])
    assert got.shape == (2,) and got.dtype == np.float64


@pytest.mark.parametrize("shape", [(7, 9), (6, 5, 4)])
def test_pairwise_dice_matches_a_brute_force_loop_with_scipy(shape):
    rng = np.random.default_rng(1)
    maps = [rng.choice(3, size=shape, p=[0.5, 0.3, 0.2]) for _ in range(4)]
    want = []
    for _, values in REGIONS:
        pairs = []
        for i, j in combinations(range(len(maps)), 2):
            a, b = np.isin(maps[i], values).ravel(), np.isin(maps[j], values).ravel()
            pairs.append(1.0 - scipy_dice_dissimilarity(a, b))  # scipy gives 1 - Dice
        want.append(np.mean(pairs))
    np.testing.assert_allclose(pairwise_dice_agreement(maps), want)
    np.testing.assert_allclose(pairwise_dice_agreement([torch.as_tensor(m) for m in maps]), want)  # torch in
    if len(shape) == 3:  # two volumes: the agreement is their Dice, as case_dice computes it (3D only)
        np.testing.assert_allclose(pairwise_dice_agreement(maps[:2]), case_dice(maps[0], maps[1]))


def test_pairwise_dice_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 2 label maps"):
        pairwise_dice_agreement([np.zeros((3, 3), int)])
    with pytest.raises(ValueError, match="different shapes"):
        pairwise_dice_agreement([np.zeros((3, 3), int), np.zeros((3, 4), int)])


def test_foreground_uncertainty_by_hand():
    # 4 voxels (2 x 2), 3 classes; voxel 3 is uniform (entropy 1) and labelled pancreas
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [1 / 3, 1 / 3, 1 / 3]]).T.reshape(3, 2, 2)
    pred = np.array([[0, 1], [2, 1]])

    def h(p):  # normalised entropy, by hand
        return -sum(x * np.log(x) for x in p) / np.log(3)

    res = foreground_uncertainty(probs, pred)
    assert set(res) == {"msp", "entropy"}
    np.testing.assert_allclose(res["msp"], [(0.7 + 0.6 + 1 / 3) / 3, 0.6])
    pancreas_h = (h([0.2, 0.7, 0.1]) + h([0.1, 0.3, 0.6]) + 1.0) / 3
    np.testing.assert_allclose(res["entropy"], [1 - pancreas_h, 1 - h([0.1, 0.3, 0.6])])
    # torch in, the same; a certain voxel (0 log 0 = 0) is fully confident
    t = foreground_uncertainty(torch.as_tensor(probs), torch.as_tensor(pred))
    np.testing.assert_allclose(t["msp"], res["msp"])
    sure = foreground_uncertainty(np.array([[0.0], [0.0], [1.0]]), np.array([2]))
    np.testing.assert_allclose(sure["msp"], [1.0, 1.0])
    np.testing.assert_allclose(sure["entropy"], [1.0, 1.0])


def test_foreground_uncertainty_is_nan_for_an_empty_predicted_region():
    probs = np.full((3, 4, 4, 2), 1 / 3)
    res = foreground_uncertainty(probs, np.zeros((4, 4, 2), int))
    assert np.isnan(res["msp"]).all() and np.isnan(res["entropy"]).all()
    pred = np.zeros((4, 4, 2), int)
    pred[0, 0, 0] = 1  # pancreas only: tumour undefined
    res = foreground_uncertainty(probs, pred)
    np.testing.assert_allclose(res["msp"][0], 1 / 3)
    np.testing.assert_allclose(res["entropy"][0], 0.0, atol=1e-12)
    assert np.isnan(res["msp"][1]) and np.isnan(res["entropy"][1])


def test_foreground_uncertainty_matches_a_brute_force_loop_with_scipy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (3, 5, 6, 4))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    pred = probs.argmax(0)
    res = foreground_uncertainty(probs.astype(np.float32), pred)
    for k, (_, values) in enumerate(REGIONS):
        msp, conf = [], []
        for idx in np.ndindex(pred.shape):
            if pred[idx] in values:
                p = probs[(slice(None), *idx)]
                msp.append(p.max())
                conf.append(1.0 - scipy_entropy(p, base=3))
        np.testing.assert_allclose(res["msp"][k], np.mean(msp), rtol=1e-5)
        np.testing.assert_allclose(res["entropy"][k], np.mean(conf), rtol=1e-5)


def test_foreground_uncertainty_refuses_bad_input():
    with pytest.raises(ValueError, match="C >= 2"):
        foreground_uncertainty(np.ones((1, 3, 3)), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="does not match"):
        foreground_uncertainty(np.ones((3, 3, 3)) / 3, np.zeros((3, 4), int))
