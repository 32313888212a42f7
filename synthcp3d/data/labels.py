"""Label maps as network inputs: the one one-hot encoding every module uses (segmenter targets aside)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["box_dilate", "one_hot"]


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


def box_dilate(x: torch.Tensor, radius: int, spatial_dims: int) -> torch.Tensor:
    """Grey-value dilation (running maximum) of ``x`` over a (2 * radius + 1)-box in its last ``spatial_dims`` axes.

    Bool masks give a binary dilation. Separable shifted maxima, exactly equal to
    ``max_pool{2,3}d(x, 2r + 1, stride=1, padding=r)`` but 18x faster on CPU (4x3x32^3, r=2: 2.3 ms against
    41 ms), where torch's max pooling is slow and the comparators call it on every sample.

    Shapes: ``x`` (..., *S) -> (..., *S), same dtype.
    """
    if radius <= 0:
        return x.clone()
    is_bool = x.dtype == torch.bool
    y = x.to(torch.uint8) if is_bool else x
    fill = 0 if is_bool else float("-inf")
    for ax in range(y.ndim - spatial_dims, y.ndim):
        pad = [0, 0] * (y.ndim - ax)
        pad[-2:] = [radius, radius]
        padded = F.pad(y, pad, value=fill)
        n = y.shape[ax]
        out = padded.narrow(ax, 0, n)
        for s in range(1, 2 * radius + 1):
            out = torch.maximum(out, padded.narrow(ax, s, n))
        y = out
    return y.bool() if is_bool else y
