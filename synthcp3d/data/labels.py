"""Label maps as network inputs: the one one-hot encoding every module uses (segmenter targets aside)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["one_hot"]


def one_hot(label: torch.Tensor, num_classes: int, ignore_index: int | None = None, dim: int = 0) -> torch.Tensor:
    """Integer label map -> float one-hot with the class axis inserted at ``dim``.

    ``ignore_index`` pixels / voxels get an all-zero vector (no label signal: SPADE's "don't care", the
    comparator's unlabelled pixels).

    Shapes: ``(*S)`` -> ``(num_classes, *S)`` with ``dim=0``; ``(B, *S)`` -> ``(B, num_classes, *S)`` with ``dim=1``.

    Raises:
        ValueError: a value outside ``[0, num_classes)`` that is not ``ignore_index``.
    """
    label = torch.as_tensor(label).long()
    keep = None if ignore_index is None else label != ignore_index
    valid = label if keep is None else label[keep]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        raise ValueError(f"label values {int(valid.min())}..{int(valid.max())} outside [0, {num_classes - 1}]"
                         + (f" (ignore_index={ignore_index})" if ignore_index is not None else ""))  # fmt: skip
    out = F.one_hot(label if keep is None else torch.where(keep, label, 0), num_classes).movedim(-1, dim).float()
    return out if keep is None else out * keep.unsqueeze(dim)
