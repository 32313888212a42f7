import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou
from monai.networks.utils import one_hot

from synthcp3d.metrics import dice_iou


def test_hand_computed_with_ignore_and_absent_class():
    pred = np.array([[0, 1, 1, 2, 0, 0]])
    target = np.array([[0, 1, 0, 255, 0, 255]])
    # valid voxels 0,1,2,4: pred 0 1 1 0 ; target 0 1 0 0 ; class 2 only predicted on an ignored voxel
    dice, iou = dice_iou(pred, target, num_classes=4, ignore_index=255)
    # class 0: tp 2, pred 2, true 3 -> dice 4/5, iou 2/3 ; class 1: tp 1, pred 2, true 1 -> 2/3, 1/2
    np.testing.assert_allclose(dice[0, :2].numpy(), [0.8, 2 / 3])
    np.testing.assert_allclose(iou[0, :2].numpy(), [2 / 3, 0.5])
    assert torch.isnan(dice[0, 2:]).all() and torch.isnan(iou[0, 2:]).all()  # absent from both: excluded
    dice, _ = dice_iou(pred, np.where(target == 255, 0, target), num_classes=4)
    assert dice[0, 2] == 0.0  # counted, class 2 is a false positive: 0, not NaN
    with pytest.raises(ValueError, match="range"):
        dice_iou(pred, target, num_classes=4)  # 255 without ignore_index is an invalid label


def test_matches_monai_where_ground_truth_present():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 3, (3, 12, 12, 6)))
    pred = torch.where(torch.from_numpy(rng.random((3, 12, 12, 6)) < 0.7), target, torch.randint(0, 4, target.shape))
    target[1][target[1] == 2] = 0  # class 2 absent from the truth of case 1 but predicted: 0, not NaN
    target[2][target[2] == 1] = 0
    pred[2][pred[2] == 1] = 0  # class 1 absent from both in case 2: NaN
    dice, iou = dice_iou(pred, target, num_classes=4)
    oh_p, oh_t = one_hot(pred[:, None], 4), one_hot(target[:, None], 4)
    ref_d = compute_dice(oh_p, oh_t, ignore_empty=False).double()
    ref_i = compute_iou(oh_p, oh_t, ignore_empty=False).double()
    both_empty = (oh_p.sum((2, 3, 4)) == 0) & (oh_t.sum((2, 3, 4)) == 0)
    torch.testing.assert_close(dice[~both_empty], ref_d[~both_empty])
    torch.testing.assert_close(iou[~both_empty], ref_i[~both_empty])
    assert torch.isnan(dice[both_empty]).all() and both_empty[2, 1] and both_empty.sum() >= 1
    assert dice[1, 2] == 0.0


def test_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        dice_iou(np.zeros((2, 3), int), np.zeros((2, 4), int), 2)
    with pytest.raises(ValueError, match="range"):
        dice_iou(np.array([[0, 5]]), np.array([[0, 1]]), 2)
