"""synthcp3d.metrics: SynthCP evaluation metrics (paper section 4).

- :func:`image_level`: MAE / STD / Pearson / Spearman of predicted vs. true Dice/IoU, triage accuracy.
- :class:`PixelFailureMetrics`: AUPR-Error, AUPR-Success, AUROC, FPR95, streamed (pooled or per image).
- :class:`AnomalyMetrics`: FPR95, AUROC, AUPR with anomaly positive, streamed (pooled or per image).
- :func:`dice_iou`: per-case, per-class Dice and IoU of label maps with an ignore label.
- :func:`binary_curve_metrics`, :class:`BinaryCurveAccumulator`: generic exact / histogram curves.
- :func:`risk_coverage_curve`, :func:`aurc`, :func:`excess_aurc`, :func:`optimal_aurc`, :func:`aurc_table`:
  ranking cases by a confidence (the predicted Dice) against a risk (1 - true Dice), Zenk et al. 2025.

Image-level and pixel-level outputs are in percent, as the paper reports; ``dice_iou``,
``binary_curve_metrics`` and the risk-coverage functions return fractions like MONAI and scikit-learn.
"""

from .curves import BinaryCurveAccumulator, binary_curve_metrics, curve_metrics_from_counts
from .image_level import image_level
from .pixel import AnomalyMetrics, PixelFailureMetrics
from .risk_coverage import aurc, aurc_table, excess_aurc, optimal_aurc, risk_coverage_curve
from .segmentation import dice_iou

__all__ = [
    "AnomalyMetrics",
    "BinaryCurveAccumulator",
    "PixelFailureMetrics",
    "aurc",
    "aurc_table",
    "binary_curve_metrics",
    "curve_metrics_from_counts",
    "dice_iou",
    "excess_aurc",
    "image_level",
    "optimal_aurc",
    "risk_coverage_curve",
]
