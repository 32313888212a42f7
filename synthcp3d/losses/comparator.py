"""Training loss of the comparison module (paper eq. 8), with masking of absent classes and ignore voxels."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ComparatorLoss"]


class ComparatorLoss(nn.Module):
    """``score_weight * L_score + error_weight * L_error`` (paper eq. 8).

    - ``L_score``: L1 (paper) or SmoothL1 between predicted and true per-class scores, averaged over the
      (case, class) entries whose true score is finite; a NaN true score marks a class absent from the
      ground truth and is skipped.
    - ``L_error``: binary cross-entropy with logits between the error-map logits and the true error map
      (1 where ŷ != y), averaged over voxels that are not ignored.

    Either term is skipped when its prediction is missing from ``pred`` (a head switched off).

    Args:
        score_loss: ``"l1"`` or ``"smooth_l1"``.
        score_weight: weight of the score term.
        error_weight: weight of the error-map term.
        beta: SmoothL1 transition point.

    Shapes: ``pred`` dict with ``"scores"`` (B, C) and/or ``"error_logits"`` (B, 1, *S); ``true_scores``
    (B, C) with NaN for absent classes; ``true_error`` (B, 1, *S) in {0, 1}; ``ignore`` (B, 1, *S) bool, True
    where a voxel has no label. Returns a dict of scalars: ``"loss"``, ``"score"``, ``"error"``.
    """

    def __init__(
        self, score_loss: str = "l1", score_weight: float = 1.0, error_weight: float = 1.0, beta: float = 0.1
    ) -> None:
        super().__init__()
        if score_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"score_loss must be 'l1' or 'smooth_l1', got {score_loss!r}.")
        self.score_loss = score_loss
        self.score_weight = score_weight
        self.error_weight = error_weight
        self.beta = beta

    def forward(
        self,
        pred: dict[str, torch.Tensor],
        true_scores: torch.Tensor | None = None,
        true_error: torch.Tensor | None = None,
        ignore: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if "scores" in pred:
            if true_scores is None:
                raise ValueError("pred has 'scores' but true_scores is None.")
            s = pred["scores"].float()
            if s.shape != true_scores.shape:
                raise ValueError(f"scores {tuple(s.shape)} and true_scores {tuple(true_scores.shape)} differ.")
            valid = torch.isfinite(true_scores)
            target = torch.where(valid, true_scores, torch.zeros_like(true_scores)).to(s.dtype)
            if self.score_loss == "l1":
                per = (s - target).abs()
            else:
                per = F.smooth_l1_loss(s, target, reduction="none", beta=self.beta)
            terms["score"] = (per * valid).sum() / valid.sum().clamp_min(1)
        if "error_logits" in pred:
            if true_error is None:
                raise ValueError("pred has 'error_logits' but true_error is None.")
            logits = pred["error_logits"].float()
            if logits.shape != true_error.shape:
                raise ValueError(f"error_logits {tuple(logits.shape)} and true_error {tuple(true_error.shape)} differ.")
            per = F.binary_cross_entropy_with_logits(logits, true_error.to(logits.dtype), reduction="none")
            if ignore is None:
                terms["error"] = per.mean()
            else:
                keep = ~ignore.bool().expand_as(per)
                terms["error"] = (per * keep).sum() / keep.sum().clamp_min(1)
        if not terms:
            raise ValueError("pred has neither 'scores' nor 'error_logits'.")
        zero = next(iter(terms.values())).new_zeros(())
        score = terms.get("score", zero)
        error = terms.get("error", zero)
        return {"loss": self.score_weight * score + self.error_weight * error, "score": score, "error": error}
