"""Segmenter training loss with an ignore label (Cityscapes / StreetHazards ``255``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["DiceCEIgnoreLoss"]


class DiceCEIgnoreLoss(nn.Module):
    """``lambda_dice * Dice + lambda_ce * CE`` over labelled pixels only.

    MONAI's ``DiceCELoss`` has no ``ignore_index`` (its ``DiceLoss`` has), so this pairs MONAI's ``DiceLoss``
    (softmax, one-hot target, ``ignore_index``) with ``torch``'s cross-entropy (``ignore_index``). It has the
    ``loss(logits, label)`` call of MONAI's ``SupervisedTrainer``.

    Args:
        ignore_index: label value left out of both terms.
        lambda_dice, lambda_ce: term weights (``lambda_dice=0`` gives plain cross-entropy, as FCN / DeepLab).

    Shapes: ``logits`` (B, C, *S); ``label`` (B, 1, *S) integer-valued (any dtype) -> scalar.
    """

    def __init__(self, ignore_index: int = 255, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=self.ignore_index)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if label.ndim != logits.ndim or label.shape[1] != 1:
            raise ValueError(f"label must be (B, 1, *S) for logits {tuple(logits.shape)}, got {tuple(label.shape)}")
        target = torch.as_tensor(label).round().long()[:, 0]
        loss = self.lambda_ce * F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
        if self.lambda_dice:
            loss = loss + self.lambda_dice * self.dice(logits.float(), torch.as_tensor(label).float())
        return loss
