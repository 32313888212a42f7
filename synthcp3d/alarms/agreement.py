"""Label-free baselines of segmentation quality that the failure-detection literature uses (Zenk et al., MedIA
2025: the pairwise Dice between an ensemble's predictions is the strongest simple one; Roy et al., 2019):

* :func:`pairwise_dice_agreement` — mean Dice over all pairs of K label maps, per region.
* :func:`foreground_uncertainty` — mean max-softmax probability (MSP) and mean ``1 - normalised predictive
  entropy`` over the predicted foreground of each region, from the softmax probabilities of one model.

All three are confidences in [0, 1], higher = more confident, one number per region of :data:`REGIONS`
(in :data:`~synthcp3d.alarms.samples.CLASS_NAMES` order). The functions are dimension-generic (2D slices, 3D
volumes) and take NumPy arrays or torch tensors; computation is NumPy on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

__all__ = ["REGIONS", "foreground_uncertainty", "nifti_uncertainty", "pairwise_dice_agreement", "region_masks"]

Regions = Sequence[tuple[str, Sequence[int]]]

REGIONS: tuple[tuple[str, tuple[int, ...]], ...] = (("pancreas", (1, 2)), ("tumour", (2,)))
"""Region name -> label values, in :data:`~synthcp3d.alarms.samples.CLASS_NAMES` order: pancreas = labels {1, 2}
(pancreas incl. tumour, as MSD evaluates and :func:`~synthcp3d.alarms.samples.case_dice` counts it: label >= 1
for the trained classes 0..2), tumour = label 2."""


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def region_masks(label_map: np.ndarray | torch.Tensor, classes: Regions = REGIONS) -> np.ndarray:
    """Boolean masks ``(K, *S)`` of the K regions of an integer label map ``(*S)`` (region k = the voxels whose
    label is one of ``classes[k][1]``)."""
    lab = _numpy(label_map)
    return np.stack([np.isin(lab, np.asarray(tuple(values))) for _, values in classes])


def _dice(a: np.ndarray, b: np.ndarray, size_a: int, size_b: int) -> float:
    """Dice of two boolean masks of known sizes; two empty masks agree perfectly (1), one empty one not (0)."""
    if size_a + size_b == 0:
        return 1.0
    return 2.0 * float(np.count_nonzero(a & b)) / float(size_a + size_b)


def pairwise_dice_agreement(label_maps: Sequence[np.ndarray | torch.Tensor], classes: Regions = REGIONS,
                            ) -> np.ndarray:  # fmt: skip
    """Mean pairwise Dice among M >= 2 predictions of one case, per region (Roy et al. 2019; Zenk et al. 2025).

    For region k, the Dice of every pair (i, j), i < j, of the masks ``isin(label_maps[i], classes[k][1])`` is
    averaged over the ``M (M - 1) / 2`` pairs. Two empty masks agree perfectly (Dice 1), an empty and a non-empty
    one not at all (0), so the value is always defined: an ensemble that agrees there is no tumour is confident.

    Args:
        label_maps: M integer label maps of one shape ``(*S)`` (any dimension), e.g. the final model's and the
            fold models' segmentations of one image.
        classes: ``(name, label values)`` per region; default :data:`REGIONS` (pancreas {1, 2}, tumour {2}).

    Returns:
        ``(K,)`` float64 agreement per region, in [0, 1].

    Raises:
        ValueError: fewer than two label maps, or maps of different shapes.
    """
    maps = [_numpy(m) for m in label_maps]
    if len(maps) < 2:
        raise ValueError(f"pairwise agreement needs at least 2 label maps, got {len(maps)}")
    shapes = {m.shape for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"label maps of different shapes: {sorted(shapes)}")
    out = np.empty(len(classes), np.float64)
    for k, (_, values) in enumerate(classes):
        masks = [np.isin(m, np.asarray(tuple(values))) for m in maps]
        sizes = [int(np.count_nonzero(m)) for m in masks]
        pairs = [_dice(masks[i], masks[j], sizes[i], sizes[j]) for i, j in combinations(range(len(masks)), 2)]
        out[k] = float(np.mean(pairs))
    return out


def foreground_uncertainty(probs: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor,
                           classes: Regions = REGIONS) -> dict[str, np.ndarray]:  # fmt: skip
    """Aggregated softmax confidence of one segmentation over the predicted foreground of each region.

    Per voxel: MSP = ``max_c p_c`` and the normalised predictive entropy ``H = -sum_c p_c log p_c / log C``
    (in [0, 1]; ``0 log 0 = 0``). Per region k, over the voxels ``isin(pred, classes[k][1])``: the mean MSP and
    the mean ``1 - H`` (a confidence, higher = more confident, like MSP).

    Args:
        probs: softmax probabilities ``(C, *S)``, C >= 2 (channel first; a NIfTI ``probs.nii.gz`` of
            :func:`~synthcp3d.engines.segmentation.predict_volumes` is ``(*S, C)``: move the axis first).
        pred: integer label map ``(*S)``, normally the arg-max of ``probs``.
        classes: ``(name, label values)`` per region; default :data:`REGIONS`.

    Returns:
        ``{"msp": (K,), "entropy": (K,)}`` float64 in [0, 1], NaN where the predicted region is empty.

    Raises:
        ValueError: fewer than 2 classes or ``pred`` not of the spatial shape of ``probs``.
    """
    p, lab = _numpy(probs), _numpy(pred)
    if p.ndim < 2 or p.shape[0] < 2:
        raise ValueError(f"probs must be (C, *S) with C >= 2 classes, got shape {p.shape}")
    if p.shape[1:] != lab.shape:
        raise ValueError(f"pred {lab.shape} does not match the spatial shape of probs {p.shape[1:]}")
    masks = region_masks(lab, classes)
    union = masks.any(0)
    # only the predicted foreground is read: (C, n) with n the foreground voxels (a small part of a CT volume)
    fg = np.clip(p[:, union].astype(np.float64), 0.0, 1.0)
    msp = fg.max(0, initial=0.0)
    plogp = fg * np.log(np.where(fg > 0, fg, 1.0))  # 0 log 0 = 0
    # probabilities interpolated onto the input grid may sum to 1 only up to rounding: keep H in [0, 1]
    ent = np.clip(-plogp.sum(0) / math.log(p.shape[0]), 0.0, 1.0)
    out = {"msp": np.full(len(classes), np.nan), "entropy": np.full(len(classes), np.nan)}
    for k in range(len(classes)):
        sel = masks[k][union]
        if sel.any():
            out["msp"][k] = float(msp[sel].mean())
            out["entropy"][k] = float(1.0 - ent[sel].mean())
    return out


def nifti_uncertainty(pred: str | Path | np.ndarray, probs: str | Path,
                      classes: Regions = REGIONS) -> dict[str, np.ndarray]:  # fmt: skip
    """:func:`foreground_uncertainty` of a saved segmentation: ``pred.nii.gz`` (*S; or its array, already read)
    and the ``probs.nii.gz`` (*S, C) :func:`~synthcp3d.engines.segmentation.predict_volumes` writes next to it."""
    from synthcp3d.data.msd import read_volume

    lab = np.asarray(pred) if isinstance(pred, np.ndarray) else np.asarray(read_volume(pred)[0])
    p = np.moveaxis(np.asarray(read_volume(probs)[0], np.float32), -1, 0)  # (X, Y, Z, C) -> (C, X, Y, Z)
    return foreground_uncertainty(p, lab, classes)
