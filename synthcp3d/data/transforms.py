"""MONAI preprocessing chains for CT volumes, as MONAI's pancreas bundles build them.

Load -> channel first -> RAS orientation -> resample to ``pixdim`` -> HU window to [0, 1]; training adds
crops sampled by label class and flips; inference keeps the metadata so that predictions are inverted
back onto the original grid (:func:`invert_to_input`), so a prediction NIfTI overlays its input.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai import transforms as mt

__all__ = ["ct_inference_transforms", "ct_train_transforms", "load_resampled"]


def load_resampled(keys: Sequence[str], pixdim: Sequence[float], modes: Sequence[str]) -> list:
    """Load -> channel first -> RAS -> resample ``keys`` to ``pixdim`` with one interpolation mode per key."""
    return [
        mt.LoadImaged(keys=list(keys), image_only=False),
        mt.EnsureChannelFirstd(keys=list(keys)),
        mt.Orientationd(keys=list(keys), axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys=list(keys), pixdim=tuple(pixdim), mode=list(modes)),
    ]


def _base(keys: Sequence[str], pixdim: Sequence[float], hu_window: Sequence[float], has_label: bool) -> list:
    modes = ["bilinear", "nearest"] if has_label else ["bilinear"]
    return [
        *load_resampled(keys, pixdim, modes[: len(keys)]),
        mt.ScaleIntensityRanged(keys="image", a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0,
                                clip=True),
    ]  # fmt: skip


def ct_train_transforms(
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    roi_size: Sequence[int] = (48, 48, 32),
    num_classes: int = 3,
    class_ratios: Sequence[float] | None = (1.0, 2.0, 3.0),
    num_samples: int = 2,
    augment: bool = True,
) -> mt.Compose:
    """Training chain on ``{"image", "label"}`` file dicts -> ``num_samples`` crops ``(1, *roi_size)`` each.

    Crops are centred on classes drawn with ``class_ratios`` (background, pancreas, tumour), so the small
    tumour is seen often; volumes smaller than ``roi_size`` are padded first.
    """
    chain = _base(("image", "label"), pixdim, hu_window, True)
    chain += [
        mt.SpatialPadd(keys=["image", "label"], spatial_size=tuple(roi_size)),
        mt.RandCropByLabelClassesd(keys=["image", "label"], label_key="label", spatial_size=tuple(roi_size),
                                   num_classes=num_classes, ratios=None if class_ratios is None else list(class_ratios),
                                   num_samples=num_samples, warn=False),
    ]  # fmt: skip
    if augment:
        chain += [
            mt.RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
            mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            mt.RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
        ]
    chain.append(mt.EnsureTyped(keys=["image", "label"], track_meta=True))
    return mt.Compose(chain)


def ct_inference_transforms(
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    with_label: bool = False,
) -> mt.Compose:
    """Deterministic chain for whole volumes: ``{"image"[, "label"]}`` -> ``(1, X', Y', Z')`` MetaTensors."""
    keys = ("image", "label") if with_label else ("image",)
    return mt.Compose([*_base(keys, pixdim, hu_window, with_label), mt.EnsureTyped(keys=list(keys), track_meta=True)])
