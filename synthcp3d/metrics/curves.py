"""Streaming binary ranking metrics (average precision, AUROC, FPR at a TPR) on torch.

All curves are built from per-score counts of positives and negatives, so memory does not grow with
the number of pixels:

- ``mode="exact"``: counts per distinct score value (sorted unique values, merged at every update).
  Identical to scikit-learn up to float rounding, ties included. Memory O(#distinct scores).
- ``mode="hist"``: counts per bin of a fixed histogram over ``score_range``. Scores that share a bin
  are treated as tied, which is how scikit-learn treats equal scores; scores outside the range are
  clipped into the end bins (with a warning). Bin of a score s: floor((s - low) * bins / (high - low)),
  clipped to [0, bins - 1], computed in float32 (float64 for float64 scores). Scores that all fall in
  distinct bins give the exact result; continuous scores with 2**16 bins stay within ~1e-5 of
  scikit-learn (see ``benchmarks/metrics.md``). Memory O(bins), independent of the pixel count.

Inputs may be NumPy arrays (viewed with ``torch.from_numpy``, no copy) or torch tensors on any
device; counts stay on the inputs' device.

Definitions (fractions in [0, 1], scores ranked high = positive):

- ``ap``: scikit-learn's ``average_precision_score``: sum_n (R_n - R_{n-1}) P_n over the distinct
  thresholds, step-wise, not interpolated. NaN when there is no positive.
- ``auroc``: trapezoidal area under the ROC curve from (0, 0) to (1, 1) (``roc_auc_score``). NaN
  when one class is missing.
- ``fpr_at_tpr`` (rule ``"first_ge"``): the FPR at the first operating point, scanning thresholds
  from high to low, whose TPR >= ``tpr_level``; i.e. the largest threshold reaching the TPR.
  On scikit-learn's ``roc_curve(..., drop_intermediate=False)`` this is
  ``fpr[np.searchsorted(tpr, tpr_level, side="left")]``.
  Rule ``"nearest"``: the FPR at the threshold whose TPR is nearest to ``tpr_level`` (among the
  thresholds up to full TPR; a tie goes to the lower threshold), as ``fpr_and_fdr_at_recall`` of the
  official SynthCP / StreetHazards code (Hendrycks et al.). NaN when one class is missing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BinaryCurveAccumulator", "binary_curve_metrics", "curve_metrics_from_counts", "as_tensor"]

FPR_RULES = ("first_ge", "nearest")
MODES = ("exact", "hist")
_CHUNK = 1 << 20  # elements per histogram pass: bounds the working memory of ``update``


def as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Torch view of ``x``: tensors pass through (device kept), NumPy arrays via ``torch.from_numpy``."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x)


def _nan_error(name: str, n_nan: int, n: int) -> ValueError:
    return ValueError(f"{name} contains {n_nan} NaN value(s) out of {n}; NaN cannot be ranked")


def prepare(
    scores: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
    score_name: str = "scores",
    label_name: str = "labels",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check shapes and dtypes; returns (scores, bool labels, bool mask or None) on the scores' device.

    NaN scores are checked by :meth:`BinaryCurveAccumulator.update` (in chunks, without copies).
    """
    s, y = as_tensor(scores), as_tensor(labels)
    if s.dtype == torch.bool or s.is_complex():
        raise TypeError(f"{score_name} must be real-valued, got dtype {s.dtype}")
    if s.shape != y.shape:
        raise ValueError(
            f"{score_name} and {label_name} must have the same shape, got {tuple(s.shape)} and {tuple(y.shape)}"
        )
    m = None
    if mask is not None:
        m = as_tensor(mask)
        if m.shape != s.shape:
            raise ValueError(f"mask must have the shape of {score_name}, got {tuple(m.shape)} and {tuple(s.shape)}")
        m = m.to(device=s.device, dtype=torch.bool)
    y = y.to(device=s.device)
    if y.dtype != torch.bool:
        if bool(((y != 0) & (y != 1)).any()):
            raise ValueError(f"{label_name} must be binary (0/1 or bool)")
        y = y != 0
    return s, y, m


def curve_metrics_from_counts(
    pos: torch.Tensor, neg: torch.Tensor, tpr_level: float = 0.95, fpr_rule: str = "first_ge"
) -> dict[str, float]:
    """AP, AUROC and FPR at ``tpr_level`` from counts at thresholds ordered from high score to low.

    Args:
        pos: [K] counts of positives at each distinct threshold (highest score first).
        neg: [K] counts of negatives, aligned with ``pos``.
        tpr_level: TPR at which the FPR is read.
        fpr_rule: ``"first_ge"`` or ``"nearest"`` (see module docstring).

    Returns:
        dict with ``ap``, ``auroc``, ``fpr_at_tpr`` (fractions, NaN when undefined), ``n_pos``, ``n_neg``.
    """
    if fpr_rule not in FPR_RULES:
        raise ValueError(f"fpr_rule must be one of {FPR_RULES}, got {fpr_rule!r}")
    keep = (pos + neg) > 0
    pos, neg = pos[keep], neg[keep]
    tps = torch.cumsum(pos, 0).to(torch.float64)
    fps = torch.cumsum(neg, 0).to(torch.float64)
    n_pos = float(tps[-1]) if tps.numel() else 0.0
    n_neg = float(fps[-1]) if fps.numel() else 0.0
    out = {"ap": float("nan"), "auroc": float("nan"), "fpr_at_tpr": float("nan"), "n_pos": n_pos, "n_neg": n_neg}
    if n_pos > 0:
        recall = tps / n_pos
        precision = tps / (tps + fps)
        d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
        out["ap"] = float(torch.sum(d_recall * precision))
    if n_pos > 0 and n_neg > 0:
        zero = tps.new_zeros(1)
        tpr = torch.cat([zero, tps / n_pos])
        fpr = torch.cat([zero, fps / n_neg])
        out["auroc"] = float(torch.sum(torch.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
        if fpr_rule == "first_ge":
            idx = torch.searchsorted(tpr, torch.tensor([tpr_level], dtype=tpr.dtype, device=tpr.device))
            out["fpr_at_tpr"] = float(fpr[min(int(idx), fpr.numel() - 1)])
        else:
            rec = tpr[1:]
            last = int(torch.searchsorted(tps, tps[-1:]))  # first threshold reaching full TPR
            dist = torch.abs(rec[: last + 1] - tpr_level)
            idx = int(torch.nonzero(dist == dist.min()).max())
            out["fpr_at_tpr"] = float(fpr[1 + idx])
    return out


class BinaryCurveAccumulator:
    """Streaming positive/negative counts per score (exact) or per score bin (hist).

    Args:
        mode: ``"exact"`` (counts per distinct score) or ``"hist"`` (fixed bins).
        bins: number of histogram bins (``hist`` mode).
        score_range: (low, high) of the histogram (``hist`` mode); outside values are clipped.

    ``counts()`` returns ``[K, 2]`` int64 counts (column 0: negatives, column 1: positives) in
    ascending score order.
    """

    def __init__(self, mode: str = "hist", bins: int = 1 << 16, score_range: Sequence[float] = (0.0, 1.0)):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        lo, hi = float(score_range[0]), float(score_range[1])
        if not hi > lo:
            raise ValueError(f"score_range must satisfy low < high, got {tuple(score_range)}")
        self.mode, self.bins, self.score_range = mode, int(bins), (lo, hi)
        self.reset()

    def reset(self) -> None:
        """Forget all counts."""
        self._counts: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self.n_clipped = 0

    def update(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        score_name: str = "scores",
    ) -> None:
        """Add ``scores`` [...] with bool ``labels`` [...] and optional bool ``mask`` [...] (True = use).

        Inputs come from :func:`prepare`. A NaN score (where ``mask`` is True) raises ``ValueError``
        and leaves the counts unchanged.
        """
        scores, labels = scores.reshape(-1), labels.reshape(-1)
        mask = None if mask is None else mask.reshape(-1)
        if self.mode == "hist":
            counts = self._hist(scores, labels, mask, score_name)
            self._counts = counts if self._counts is None else self._counts.add_(counts)
            return
        if mask is not None:
            scores, labels = scores[mask], labels[mask]
        if scores.is_floating_point():
            n_nan = int(torch.isnan(scores).sum())
            if n_nan:
                raise _nan_error(score_name, n_nan, scores.numel())
        if scores.numel() == 0:
            return
        values, counts = self._unique(scores, labels)
        if self._values is not None:
            dtype = torch.promote_types(values.dtype, self._values.dtype)
            both = torch.cat([self._values.to(dtype), values.to(dtype)])
            values, inv = torch.unique(both, sorted=True, return_inverse=True)
            merged = torch.zeros(values.numel(), 2, dtype=torch.int64, device=values.device)
            counts = merged.index_add_(0, inv, torch.cat([self._counts, counts]))
        self._values, self._counts = values, counts

    def counts(self) -> torch.Tensor | None:
        """[K, 2] int64 counts (negatives, positives) in ascending score order, or None if empty."""
        return self._counts

    def _unique(self, scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, inv = torch.unique(scores, sorted=True, return_inverse=True)
        codes = inv * 2 + labels
        return values, torch.bincount(codes, minlength=2 * values.numel()).view(-1, 2)

    def _hist(
        self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None, score_name: str
    ) -> torch.Tensor:
        # One pass in chunks of _CHUNK elements: working memory is O(_CHUNK + bins), whatever N is.
        lo, hi = self.score_range
        scale = self.bins / (hi - lo)
        dev = scores.device
        fdtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        acc = torch.zeros(2 * self.bins, dtype=torch.int64, device=dev)
        on_cpu = dev.type == "cpu"
        inside = torch.ones((), dtype=torch.bool, device=dev)  # all scores in range and not NaN
        step = max(1, min(_CHUNK, scores.numel()))
        fbuf = torch.empty(step, dtype=fdtype, device=dev)
        ibuf = torch.empty(step, dtype=torch.int64, device=dev)
        for start in range(0, scores.numel(), step):
            s, y = scores[start : start + step], labels[start : start + step]
            if mask is not None:
                m = mask[start : start + step]
                s, y = s[m], y[m]
            k = s.numel()
            if k == 0:
                continue
            mn, mx = torch.aminmax(s)  # NaN propagates into both
            ok = (mn >= lo) & (mx <= hi)
            inside &= ok
            if on_cpu and not bool(ok) and bool(torch.isnan(mn)):
                break  # a NaN batch is rejected below; on GPU the check waits for the end (no sync)
            f = torch.mul(s, scale, out=fbuf[:k]) if lo == 0.0 else torch.sub(s, lo, out=fbuf[:k]).mul_(scale)
            if not on_cpu:
                f.nan_to_num_(0.0)  # keeps the int cast defined until the NaN check after the loop
            f.clamp_(0, self.bins - 1)  # clip before the int cast (inf too)
            idx = ibuf[:k]
            idx.copy_(f)  # truncation == floor, as f >= 0
            idx.add_(y, alpha=self.bins)  # label-major: [negatives' bins | positives' bins]
            acc += torch.bincount(idx, minlength=2 * self.bins)
        if not bool(inside):  # rare path: one more pass to name what went wrong
            sel = scores if mask is None else scores[mask]
            n_nan = int(torch.isnan(sel).sum()) if sel.is_floating_point() else 0
            if n_nan:
                raise _nan_error(score_name, n_nan, sel.numel())
            n_out = int(((sel < lo) | (sel > hi)).sum())
            self.n_clipped += n_out
            warnings.warn(
                f"{n_out} {score_name} value(s) outside score_range {self.score_range} were clipped into the end bins",
                stacklevel=4,
            )
        return acc.view(2, self.bins).t().contiguous()


def binary_curve_metrics(
    scores: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
    mode: str = "exact",
    bins: int = 1 << 16,
    score_range: Sequence[float] = (0.0, 1.0),
    tpr_level: float = 0.95,
    fpr_rule: str = "first_ge",
) -> dict[str, float]:
    """One-shot AP, AUROC and FPR at ``tpr_level`` (fractions, like scikit-learn).

    Args:
        scores: [...] real scores, higher means positive. NaN raises ``ValueError``.
        labels: [...] binary, same shape (True/1 = positive).
        mask: optional [...] bool, True = evaluate this element.
        mode, bins, score_range: see :class:`BinaryCurveAccumulator`.
        tpr_level, fpr_rule: see :func:`curve_metrics_from_counts`.

    Returns:
        dict with ``ap``, ``auroc``, ``fpr_at_tpr``, ``n_pos``, ``n_neg``.
    """
    s, y, m = prepare(scores, labels, mask)
    acc = BinaryCurveAccumulator(mode, bins, score_range)
    acc.update(s, y, m)
    counts = acc.counts()
    if counts is None:
        counts = torch.zeros(0, 2, dtype=torch.int64)
    desc = counts.flip(0)
    return curve_metrics_from_counts(desc[:, 1], desc[:, 0], tpr_level, fpr_rule)
