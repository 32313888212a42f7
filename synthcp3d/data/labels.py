"""Label maps: the one one-hot encoding every module uses (segmenter targets aside), box dilation, and the
mapping of a foreign tool's label values onto the trained classes."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["box_dilate", "one_hot", "parse_label_map", "remap_labels"]


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


def parse_label_map(spec: str | Mapping[int, int] | None) -> dict[int, int]:
    """``"1:1,2:2,3:0"`` (or a mapping, or None: {}) -> ``{source value: trained class}``; ValueError if malformed."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        try:
            pairs = [tuple(p.split(":")) for p in str(spec).split(",")]
            if any(len(p) != 2 for p in pairs):
                raise ValueError
        except ValueError:
            raise ValueError(f"label map {spec!r}: expected 'source:target,...', e.g. '1:1,2:2,3:0'") from None
    try:
        out = {int(a): int(b) for a, b in pairs}
    except (TypeError, ValueError):
        raise ValueError(f"label map {spec!r}: values must be integers") from None
    if any(v < 0 for kv in out.items() for v in kv):
        raise ValueError(f"label map {spec!r}: values must be >= 0")
    return out


def remap_labels(label: np.ndarray, num_classes: int, label_map: Mapping[int, int] | None = None,
                 path: str | os.PathLike | None = None) -> np.ndarray:  # fmt: skip
    """Map a label map's values through ``label_map`` (values it does not name stay) and check the result.

    Returns:
        int16 array of ``label``'s shape with values in ``0..num_classes-1``.

    Raises:
        DataError: naming ``path``: non-integer values, or a value outside the trained classes that the map
            does not send inside them (the message lists the values and how to map them).
    """
    from synthcp3d.data.io import DataError

    a = np.asarray(label)
    if np.issubdtype(a.dtype, np.floating) and not (np.isfinite(a).all() and np.all(a == np.round(a))):
        raise DataError(path, "label map holds non-integer or non-finite values")
    a = a.astype(np.int64)
    lut = {v: v for v in np.unique(a).tolist()} | dict(label_map or {})
    bad = sorted(v for v in np.unique(a).tolist() if not 0 <= lut[v] < num_classes)
    if bad:
        raise DataError(path, f"label values {bad} are outside the trained classes 0..{num_classes - 1}: pass a "
                              f"label map sending them to one, e.g. --label-map {bad[0]}:0")  # fmt: skip
    values = np.array(sorted(lut))
    return np.array([lut[v] for v in values], np.int16)[np.searchsorted(values, a)]
