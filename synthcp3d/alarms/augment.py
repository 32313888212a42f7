"""More training pairs for the alarms: perturbed label maps with their synthesized images and true Dice.

The 3D alarms learn from the segmenter's cross-validation predictions, one per case: a few dozen samples whose
tumour Dice often sits in a narrow band. Perturbing a case's predicted or true label map (grow, shrink, shift
or drop the tumour, add a spurious one, grow or shrink the organ) gives new (x, ŷ', x̂' = G(ŷ'), Dice(ŷ', y))
samples with known targets spread over [0, 1], in the spirit of SynthCP's comparison: the comparator must tell
from x and x̂' whether ŷ' is right. As in TorchIO, random parameters are drawn (:func:`draw_perturbation`) apart
from their application (:func:`apply_perturbation`), so a perturbation can be logged and replayed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from synthcp3d.alarms.samples import case_dice, mask_channels
from synthcp3d.data.labels import box_dilate, one_hot
from synthcp3d.engines.inferers import autocast_context, to_channels_last

__all__ = ["PERTURBATIONS", "apply_perturbation", "augment_samples", "draw_perturbation", "synthesize_crops"]

PERTURBATIONS = ("tumour_dilate", "tumour_erode", "tumour_shift", "tumour_drop", "tumour_add", "organ_dilate",
                 "organ_erode")  # fmt: skip


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of ``mask`` (*S) bool by a (2r+1)-cube (2D or 3D)."""
    return box_dilate(mask, r, mask.ndim)


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    return ~_dilate(~mask, r)


def draw_perturbation(rng: np.random.Generator, spatial_dims: int = 3, max_ops: int = 2) -> list[dict]:
    """1..``max_ops`` random perturbations ``[{"op": name, ...params}]`` (names: :data:`PERTURBATIONS`)."""
    ops = []
    for _ in range(int(rng.integers(1, max_ops + 1))):
        op = str(rng.choice(PERTURBATIONS))
        p: dict = {"op": op}
        if op in ("tumour_dilate", "tumour_erode", "organ_dilate", "organ_erode"):
            p["radius"] = int(rng.integers(1, 3))
        elif op == "tumour_shift":
            p["shift"] = [int(v) for v in rng.integers(-4, 5, size=spatial_dims)]
        elif op == "tumour_add":
            p["radius"] = int(rng.integers(2, 5))
            p["position"] = [float(v) for v in rng.random(spatial_dims)]  # fraction along the organ's voxel list
        ops.append(p)
    return ops


def apply_perturbation(label: torch.Tensor, ops: Sequence[dict]) -> torch.Tensor:
    """Apply :func:`draw_perturbation` output to a label map ``(*S)`` with 0 background, 1 organ, 2 tumour.

    Tumour voxels removed become organ; tumour added outside the organ enlarges the organ.

    Returns:
        A new int64 label map ``(*S)``.
    """
    organ, tumour = label >= 1, label == 2
    for p in ops:
        op = p["op"]
        if op == "tumour_dilate":
            tumour = _dilate(tumour, p["radius"])
        elif op == "tumour_erode":
            tumour = _erode(tumour, p["radius"])
        elif op == "tumour_shift":
            tumour = torch.roll(tumour, shifts=tuple(p["shift"]), dims=tuple(range(tumour.ndim)))
        elif op == "tumour_drop":
            tumour = torch.zeros_like(tumour)
        elif op == "tumour_add":
            nz = torch.nonzero(organ)
            if len(nz):
                centre = nz[min(int(p["position"][0] * len(nz)), len(nz) - 1)].double()
                grid = torch.stack(torch.meshgrid(*(torch.arange(s) for s in label.shape), indexing="ij"), -1)
                tumour = tumour | (((grid - centre) ** 2).sum(-1) <= p["radius"] ** 2)
        elif op == "organ_dilate":
            organ = _dilate(organ, p["radius"])
        elif op == "organ_erode":
            organ = _erode(organ, p["radius"])
            tumour = tumour & organ
        else:
            raise ValueError(f"unknown perturbation {op!r}; expected one of {PERTURBATIONS}")
        organ = organ | tumour
    out = organ.long()
    out[tumour] = 2
    return out


def _label_of(mask: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`~synthcp3d.alarms.samples.mask_channels`: (2, *S) -> label map (*S) in {0, 1, 2}."""
    return (mask[0].long() + mask[1].long()).clamp_max(2)


def _synthesize_crop(generator: torch.nn.Module, onehot: torch.Tensor, amp_dtype, device) -> torch.Tensor:
    """``G(one-hot ŷ)`` on one crop ``(C, *R)`` -> ``(1, *R)`` in the [0, 1] window of the image."""
    with autocast_context(device, amp_dtype):
        y = generator(to_channels_last(onehot[None].float().to(device)))
    return ((y[0].float().clamp(-1, 1) + 1) / 2).cpu()


@torch.no_grad()
def synthesize_crops(
    samples: Sequence[dict],
    generator: torch.nn.Module,
    *,
    num_classes: int = 3,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Copies of ``samples`` whose ``"synth"`` is ``G(one-hot ŷ)`` on the crop itself.

    The one synthesis path of the comparator: real CV cases, perturbed copies (:func:`augment_samples`) and new
    images all get x̂ from the same crop-sized generator pass on the resampled grid, instead of real cases going
    through a whole-volume synthesis, an inversion onto the input grid and a second resampling (which blurs x̂
    and made the comparator's training and test inputs differ).

    Shapes: each sample's ``"pred_mask"`` (2, *R) -> ``"synth"`` (1, *R) float32 in [0, 1].
    """
    device = torch.device(device)
    generator = generator.to(device).eval()
    return [{**s, "synth": _synthesize_crop(generator, one_hot(_label_of(s["pred_mask"]), num_classes), amp_dtype,
                                            device)} for s in samples]  # fmt: skip


@torch.no_grad()
def augment_samples(
    samples: Sequence[dict],
    generator: torch.nn.Module,
    *,
    per_case: int = 4,
    num_classes: int = 3,
    from_label_prob: float = 0.5,
    seed: int = 0,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
) -> list[dict]:
    """``per_case`` perturbed copies of every labelled sample of :func:`~synthcp3d.alarms.samples.build_samples`.

    Each copy perturbs the crop's predicted label map (or, with probability ``from_label_prob``, the true one),
    synthesizes ``x̂' = G(one-hot(ŷ'))`` on the crop with ``generator`` (eval mode; its output in [-1, 1] maps to
    the [0, 1] window of the image), and recomputes the error map and the crop's true Dice. The image, ignore
    mask and ground truth are shared with the source sample. Copies have ``"augmented": True``, ``"probs"`` =
    one-hot ŷ' ``(C, *R)`` and ``"perturbation"`` (the drawn parameters).

    Returns:
        The new samples (the inputs are not modified or included).
    """
    device = torch.device(device)
    generator = generator.to(device).eval()
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        if s.get("label_mask") is None:
            continue
        label = _label_of(s["label_mask"])
        pred = _label_of(s["pred_mask"])
        for _ in range(per_case):
            base = label if rng.random() < from_label_prob else pred
            ops = draw_perturbation(rng, spatial_dims=label.ndim)
            new = apply_perturbation(base, ops)
            onehot = one_hot(new, num_classes)
            synth = _synthesize_crop(generator, onehot, amp_dtype, device)
            true = case_dice(new, label)
            target = torch.full((num_classes,), float("nan"))
            target[1:3] = torch.as_tensor(true, dtype=torch.float32)
            out.append({
                **{k: s[k] for k in ("case_id", "split", "fold", "paths", "image", "ignore", "label_mask", "grid")},
                "synth": synth, "probs": onehot, "pred_mask": mask_channels(new).to(torch.uint8),
                "error": (new != label)[None].to(torch.uint8), "true": true, "target": target,
                "augmented": True, "perturbation": ops,
            })  # fmt: skip
    return out
