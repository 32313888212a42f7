"""Anomaly segmentation by synthesize-then-compare (paper section 3.3, Tables 3-4) and its baselines.

* :func:`feature_cosine_distance` — eq. 9: ``ĉ_n = 1 - cos(f_M(x), f_M(x̂))`` per pixel, on the segmenter's
  last-layer features (:meth:`~synthcp3d.networks.Segmenter.forward_features`) of the image and of the image
  synthesized from the segmenter's own prediction, ``x̂ = G(argmax M(x))``.
* :func:`msp_postprocess` — the paper's MSP post-processing: where the max softmax ``p > t`` the score is
  replaced by ``1 - p`` (confident pixels are pruned of GAN artefacts); ``t = 1`` leaves eq. 9 untouched.
* :func:`msp_score`, :func:`maxlogit_score` — the baselines MSP (Hendrycks & Gimpel 2017) and MaxLogit
  (Hendrycks et al. 2019, the StreetHazards paper's strongest simple baseline), higher = more anomalous.
* :func:`anomaly_maps` — all of them for one batch of images; :func:`evaluate_anomaly` — a test split through
  the benchmark's per-image FPR95 / AUROC / AUPR (anomaly positive), for the methods of Table 3 and the
  threshold sweep of Table 4, plus a few examples for the Fig.-7 grid
  (:func:`synthcp3d.reports.anomaly.write_anomaly_report` writes them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from synthcp3d.alarms.baselines import msp_confidence
from synthcp3d.data.transforms import scene_transforms
from synthcp3d.engines.distributed import unwrap
from synthcp3d.engines.inferers import autocast_context
from synthcp3d.engines.precision import flush_denormals
from synthcp3d.engines.spade import synthesize
from synthcp3d.metrics import AnomalyMetrics

__all__ = [
    "PAPER_THRESHOLDS",
    "anomaly_maps",
    "evaluate_anomaly",
    "feature_cosine_distance",
    "maxlogit_score",
    "msp_postprocess",
    "msp_score",
]

logger = logging.getLogger(__name__)

PAPER_THRESHOLDS: tuple[float, ...] = (0.8, 0.9, 0.99, 0.999, 1.0)
"""The post-processing thresholds of the paper's Table 4 (``t = 1``: no post-processing)."""


def feature_cosine_distance(features: torch.Tensor, features_hat: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Paper eq. 9: one minus the cosine similarity of two feature maps at every pixel.

    Args:
        features, features_hat: (B, C, *S) feature maps of ``x`` and ``x̂``.
        eps: guards the norms; a pixel whose feature vector is all zero has similarity 0 (score 1).

    Returns:
        (B, *S) float32 in [0, 2] ([0, 1] for non-negative features such as the Segmenter's ReLU output).
    """
    if features.shape != features_hat.shape:
        raise ValueError(f"feature maps differ in shape: {tuple(features.shape)} vs {tuple(features_hat.shape)}")
    return 1.0 - F.cosine_similarity(features.float(), features_hat.float(), dim=1, eps=eps)


def msp_postprocess(score: torch.Tensor, msp: torch.Tensor, threshold: float = 0.999) -> torch.Tensor:
    """``ĉ ← ĉ · 1{p ≤ t} + (1 − p) · 1{p > t}`` (paper section 3.3), elementwise.

    Args:
        score: (B, *S) anomaly score (eq. 9).
        msp: (B, *S) maximum softmax probability ``p`` of the segmenter.
        threshold: ``t`` in [0, 1]; ``t = 1`` returns ``score`` unchanged.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return torch.where(msp > threshold, 1.0 - msp, score)


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """MSP baseline: ``1 - max_c softmax(logits)_c``, (B, C, *S) -> (B, *S), higher = more anomalous."""
    return 1.0 - msp_confidence(torch.softmax(logits.float(), dim=1), dim=1)


def maxlogit_score(logits: torch.Tensor) -> torch.Tensor:
    """MaxLogit baseline: ``-max_c logits_c``, (B, C, *S) -> (B, *S), higher = more anomalous."""
    return -logits.float().amax(dim=1)


@torch.no_grad()
def anomaly_maps(
    segmenter: torch.nn.Module,
    generator: torch.nn.Module,
    image: torch.Tensor,
    num_classes: int,
    *,
    thresholds: Sequence[float] = PAPER_THRESHOLDS,
    amp_dtype: str | None = "auto",
) -> dict[str, torch.Tensor]:
    """Every anomaly map of a batch: baselines, eq. 9 and eq. 9 post-processed at each ``t``.

    Both networks run in eval mode. The synthesized image ``x̂`` (generator output in [-1, 1]) is mapped to
    the segmenter's input range [0, 1] before its features are taken.

    Args:
        segmenter: with ``forward_features(x) -> (logits (B, K, *S), features (B, F, *S))``.
        generator: label -> image ``(B, K, *S) -> (B, 3, *S)`` in [-1, 1].
        image: (B, 3, *S) in [0, 1].
        num_classes: ``K``, the in-distribution classes.
        amp_dtype: precision of the segmenter passes and the synthesis (``"auto"``, ``"float32"``, ``"bfloat16"``).

    Returns:
        ``{"pred": (B, *S) int64, "msp": p (B, *S), "score_msp", "score_maxlogit", "synthcp": eq. 9,
        "synthcp_t=<t>": post-processed for each t, "synth": x̂ (B, 3, *S) in [0, 1]}``.
    """
    seg = unwrap(segmenter).eval()
    with flush_denormals(image.device):
        with autocast_context(image.device, amp_dtype):
            logits, feats = seg.forward_features(image)
        pred = logits.argmax(1)
        synth = (synthesize(generator, pred[:, None], num_classes, amp_dtype=amp_dtype) + 1) / 2
        with autocast_context(image.device, amp_dtype):
            _, feats_hat = seg.forward_features(synth)
    p = 1.0 - msp_score(logits)
    d = feature_cosine_distance(feats, feats_hat)
    out = {"pred": pred, "msp": p, "score_msp": 1.0 - p, "score_maxlogit": maxlogit_score(logits), "synthcp": d}
    for t in thresholds:
        out[f"synthcp_t={t:g}"] = msp_postprocess(d, p, t)
    out["synth"] = synth
    return out


def _method_names(threshold: float) -> dict[str, str]:
    """Table-3 methods in order: map key (of :func:`anomaly_maps`) -> row name."""
    return {
        "score_msp": "MSP",
        "score_maxlogit": "MaxLogit",
        f"synthcp_t={threshold:g}": f"SynthCP (t={threshold:g})",
        "synthcp": "SynthCP, no post-processing",
    }


@torch.no_grad()
def evaluate_anomaly(
    segmenter: torch.nn.Module,
    generator: torch.nn.Module,
    items: Sequence[Mapping],
    *,
    load: Callable[[Mapping], dict],
    size: Sequence[int],
    num_classes: int,
    anomaly_index: int = 13,
    ignore_index: int = 255,
    threshold: float = 0.999,
    thresholds: Sequence[float] = PAPER_THRESHOLDS,
    metric_mode: str = "exact",
    num_examples: int = 4,
    device: str | torch.device = "cpu",
    amp_dtype: str | None = "auto",
    progress: bool = True,
) -> dict:
    """Evaluate anomaly segmentation on a test split with the benchmark's per-image averaging.

    Each image is resized to ``size`` for the networks; its maps are upsampled (bilinear) to the annotation's
    own resolution, where every pixel not labelled ``ignore_index`` is evaluated with ``label ==
    anomaly_index`` positive. FPR95 / AUROC / AUPR are computed per image and averaged over the images that
    contain both anomalous and normal pixels (:class:`~synthcp3d.metrics.AnomalyMetrics`, ``per_image``;
    ``metric_mode="exact", fpr_rule="nearest"`` reproduces the official StreetHazards evaluation).

    Args:
        segmenter, generator: trained networks (see :func:`anomaly_maps`).
        items: test datalist ``[{"image": png, "label": png, "case_id"}]``.
        load: the dataset loader, e.g. :func:`~synthcp3d.data.streethazards.load_streethazards`.
        size: ``(H, W)`` the networks run at.
        threshold: the post-processing ``t`` of the headline SynthCP row (paper: 0.999).
        thresholds: the Table-4 sweep (must contain ``threshold``).
        num_examples: images kept for the Fig.-7 grid (those with the largest anomaly area).

    Returns:
        ``{"methods": {name: metrics}, "sweep": {t: metrics}, "examples": [{"case_id", "image", "label",
        "pred", "synth", "msp", "synthcp"} as numpy arrays at ``size``], "n_images": evaluated images,
        "n_skipped": images without anomaly (or without normal pixels), "threshold": t}``; metrics are
        :meth:`AnomalyMetrics.compute` dicts (percent).
    """
    from tqdm.auto import tqdm

    if threshold not in thresholds:
        thresholds = (*thresholds, threshold)
    device = torch.device(device)
    segmenter, generator = unwrap(segmenter).to(device), unwrap(generator).to(device)
    names = _method_names(threshold)
    keys = list(dict.fromkeys([*names, *(f"synthcp_t={t:g}" for t in thresholds)]))
    metrics = {k: AnomalyMetrics(protocol="per_image", mode=metric_mode, fpr_rule="nearest") for k in keys}
    resize = scene_transforms(dict, size)  # the loaded pair -> working size (image bilinear, label nearest)
    examples = []
    for item in tqdm(items, desc="anomaly", unit="image", disable=not progress):
        full = load(item)
        label = torch.as_tensor(full["label"])[0]
        work = resize(full)
        maps = anomaly_maps(segmenter, generator, work["image"][None].to(device), num_classes,
                            thresholds=thresholds, amp_dtype=amp_dtype)  # fmt: skip
        anomaly, valid = (label == anomaly_index)[None], (label != ignore_index)[None]
        for k in keys:
            score = maps[k][:, None]
            if score.shape[2:] != label.shape:
                score = F.interpolate(score, size=tuple(label.shape), mode="bilinear", align_corners=False)
            metrics[k].update(score[:, 0].cpu(), anomaly, valid)
        area = int(anomaly.sum())
        if num_examples > 0 and area > 0:
            examples.append((area, {
                "case_id": str(item.get("case_id", item["image"])),
                "image": (work["image"].movedim(0, -1).numpy() * 255).round().clip(0, 255).astype(np.uint8),
                "label": work["label"][0].numpy(),
                "pred": maps["pred"][0].cpu().numpy(),
                "synth": (maps["synth"][0].movedim(0, -1).cpu().numpy() * 255).round().astype(np.uint8),
                "msp": maps["score_msp"][0].cpu().numpy(),
                "synthcp": maps[f"synthcp_t={threshold:g}"][0].cpu().numpy(),
            }))  # fmt: skip
            examples = sorted(examples, key=lambda e: -e[0])[:num_examples]
    results = {k: m.compute() for k, m in metrics.items()}
    any_metric = results[keys[0]]
    if any_metric["n_images"] == 0:
        logger.warning("no test image contains both anomalous and normal pixels: all metrics are NaN")
    return {
        "methods": {name: results[k] for k, name in names.items()},
        "sweep": {float(t): results[f"synthcp_t={t:g}"] for t in thresholds},
        "examples": [e for _, e in examples],
        "n_images": int(any_metric["n_images"]),
        "n_skipped": int(any_metric["n_skipped"]),
        "threshold": float(threshold),
    }
