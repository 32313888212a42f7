"""synthcp3d.metrics: SynthCP evaluation metrics (paper section 4).

- :func:`image_level`: MAE / STD / Pearson / Spearman of predicted vs. true Dice/IoU, triage accuracy.
- :class:`PixelFailureMetrics`: AUPR-Error, AUPR-Success, AUROC, FPR95, streamed (pooled or per image).
- :class:`AnomalyMetrics`: FPR95, AUROC, AUPR with anomaly positive, streamed (pooled or per image).
- :func:`dice_iou`: per-case, per-class Dice and IoU of label maps with an ignore label.
- :func:`binary_curve_metrics`, :class:`BinaryCurveAccumulator`: generic exact / histogram curves.

Image-level and pixel-level outputs are in percent, as the paper reports; ``dice_iou`` and
``binary_curve_metrics`` return fractions like MONAI and scikit-learn.
"""

from .curves import BinaryCurveAccumulator, binary_curve_metrics, curve_metrics_from_counts
from .image_level import image_level
from .pixel import AnomalyMetrics, PixelFailureMetrics
from .segmentation import dice_iou

__all__ = [
    "AnomalyMetrics",
    "BinaryCurveAccumulator",
    "PixelFailureMetrics",
    "binary_curve_metrics",
    "curve_metrics_from_counts",
    "dice_iou",
    "image_level",
]
