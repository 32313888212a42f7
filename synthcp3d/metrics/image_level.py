"""Image-level failure detection metrics: predicted vs. true per-class Dice/IoU (paper section 4.1)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = ["image_level"]


def _to_numpy(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be [cases, classes] (or [cases]), got shape {x.shape}")
    return x


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return np.nan
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else np.nan  # undefined for constant input


def image_level(
    pred: torch.Tensor | np.ndarray,
    true: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict:
    """MAE, STD, Pearson and Spearman correlation and good/bad triage accuracy, in percent.

    Each metric is computed per class over the cases where the class is valid, then averaged over
    classes ignoring NaN (a class with < 2 valid cases or constant values has NaN correlation).

    Args:
        pred: [cases, classes] (or [cases]) predicted Dice/IoU in [0, 1].
        true: same shape, true Dice/IoU in [0, 1]; NaN marks an invalid entry (class absent).
        valid: optional bool, same shape; True = use this entry. Default: ``~isnan(true)``.
            It is combined with ``~isnan(true)``; a NaN ``pred`` at a valid entry raises ``ValueError``.
        threshold: a case is "good" when its score >= ``threshold`` (Dice/IoU 0.5 by default).

    Returns:
        dict with ``mae``, ``std`` (population std of the absolute error), ``pearson``, ``spearman``,
        ``triage_accuracy`` (percent of valid entries whose good/bad call from ``pred`` matches
        ``true``) and ``triage_bad_recall`` (percent of truly bad entries called bad), each the mean over
        classes, in percent (MAE 18.13 means 0.1813); ``per_class`` with the same keys as arrays
        [classes] plus ``n_valid``; and ``threshold``.
    """
    p, t = _to_numpy(pred, "pred"), _to_numpy(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same shape, got {p.shape} and {t.shape}")
    v = ~np.isnan(t)
    if valid is not None:
        vv = _to_numpy(valid, "valid")
        if vv.shape != t.shape:
            raise ValueError(f"valid must have the shape of true, got {vv.shape} and {t.shape}")
        v &= vv.astype(bool)
    n_bad_pred = int(np.isnan(p[v]).sum())
    if n_bad_pred:
        raise ValueError(f"pred contains {n_bad_pred} NaN value(s) at valid entries")

    keys = ("mae", "std", "pearson", "spearman", "triage_accuracy", "triage_bad_recall")
    per_class = {k: np.full(t.shape[1], np.nan) for k in keys}
    for c in range(t.shape[1]):
        pc, tc = p[v[:, c], c], t[v[:, c], c]
        if tc.size == 0:
            continue
        err = np.abs(pc - tc)
        per_class["mae"][c] = err.mean()
        per_class["std"][c] = err.std()
        per_class["pearson"][c] = _pearson(pc, tc)
        per_class["spearman"][c] = _pearson(rankdata(pc), rankdata(tc))  # Spearman = Pearson of ranks
        good_p, good_t = pc >= threshold, tc >= threshold
        per_class["triage_accuracy"][c] = np.mean(good_p == good_t)
        if (~good_t).any():
            per_class["triage_bad_recall"][c] = np.mean(~good_p[~good_t])

    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN mean
        for k in keys:
            per_class[k] *= 100
            out[k] = float(np.nanmean(per_class[k]))
    per_class["n_valid"] = v.sum(0)
    out["per_class"] = per_class
    out["threshold"] = threshold
    return out
