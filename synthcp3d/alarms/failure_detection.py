"""Failure detection on street-scene segmentations (paper sections 3.2 and 4.1, Table 1).

Inputs are a segmenter's prediction index in :data:`~synthcp3d.engines.segmentation.SCENE_PREDICTION_LAYOUT`
(``image.png``, ``label.png``, ``pred.png``, ``probs.npy``, ``mc_probs.npy`` per image) and the synthesized
``<synth_dir>/<case_id>/synth.png`` of each prediction. The comparison networks are the package's
dims-generic :class:`~synthcp3d.networks.SiameseComparator` / :class:`~synthcp3d.networks.DirectPredictor`
(``spatial_dims=2``), trained by :func:`~synthcp3d.alarms.comparator.train_comparator` with the paper's eq. 8
on per-class IoU (eq. 6) and the pixel error map (eq. 7); ignore pixels (255) have no error target and are
left out of every metric.

Network roles (keys of ``networks``): ``"joint"`` (both heads: SynthCP-joint), ``"score"`` and ``"error"``
(one head each: SynthCP-separate), ``"direct"`` (no synthesized image: the Direct Prediction ablation). The
VAE alarm (Liu et al. 2019) is a :class:`~synthcp3d.networks.ShapeVAE` (``spatial_dims=2``) on one-hot label
maps resized to ``vae_size`` plus a ridge regressor from its features to per-class IoU
(:mod:`synthcp3d.alarms.vae`). Baselines without training are in :mod:`synthcp3d.alarms.baselines`.

Protocol (as the paper): the detectors are trained on the 4-fold cross-validation predictions of the training
set (``split == "cv"``) and evaluated on the validation-set predictions of the final segmenter
(``split == "test"``). Image level: MAE / STD / Pearson / Spearman of predicted vs. true IoU per class, averaged
over the classes (:func:`~synthcp3d.metrics.image_level`). Pixel level: AUPR-Error, AUPR-Success, AUROC and
FPR95 pooled over all labelled pixels of all images (:class:`~synthcp3d.metrics.PixelFailureMetrics`).

Samples are held in memory (fine for the phantom and for a few hundred 256x512 images; the full 2975-image
training set at 512x1024 would need a lazy dataset instead).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthcp3d.alarms.baselines import PIXEL_BASELINES, mc_dropout_iou, pixel_confidence
from synthcp3d.alarms.comparator import comparator_forward, train_comparator
from synthcp3d.alarms.vae import fit_dice_regressor, predict_dice_regressor, train_shape_vae, vae_features
from synthcp3d.data.io import DataError, atomic_write_text, read_json, read_png
from synthcp3d.data.labels import one_hot
from synthcp3d.engines.checkpoints import load_weights
from synthcp3d.engines.inferers import autocast_context
from synthcp3d.metrics import PixelFailureMetrics, dice_iou, image_level
from synthcp3d.reports.tables import json_safe

__all__ = ["IMAGE_METHODS", "METHOD_LABELS", "PIXEL_METHODS", "ROLES", "evaluate_failure_detection",
           "evaluate_index", "load_failure_samples", "train_failure_detectors"]  # fmt: skip

logger = logging.getLogger(__name__)

ROLES = ("joint", "score", "error", "direct")
METHOD_LABELS = {
    "msp": "MSP",
    "entropy": "Entropy",
    "mcdropout": "MCDropout",
    "vae_alarm": "VAE alarm",
    "direct": "Direct Prediction",
    "synthcp_separate": "SynthCP-separate",
    "synthcp_joint": "SynthCP-joint",
}
"""Table 1 rows, in order."""
IMAGE_METHODS = ("mcdropout", "vae_alarm", "direct", "synthcp_separate", "synthcp_joint")
PIXEL_METHODS = ("msp", "entropy", "mcdropout", "direct", "synthcp_separate", "synthcp_joint")
# method -> (network role giving per-class IoU, role giving the error map)
_NETWORK_METHODS = {"direct": ("direct", "direct"), "synthcp_separate": ("score", "error"),
                    "synthcp_joint": ("joint", "joint")}  # fmt: skip
MANIFEST = "failure_models.json"


def _read_index(index: str | Path | Mapping) -> dict:
    return dict(read_json(index)) if isinstance(index, (str, Path)) else dict(index)


def load_failure_samples(
    index: str | Path | Mapping,
    synth_dir: str | Path | None,
    *,
    num_classes: int = 19,
    ignore_index: int = 255,
    split: str | None = None,
    pred_input: str = "onehot",
) -> list[dict]:
    """Load the comparator samples of a scene prediction index (sorted by case id).

    Args:
        index: ``predictions/index.json`` (path or dict) of :func:`~synthcp3d.engines.segmentation.cross_validate`
            with the scene writer.
        synth_dir: folder of ``<case_id>/synth.png`` (``None``: no synthesized images, Direct Prediction only).
        split: keep only ``"cv"`` or ``"test"`` records (default all).
        pred_input: the comparator's ŷ: ``"onehot"`` of the prediction (the paper's) or the segmenter's softmax
            ``"probs"`` (its ``probs.npy``), which also carries the segmenter's own confidence.

    Returns:
        One dict per image: ``case_id``, ``split``, ``paths`` (the index record), ``image`` and ``synth``
        float32 ``(3, H, W)`` in [0, 1] (``synth`` ``None`` without ``synth_dir``), ``probs`` the one-hot of the
        prediction ``(C, H, W)`` (the comparator's ŷ input), ``pred`` int64 ``(H, W)``; with a label also
        ``label`` ``(H, W)``, ``target`` true per-class IoU ``(C,)`` (NaN: class absent from prediction and
        label), ``error`` ``(1, H, W)`` float (1 = wrong) and ``ignore`` ``(1, H, W)`` bool; else these are ``None``.

    Raises:
        DataError: a missing or unreadable file, or a synthesized image of another size.
    """
    if pred_input not in ("onehot", "probs"):
        raise ValueError(f"pred_input must be 'onehot' or 'probs', got {pred_input!r}")
    out = []
    for cid, rec in sorted(_read_index(index).items()):
        if split is not None and rec.get("split") != split:
            continue
        image = torch.from_numpy(read_png(rec["image"]).astype(np.float32) / 255).permute(2, 0, 1)
        pred = torch.from_numpy(read_png(rec["pred"]).astype(np.int64))
        synth = None
        if synth_dir is not None:
            path = Path(synth_dir) / cid / "synth.png"
            synth = torch.from_numpy(read_png(path).astype(np.float32) / 255).permute(2, 0, 1)
            if synth.shape != image.shape:
                raise DataError(path, f"synthesized image {tuple(synth.shape)} does not match the input "
                                f"{tuple(image.shape)} of case {cid!r}")  # fmt: skip
        s = {"case_id": cid, "split": rec.get("split"), "paths": dict(rec), "image": image, "synth": synth,
             "probs": one_hot(pred, num_classes) if pred_input == "onehot" else _softmax(rec, num_classes),
             "pred": pred, "label": None, "target": None,
             "error": None, "ignore": None}  # fmt: skip
        if rec.get("label"):
            label = torch.from_numpy(read_png(rec["label"]).astype(np.int64))
            ignore = label == ignore_index
            _, iou = dice_iou(pred[None], label[None], num_classes, ignore_index)
            s.update(label=label, target=iou[0].float(), ignore=ignore[None],
                     error=((pred != label) & ~ignore)[None].float())  # fmt: skip
        out.append(s)
    if not out:
        raise DataError(index if isinstance(index, (str, Path)) else None, f"no predictions with split={split!r}")
    return out


def _softmax(rec: Mapping, num_classes: int) -> torch.Tensor:
    """The record's ``probs.npy`` as float32 (C, H, W)."""
    path = rec.get("probs")
    if not path:
        raise DataError(None, f"pred_input 'probs' needs the softmax: no probs path in {rec.get('image')!r}'s record")
    try:
        probs = torch.from_numpy(np.load(path).astype(np.float32))
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable softmax ({e})") from None
    if probs.shape[0] != num_classes:
        raise DataError(path, f"{probs.shape[0]} softmax channels, expected {num_classes}")
    return probs


def _vae_masks(labels: Sequence[torch.Tensor], size: Sequence[int], num_classes: int, ignore_index: int | None):
    """(N, C, *size) one-hot masks of label maps resized (nearest) to the VAE's input shape."""
    maps = torch.stack([torch.as_tensor(m).long() for m in labels])[:, None].float()
    maps = F.interpolate(maps, size=tuple(size), mode="nearest")[:, 0].long()
    return torch.stack([one_hot(m, num_classes, ignore_index) for m in maps])


def train_failure_detectors(
    samples: Sequence[dict],
    out_dir: str | Path,
    *,
    networks: Mapping[str, torch.nn.Module],
    vae: torch.nn.Module | None = None,
    num_classes: int = 19,
    ignore_index: int = 255,
    iterations: int = 2000,
    vae_iterations: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 4,
    flip_axes: Sequence[int] = (1,),
    ridge_alpha: float = 0.1,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict:
    """Train every comparison network in ``networks`` (roles :data:`ROLES`) and the VAE alarm on ``samples``.

    Each network goes through :func:`~synthcp3d.alarms.comparator.train_comparator` into ``out_dir/<role>``
    (checkpoints, resume, TensorBoard) with left-right flips only (``flip_axes``; scenes are not upside
    down). The VAE is trained on the ground-truth label maps and its ridge regressor on the samples'
    *predicted* maps against their true IoU. A manifest ``out_dir/failure_models.json`` records the weights.

    Args:
        samples: labelled samples of :func:`load_failure_samples` (the cross-validation predictions).
        networks: ``{role: untrained network}``; roles not in :data:`ROLES` raise ``ValueError``.
        vae: a :class:`~synthcp3d.networks.ShapeVAE` (``in_channels=num_classes``) or ``None``.

    Returns:
        The manifest: ``{"networks": {role: model.pt}, "vae": path | None, "vae_regressor": params | None,
        "vae_size": [H, W] | None, "num_classes", "ignore_index", "n_samples"}``.
    """
    bad = set(networks) - set(ROLES)
    if bad:
        raise ValueError(f"unknown network roles {sorted(bad)}; use {ROLES}")
    labelled = [s for s in samples if s["error"] is not None]
    if not labelled:
        raise ValueError("no labelled samples to train on")
    out_dir = Path(out_dir)
    kw = dict(lr=lr, batch_size=batch_size, amp_dtype=amp_dtype, device=device, progress=progress)
    manifest: dict = {"networks": {}, "vae": None, "vae_regressor": None, "vae_size": None,
                      "num_classes": num_classes, "ignore_index": ignore_index, "n_samples": len(labelled)}  # fmt: skip
    for role, net in networks.items():
        if role != "direct" and any(s["synth"] is None for s in labelled):
            raise ValueError(f"network {role!r} needs synthesized images: load samples with synth_dir")
        r = train_comparator(net, labelled, out_dir / role, iterations=iterations, flip_axes=flip_axes, **kw)
        manifest["networks"][role] = r["model"]
    if vae is not None:
        size = list(vae.in_shape)
        r = train_shape_vae(vae, _vae_masks([s["label"] for s in labelled], size, num_classes, ignore_index),
                            out_dir / "vae", iterations=vae_iterations, **kw)  # fmt: skip
        feats = vae_features(vae, _vae_masks([s["pred"] for s in labelled], size, num_classes, None),
                             amp_dtype=amp_dtype, device=device)  # fmt: skip
        targets = torch.stack([s["target"] for s in labelled]).double().numpy()
        manifest.update(vae=r["model"], vae_size=size,
                        vae_regressor=fit_dice_regressor(feats, targets, alpha=ridge_alpha))  # fmt: skip
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


@torch.no_grad()
def _network_outputs(net: torch.nn.Module, sample: dict, amp_dtype: str | None, device: torch.device) -> dict:
    batch = {k: None if sample[k] is None else sample[k][None] for k in ("image", "synth", "probs")}
    with autocast_context(device, amp_dtype):
        out = comparator_forward(net, batch, device)
    res = {}
    if "scores" in out:
        res["iou"] = out["scores"][0].float().cpu().double()
    if "error_logits" in out:
        res["confidence"] = 1 - torch.sigmoid(out["error_logits"][0, 0].float()).cpu()
    return res


def evaluate_failure_detection(
    samples: Sequence[dict],
    *,
    networks: Mapping[str, torch.nn.Module] | None = None,
    vae: torch.nn.Module | None = None,
    vae_regressor: Mapping | None = None,
    num_classes: int = 19,
    ignore_index: int = 255,
    methods: Sequence[str] | None = None,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    bins: int = 1 << 16,
) -> dict:
    """Image- and pixel-level failure detection of every available method on labelled ``samples``.

    A method is evaluated when its inputs exist: the softmax baselines always (``probs.npy``), MCDropout when
    ``mc_probs.npy`` was predicted, the network methods when their roles are in ``networks`` (trained, in eval
    mode after loading), the VAE alarm with ``vae`` and ``vae_regressor``.

    Args:
        samples: from :func:`load_failure_samples` (labelled ones are used).
        methods: restrict to these :data:`METHOD_LABELS` keys (default all available).
        bins: histogram bins of the pooled pixel metrics (confidences in [0, 1]).

    Returns:
        ``{"n_images", "num_classes", "image_level": {method: {"mae", "std", "pearson", "spearman",
        "per_class": {...}}}, "pixel_level": {method: PixelFailureMetrics.compute()},
        "predicted_iou": {method: [[C] per image]}, "true_iou": [[C] per image], "case_ids"}``, percent as the
        paper (NaN-free lists; NaN -> None).
    """
    device = torch.device(device)
    networks = {k: v.to(device).eval() for k, v in (networks or {}).items()}
    samples = [s for s in samples if s["error"] is not None]
    if not samples:
        raise ValueError("no labelled samples to evaluate")
    has_mc = all(s["paths"].get("mc_probs") for s in samples)
    avail = ["msp", "entropy"] + (["mcdropout"] if has_mc else [])
    avail += ["vae_alarm"] if vae is not None and vae_regressor is not None else []
    avail += [m for m, roles in _NETWORK_METHODS.items() if all(r in networks for r in roles)]
    chosen = [m for m in METHOD_LABELS if m in avail and (methods is None or m in methods)]
    pixel = {m: PixelFailureMetrics("pooled", mode="hist", bins=bins) for m in chosen if m in PIXEL_METHODS}
    ious: dict[str, list] = {m: [] for m in chosen if m in IMAGE_METHODS and m != "vae_alarm"}
    for s in samples:
        maps = {"probs": torch.from_numpy(np.load(s["paths"]["probs"]).astype(np.float32))}
        if "mcdropout" in chosen:
            maps["mc_probs"] = torch.from_numpy(np.load(s["paths"]["mc_probs"]).astype(np.float32))
        outs = {role: _network_outputs(net, s, amp_dtype, device) for role, net in networks.items()}
        correct, keep = (s["error"][0] == 0)[None], (~s["ignore"][0])[None]
        for m in chosen:
            if m in PIXEL_BASELINES:
                pixel[m].update(pixel_confidence(m, maps)[None], correct, keep)
            elif m in _NETWORK_METHODS:
                score_role, map_role = _NETWORK_METHODS[m]
                pixel[m].update(outs[map_role]["confidence"][None], correct, keep)
                ious[m].append(outs[score_role]["iou"])
            if m == "mcdropout":
                ious[m].append(mc_dropout_iou(maps["mc_probs"], s["pred"]))
    true = torch.stack([s["target"] for s in samples]).double().numpy()
    pred_iou = {m: torch.stack(v).numpy() for m, v in ious.items()}
    if "vae_alarm" in chosen:
        size = tuple(vae.in_shape)
        feats = vae_features(vae.to(device), _vae_masks([s["pred"] for s in samples], size, num_classes, None),
                             amp_dtype=amp_dtype, device=device)  # fmt: skip
        pred_iou["vae_alarm"] = predict_dice_regressor(vae_regressor, feats)
    image = {}
    for m in chosen:
        if m in pred_iou:
            r = image_level(pred_iou[m], true)
            r["per_class"] = {k: _nan_none(np.asarray(v, np.float64)) for k, v in r["per_class"].items()}
            image[m] = r
    return {"n_images": len(samples), "num_classes": num_classes, "case_ids": [s["case_id"] for s in samples],
            "image_level": image, "pixel_level": {m: p.compute() for m, p in pixel.items()},
            "predicted_iou": {m: _nan_none(v) for m, v in pred_iou.items()}, "true_iou": _nan_none(true)}  # fmt: skip


def _nan_none(a: np.ndarray):
    return [_nan_none(x) for x in a] if isinstance(a, np.ndarray) and a.ndim else (
        None if not np.isfinite(a) else float(a))  # fmt: skip


def evaluate_index(
    index: str | Path | Mapping,
    synth_dir: str | Path | None,
    models_dir: str | Path,
    *,
    networks: Mapping[str, torch.nn.Module] | None = None,
    vae: torch.nn.Module | None = None,
    split: str = "test",
    out_file: str | Path | None = None,
    pred_input: str = "onehot",
    **kwargs,
) -> dict:
    """Load a prediction index's ``split`` samples and the detectors trained into ``models_dir`` (its
    ``failure_models.json``; train them on *another* segmenter's index for the generalisation test), then
    :func:`evaluate_failure_detection`. Networks whose role has no weights in the manifest are skipped.

    Args:
        networks, vae: untrained instances of the trained architectures (weights are loaded into them).
        out_file: also write the result as JSON.
        pred_input: the comparators' ŷ, as they were trained (:func:`load_failure_samples`).
        kwargs: passed to :func:`evaluate_failure_detection` (``num_classes``, ``ignore_index``, ``methods``...).

    Returns:
        The :func:`evaluate_failure_detection` result plus ``"index"`` and ``"models_dir"``.
    """
    manifest = read_json(Path(models_dir) / MANIFEST)
    nets = {r: load_weights(n, manifest["networks"][r]) for r, n in (networks or {}).items()
            if r in manifest["networks"]}  # fmt: skip
    vae_net = load_weights(vae, manifest["vae"]) if vae is not None and manifest.get("vae") else None
    need_synth = any(r != "direct" for r in nets)
    samples = load_failure_samples(index, synth_dir if need_synth else None, split=split,
                                   num_classes=kwargs.get("num_classes", 19),
                                   ignore_index=kwargs.get("ignore_index", 255), pred_input=pred_input)  # fmt: skip
    result = evaluate_failure_detection(samples, networks=nets, vae=vae_net,
                                        vae_regressor=manifest.get("vae_regressor"), **kwargs)  # fmt: skip
    result.update(index=str(index) if isinstance(index, (str, Path)) else None, models_dir=str(models_dir))
    if out_file is not None:
        atomic_write_text(out_file, json.dumps(json_safe(result), indent=1, allow_nan=False))
    return result
