"""Per-case, per-class Dice and IoU of label maps, with an ignore label.

Convention: a class absent from both the prediction and the ground truth of a case (over its
non-ignored voxels) is excluded: NaN, not 0 or 1. A class predicted but absent from the ground
truth (or the reverse) scores 0.

Why not ``monai.metrics.compute_dice`` / ``compute_iou``: with ``ignore_empty=True`` they return NaN
whenever the ground truth is empty, also when the class was wrongly predicted (that should score 0,
and it is exactly the failure a quality alarm must see); with ``ignore_empty=False`` they return 1 when
both are empty. Neither is the convention above. They also want one-hot inputs (``classes`` times the
memory of a label map). Counting voxels per class with ``bincount`` is O(voxels) and matches MONAI
(``ignore_empty=False``) wherever the ground truth is non-empty; the tests check that.
"""

from __future__ import annotations

import numpy as np
import torch

from .curves import as_tensor

__all__ = ["dice_iou"]


def dice_iou(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU per case and class from integer label maps.

    Args:
        pred: [cases, *spatial] predicted labels in [0, num_classes).
        target: [cases, *spatial] ground-truth labels in [0, num_classes), or ``ignore_index``.
        num_classes: number of classes C (background included; drop column 0 yourself if unwanted).
        ignore_index: label in ``target`` whose voxels are left out of every class (e.g. 255).

    Returns:
        (dice, iou), each float64 [cases, C] in [0, 1], NaN where the class is absent from both.
    """
    p, t = as_tensor(pred), as_tensor(target).to(as_tensor(pred).device)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.ndim < 1:
        raise ValueError("pred and target need a leading cases axis")
    if p.is_floating_point() or t.is_floating_point():
        raise TypeError(f"pred and target must be integer label maps, got {p.dtype} and {t.dtype}")
    n, c = p.shape[0], int(num_classes)
    p, t = p.reshape(n, -1).long(), t.reshape(n, -1).long()
    keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    for name, x in (("pred", p[keep]), ("target", t[keep])):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= c):
            raise ValueError(f"{name} labels must lie in [0, {c}) (ignore_index={ignore_index}), "
                             f"got range [{int(x.min())}, {int(x.max())}]")
    offset = torch.arange(n, device=p.device)[:, None] * c
    size = n * c

    def count(labels: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return torch.bincount((labels + offset)[where], minlength=size).view(n, c).double()

    tp = count(t, keep & (p == t))
    n_pred, n_true = count(p, keep), count(t, keep)
    union = n_pred + n_true - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=p.device)
    dice = torch.where(union > 0, 2 * tp / (n_pred + n_true).clamp(min=1), nan)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    return dice, iou
