import pytest
import torch

from synthcp3d.losses import ComparatorLoss


def test_l1_score_term_masks_absent_classes():
    pred = torch.tensor([[0.2, 0.9, 0.5], [0.4, 0.1, 0.0]], requires_grad=True)
    true = torch.tensor([[0.0, float("nan"), 1.0], [0.4, 0.6, float("nan")]])
    out = ComparatorLoss()({"scores": pred}, true_scores=true)
    assert torch.isclose(out["score"], torch.tensor((0.2 + 0.5 + 0.0 + 0.5) / 4))
    assert torch.equal(out["loss"], out["score"]) and out["error"] == 0
    out["loss"].backward()
    assert pred.grad[0, 1] == 0 and pred.grad[1, 2] == 0 and pred.grad[0, 0] != 0


def test_smooth_l1_and_weights():
    pred, true = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.05, 0.0]])
    out = ComparatorLoss("smooth_l1", score_weight=2.0, beta=0.1)({"scores": pred}, true)
    expected = (0.5 * 0.05**2 / 0.1 + (1.0 - 0.05)) / 2
    assert torch.isclose(out["score"], torch.tensor(expected))
    assert torch.isclose(out["loss"], 2 * out["score"])


def test_all_absent_gives_zero_with_graph():
    pred = torch.rand(2, 3, requires_grad=True)
    out = ComparatorLoss()({"scores": pred}, torch.full((2, 3), float("nan")))
    assert out["loss"] == 0 and out["loss"].requires_grad


def test_error_term_is_bce_masked_on_ignore():
    logits = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    true = (torch.rand(2, 1, 4, 4, 4) > 0.5).float()
    ignore = torch.zeros(2, 1, 4, 4, 4, dtype=torch.bool)
    ignore[:, :, :2] = True
    out = ComparatorLoss(error_weight=0.5)({"error_logits": logits}, true_error=true, ignore=ignore)
    keep = ~ignore
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], true[keep])
    assert torch.isclose(out["error"], expected) and torch.isclose(out["loss"], 0.5 * expected)
    out["loss"].backward()
    assert (logits.grad[ignore] == 0).all() and (logits.grad[keep] != 0).all()
    no_mask = ComparatorLoss()({"error_logits": logits}, true_error=true)
    assert torch.isclose(no_mask["error"], torch.nn.functional.binary_cross_entropy_with_logits(logits, true))


def test_joint_and_bad_inputs():
    loss = ComparatorLoss()
    pred = {"scores": torch.rand(1, 2), "error_logits": torch.randn(1, 1, 8, 8)}
    out = loss(pred, torch.rand(1, 2), torch.zeros(1, 1, 8, 8))
    assert torch.isclose(out["loss"], out["score"] + out["error"])
    with pytest.raises(ValueError, match="true_scores is None"):
        loss(pred, None, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="differ"):
        loss(pred, torch.rand(1, 3), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="neither"):
        loss({})
    with pytest.raises(ValueError, match="score_loss"):
        ComparatorLoss("l2")
