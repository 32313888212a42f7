"""Failure-detection baselines that need no training (paper Table 1): pixel confidences from the segmenter's
softmax (MSP, entropy), Monte-Carlo dropout (predictive entropy), and MC dropout's image-level IoU estimate.

Every pixel confidence is in [0, 1] with *higher = more likely correct*, the convention of
:class:`~synthcp3d.metrics.PixelFailureMetrics`. Dimension-generic: probabilities are ``(C, *S)`` or
``(B, C, *S)`` for 2D images and 3D volumes alike.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PIXEL_BASELINES", "entropy_confidence", "mc_dropout_iou", "msp_confidence", "pixel_confidence"]


def msp_confidence(probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017): ``probs`` (C, *S) -> (*S) (or set ``dim``)."""
    return probs.float().amax(dim=_channel_dim(probs, dim))


def entropy_confidence(probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``1 - H(p) / log C`` with ``H`` the Shannon entropy over classes: ``probs`` (C, *S) -> (*S) in [0, 1]
    (channel axis ``dim``). On MC-dropout mean probabilities: the predictive-entropy confidence (Gal & Ghahramani)."""
    d = _channel_dim(probs, dim)
    p = probs.float().clamp_min(0)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=d)
    return (1 - h / math.log(probs.shape[d])).clamp(0, 1)


def _channel_dim(probs: torch.Tensor, dim: int) -> int:
    if probs.ndim < 2:
        raise ValueError(f"probs must be (.., C, *spatial), got shape {tuple(probs.shape)}")
    return dim % probs.ndim


PIXEL_BASELINES = {"msp": ("probs", msp_confidence), "entropy": ("probs", entropy_confidence),
                   "mcdropout": ("mc_probs", entropy_confidence)}  # fmt: skip
"""Pixel baselines of Table 1: method -> (probability map it reads, confidence function)."""


def pixel_confidence(method: str, maps: dict[str, torch.Tensor], channel_dim: int = 0) -> torch.Tensor:
    """Confidence map of a :data:`PIXEL_BASELINES` method from ``maps`` (``{"probs", "mc_probs"}``, ``(C, *S)``)."""
    if method not in PIXEL_BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose from {sorted(PIXEL_BASELINES)}")
    key, fn = PIXEL_BASELINES[method]
    if maps.get(key) is None:
        raise ValueError(f"baseline {method!r} needs {key!r} (predict with mc_samples > 0 for mc_probs)")
    return fn(torch.as_tensor(maps[key]), dim=channel_dim)


def mc_dropout_iou(mc_probs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Image-level MC-dropout estimate of each class's IoU: the soft IoU between the mean MC-dropout softmax and
    the (deterministic) prediction, ``Σ p_l·[ŷ=l] / (Σ p_l + |ŷ=l| - Σ p_l·[ŷ=l])``: how much of the predicted
    region the dropout ensemble agrees with. Needs no ground truth and no training.

    Args:
        mc_probs: (C, *S) mean softmax of the dropout passes.
        pred: (*S) integer prediction.

    Returns:
        (C,) float64 in [0, 1]; 0 where the class is neither predicted nor probable.
    """
    p = torch.as_tensor(mc_probs).double().flatten(1)
    y = torch.as_tensor(pred).long().flatten()
    if p.shape[1] != y.numel():
        raise ValueError(f"mc_probs {tuple(mc_probs.shape)} and pred {tuple(pred.shape)} differ spatially")
    onehot = torch.nn.functional.one_hot(y, p.shape[0]).T.double()
    inter = (p * onehot).sum(1)
    union = p.sum(1) + onehot.sum(1) - inter
    return torch.where(union > 1e-12, inter / union.clamp_min(1e-12), torch.zeros_like(union))
