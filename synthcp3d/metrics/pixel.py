"""Pixel-level failure detection and anomaly segmentation metrics, streamed (paper section 4).

Both classes follow MONAI's cumulative-metric pattern (``update`` per batch, ``compute``, ``reset``)
but keep only score counts (see :mod:`synthcp3d.metrics.curves`), never the pixels, so memory is
O(bins) in ``hist`` mode whatever the number of pixels. Outputs are in percent, as the paper reports.

Protocols (named in every output under ``"protocol"``):

- ``"pooled"``: one curve over every valid pixel of every image.
- ``"per_image"``: one curve per image (first axis of the inputs), metrics averaged over images;
  images with no valid pixel, or whose valid pixels are all of one class, are skipped (counted in
  ``n_skipped``). This is the official SynthCP / StreetHazards evaluation (per-image
  ``get_measures``: AUROC, AP and FPR95 with errors / anomalies positive, then the mean); with
  ``mode="exact", fpr_rule="nearest"`` the numbers are theirs exactly.

Memory: ``hist`` mode keeps [bins, 2] counts; ``exact`` mode keeps one count pair per distinct score
(up to one per pixel for continuous float scores) and sorts each update, like scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .curves import FPR_RULES, BinaryCurveAccumulator, curve_metrics_from_counts, prepare

__all__ = ["PixelFailureMetrics", "AnomalyMetrics"]

PROTOCOLS = ("pooled", "per_image")
ArrayLike = torch.Tensor | np.ndarray


class _PixelCurveMetric:
    """Shared streaming machinery: pooled counts or per-image results."""

    _score_name = "scores"
    _label_name = "labels"

    def __init__(
        self,
        protocol: str = "pooled",
        mode: str = "hist",
        bins: int = 1 << 16,
        score_range: Sequence[float] = (0.0, 1.0),
        tpr_level: float = 0.95,
        fpr_rule: str = "first_ge",
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if fpr_rule not in FPR_RULES:
            raise ValueError(f"fpr_rule must be one of {FPR_RULES}, got {fpr_rule!r}")
        self.protocol, self.tpr_level, self.fpr_rule = protocol, tpr_level, fpr_rule
        self._acc_args = (mode, bins, score_range)
        self._pooled = BinaryCurveAccumulator(*self._acc_args)  # validates mode/bins/range
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._pooled.reset()
        self._images: list[dict[str, float]] = []
        self.n_skipped = 0

    def _update(self, scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None) -> None:
        s, y, m = prepare(scores, labels, mask, self._score_name, self._label_name)
        if self.protocol == "pooled":
            self._pooled.update(s, y, m, self._score_name)
            return
        if s.ndim < 2:
            raise ValueError(f"per_image protocol needs inputs [batch, *spatial], got shape {tuple(s.shape)}")
        if s.is_floating_point():  # check the whole batch first, so a bad image leaves no partial state
            n_nan = int((torch.isnan(s) if m is None else torch.isnan(s) & m).sum())
            if n_nan:
                raise ValueError(f"{self._score_name} contains {n_nan} NaN value(s); NaN cannot be ranked")
        for b in range(s.shape[0]):
            acc = BinaryCurveAccumulator(*self._acc_args)
            acc.update(s[b], y[b], None if m is None else m[b], self._score_name)
            counts = acc.counts()
            if counts is None or int(counts[:, 0].sum()) == 0 or int(counts[:, 1].sum()) == 0:
                self.n_skipped += 1
                continue
            self._images.append(self._metrics(counts))

    def _metrics(self, counts: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def _curve(self, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, float]:
        return curve_metrics_from_counts(pos, neg, self.tpr_level, self.fpr_rule)

    def compute(self) -> dict[str, float | int | str]:
        """Metrics in percent plus ``protocol``, ``mode``, ``fpr_rule`` and pixel/image counts."""
        if self.protocol == "pooled":
            counts = self._pooled.counts()
            if counts is None:
                counts = torch.zeros(0, 2, dtype=torch.int64)
            out: dict = self._metrics(counts)
        else:
            keys = self._metrics(torch.zeros(0, 2, dtype=torch.int64)).keys()
            out = {k: (float(np.mean([r[k] for r in self._images])) if self._images else math.nan) for k in keys}
            out["n_pixels"] = int(sum(r["n_pixels"] for r in self._images))
            out["n_images"] = len(self._images)
            out["n_skipped"] = self.n_skipped
        mode, bins, _ = self._acc_args
        out.update(protocol=self.protocol, mode=mode, fpr_rule=self.fpr_rule)
        if mode == "hist":
            out["bins"] = bins
        return out


class PixelFailureMetrics(_PixelCurveMetric):
    """Pixel-level failure detection: AUPR-Error, AUPR-Success, AUROC, FPR95 (percent).

    ``update(confidence, correct, mask=None)`` with ``confidence`` [B, *spatial] (higher = more likely
    correct; NaN raises ``ValueError``), ``correct`` [B, *spatial] bool (prediction == ground truth)
    and optional ``mask`` [B, *spatial] bool (True = evaluate; e.g. ``target != ignore_index``).

    ``compute()`` keys (percent):

    - ``aupr_error``: average precision with errors positive, scored by ``-confidence`` (main metric).
    - ``aupr_success``: average precision with correct pixels positive, scored by ``confidence``.
    - ``auroc``: area under the ROC (the same for either positive class).
    - ``fpr95``: errors positive: fraction of correct pixels flagged when 95% of errors are flagged
      (as the official per-image evaluation). ``fpr95_success``: correct pixels positive: fraction of
      errors accepted at 95% TPR of correct pixels (as TCP's ``metric.py``).
    - ``error_rate``: percent of evaluated pixels that are errors; ``n_pixels``: evaluated pixels.

    Args:
        protocol: ``"pooled"`` or ``"per_image"`` (module docstring).
        mode: ``"exact"`` or ``"hist"`` (:class:`~synthcp3d.metrics.curves.BinaryCurveAccumulator`).
        bins: histogram bins (``hist``).
        score_range: confidence range of the histogram (``hist``), default [0, 1].
        tpr_level: TPR for the FPR metrics (0.95).
        fpr_rule: ``"first_ge"`` (default) or ``"nearest"`` (official code), see curves module.
    """

    _score_name = "confidence"
    _label_name = "correct"

    def update(self, confidence: ArrayLike, correct: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Accumulate a batch: ``confidence``, ``correct``, ``mask`` all [B, *spatial]."""
        self._update(confidence, correct, mask)

    def _metrics(self, counts: torch.Tensor) -> dict[str, float]:
        # counts: [K, 2] (errors, correct) in ascending confidence
        desc = counts.flip(0)
        suc = self._curve(desc[:, 1], desc[:, 0])  # correct positive, high confidence first
        err = self._curve(counts[:, 0], counts[:, 1])  # errors positive, low confidence first
        n = suc["n_pos"] + suc["n_neg"]
        return {
            "aupr_error": 100 * err["ap"],
            "aupr_success": 100 * suc["ap"],
            "auroc": 100 * suc["auroc"],
            "fpr95": 100 * err["fpr_at_tpr"],
            "fpr95_success": 100 * suc["fpr_at_tpr"],
            "error_rate": 100 * suc["n_neg"] / n if n else math.nan,
            "n_pixels": int(n),
        }


class AnomalyMetrics(_PixelCurveMetric):
    """Anomaly segmentation: FPR95, AUROC, AUPR with anomaly as the positive class (percent).

    ``update(score, anomaly, mask=None)`` with ``score`` [B, *spatial] (higher = more anomalous, e.g.
    ``1 - max softmax``; set ``score_range`` to its range in ``hist`` mode), ``anomaly`` [B, *spatial]
    bool and optional ``mask`` [B, *spatial] bool (True = evaluate).

    ``compute()`` keys (percent): ``fpr95`` (fraction of normal pixels flagged at 95% anomaly recall),
    ``auroc``, ``aupr``, ``anomaly_rate``; plus ``n_pixels``. StreetHazards reports
    ``protocol="per_image"`` (images without anomaly, or all anomaly, skipped).

    Args: as :class:`PixelFailureMetrics`.
    """

    _score_name = "score"
    _label_name = "anomaly"

    def update(self, score: ArrayLike, anomaly: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Accumulate a batch: ``score``, ``anomaly``, ``mask`` all [B, *spatial]."""
        self._update(score, anomaly, mask)

    def _metrics(self, counts: torch.Tensor) -> dict[str, float]:
        desc = counts.flip(0)
        r = self._curve(desc[:, 1], desc[:, 0])
        n = r["n_pos"] + r["n_neg"]
        return {
            "fpr95": 100 * r["fpr_at_tpr"],
            "auroc": 100 * r["auroc"],
            "aupr": 100 * r["ap"],
            "anomaly_rate": 100 * r["n_pos"] / n if n else math.nan,
            "n_pixels": int(n),
        }
