"""The paper's "SynthCP + VAE" simple ensemble (mean of the predicted Dice, Table 2), split-conformal
intervals around it, and the review flag."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["conformal_interval", "conformal_quantile", "mean_ensemble", "review_flags"]


def mean_ensemble(*predictions: np.ndarray) -> np.ndarray:
    """Element-wise mean of predicted Dice arrays of one shape (e.g. SynthCP and VAE alarm, (N, K)).

    An entry is NaN where any member is NaN: a member that failed makes the ensemble fail, flagged for review
    (:func:`review_flags`), instead of quietly becoming the other member's answer.
    """
    if not predictions:
        raise ValueError("mean_ensemble needs at least one prediction")
    return np.mean(np.stack([np.asarray(p, np.float64) for p in predictions]), axis=0)


def conformal_quantile(residuals: np.ndarray, alpha: float = 0.1) -> float:
    """Split-conformal quantile of absolute calibration residuals ``|pred - true|`` (NaN entries dropped).

    With n residuals, q is the k-th smallest, k = ceil((n + 1)(1 - alpha)): for a new exchangeable case
    P(|pred - true| <= q) >= 1 - alpha. ``inf`` when k > n (too few calibration cases for this alpha).

    Args:
        residuals: (n,) absolute residuals.
        alpha: miscoverage level in (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    r = np.sort(np.abs(np.asarray(residuals, np.float64).ravel()))
    r = r[np.isfinite(r)]
    k = math.ceil((len(r) + 1) * (1.0 - alpha))
    return float(r[k - 1]) if 1 <= k <= len(r) else math.inf


def conformal_interval(prediction: np.ndarray, q: np.ndarray | float) -> np.ndarray:
    """``[pred - q, pred + q]`` clipped to [0, 1]: (..., ) predictions -> (..., 2). NaN predictions give NaN."""
    p = np.asarray(prediction, np.float64)
    return np.clip(np.stack([p - q, p + q], axis=-1), 0.0, 1.0)


def review_flags(tumour_dice: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Cases to send for review: predicted tumour Dice below ``threshold`` (a NaN prediction is flagged)."""
    d = np.asarray(tumour_dice, np.float64)
    return ~(d >= threshold)
