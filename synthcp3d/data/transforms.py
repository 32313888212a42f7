"""MONAI preprocessing chains for CT volumes, as MONAI's pancreas bundles build them.

Load -> channel first -> RAS orientation -> resample to ``pixdim`` -> HU window to [0, 1]; training adds
crops sampled by label class and flips; inference keeps the metadata so that predictions are inverted
back onto the original grid (:func:`invert_to_input`), so a prediction NIfTI overlays its input.

:func:`scene_transforms` is the 2D counterpart for street scenes (Cityscapes, StreetHazards PNGs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from monai import transforms as mt

__all__ = ["ct_inference_transforms", "ct_train_transforms", "load_resampled", "scene_transforms"]


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


def scene_transforms(
    load: Callable[[Mapping], dict],
    size: Sequence[int] | None = None,
    *,
    train: bool = False,
    image_range: Sequence[float] = (0.0, 1.0),
) -> mt.Compose:
    """Chain for 2D street-scene datalist entries ``{"image": png, "label": png, ...}``.

    ``load`` reads and checks the pair (e.g. :func:`~synthcp3d.data.cityscapes.load_cityscapes` or
    :func:`~synthcp3d.data.streethazards.load_streethazards`); then the pair is resized to ``size`` (image
    bilinear with anti-aliasing, label nearest, so 255 = ignore survives), flipped left-right at random when
    ``train``, and the image is mapped linearly from [0, 1] to ``image_range`` (``(-1, 1)`` for SPADE).

    Returns:
        A ``Compose``: entry -> ``{"image": float32 (3, H, W), "label": int64 (1, H, W), ...other keys}``.
    """
    keys = ["image", "label"]
    chain: list = [load]
    if size is not None:
        chain.append(mt.Resized(keys=keys, spatial_size=tuple(size), mode=["bilinear", "nearest"],
                                anti_aliasing=[True, False]))  # fmt: skip
    if train:
        chain.append(mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1))
    lo, hi = (float(v) for v in image_range)
    if (lo, hi) != (0.0, 1.0):
        chain.append(mt.ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=lo, b_max=hi))
    chain += [mt.EnsureTyped(keys="image", dtype="float32", track_meta=False),
              mt.EnsureTyped(keys="label", dtype="int64", track_meta=False)]  # fmt: skip
    return mt.Compose(chain)
