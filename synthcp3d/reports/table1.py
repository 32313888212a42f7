"""Paper Table 1 (Cityscapes failure detection) from :func:`~synthcp3d.alarms.failure_detection.evaluate_index`
results: one row per method, image-level MAE / STD / P.C. / S.C. (per-class IoU, averaged over classes) and
pixel-level AUPR-Error / AUPR-Success / AUROC / FPR95 (pooled over labelled pixels), N/A where a method has no
such output; plus the generalisation test (detectors trained on one segmenter's masks, tested on another's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .tables import Column, Table, write_tables

__all__ = ["COLUMNS", "iou_scatter_png", "table1_rows", "write_table1"]

COLUMNS = (
    Column("method", "Method", fmt=""),
    Column("mae", "MAE", "lower"), Column("std", "STD", "lower"),
    Column("pearson", "P.C.", "higher"), Column("spearman", "S.C.", "higher"),
    Column("aupr_error", "AUPR-Error", "higher"), Column("aupr_success", "AUPR-Success", "higher"),
    Column("auroc", "AUROC", "higher"), Column("fpr95", "FPR95", "lower"),
)  # fmt: skip
_IMAGE_KEYS = ("mae", "std", "pearson", "spearman")
_PIXEL_KEYS = ("aupr_error", "aupr_success", "auroc", "fpr95")
_UNTRAINED = ("msp", "entropy", "mcdropout")


def table1_rows(result: Mapping, labels: Mapping[str, str] | None = None, **extra) -> list[dict]:
    """Rows of one evaluation result (methods in :data:`~synthcp3d.alarms.failure_detection.METHOD_LABELS`
    order), each ``{"method", "key", mae.., aupr_error.., **extra}``; a method without image- or pixel-level
    output has ``None`` there."""
    from synthcp3d.alarms.failure_detection import METHOD_LABELS

    labels = labels or METHOD_LABELS
    image, pixel = result.get("image_level", {}), result.get("pixel_level", {})
    rows = []
    for m in [m for m in METHOD_LABELS if m in image or m in pixel]:
        row = {"method": labels.get(m, m), "key": m, **extra}
        row.update({k: (image.get(m) or {}).get(k) for k in _IMAGE_KEYS})
        row.update({k: (pixel.get(m) or {}).get(k) for k in _PIXEL_KEYS})
        rows.append(row)
    return rows


def write_table1(result: Mapping, out_dir: str | Path, *, generalisation: Sequence[Mapping] = (),
                 title: str = "Failure detection (paper Table 1)", notes: str | Sequence[str] = "",
                 figures: Mapping[str, bytes] | None = None, stem: str = "table1") -> dict[str, Path]:
    """Write ``<stem>.csv/.json/.html``: Table 1 of ``result`` and, per generalisation result (each a result
    dict with ``"trained_on"`` and ``"tested_on"`` names), a second table.

    Returns:
        ``{"csv", "json", "html"}`` paths.
    """
    n = result.get("n_images")
    tables = [Table("table1", COLUMNS, table1_rows(result),
                    f"Failure detection on {n} images: image level (per-class IoU, mean over classes) | pixel "
                    "level (pooled over labelled pixels), percent")]  # fmt: skip
    if generalisation:
        rows = []
        for g in generalisation:
            for row in table1_rows(g, trained_on=g.get("trained_on"), tested_on=g.get("tested_on")):
                if row["key"] in _UNTRAINED:  # MSP & co. are the tested segmenter's own outputs: nothing trained
                    row["trained_on"] = None
                rows.append(row)
        cols = (COLUMNS[0], Column("trained_on", "Detectors trained on", fmt=""),
                Column("tested_on", "Tested on", fmt=""), *COLUMNS[1:])  # fmt: skip
        tables.append(Table("generalisation", cols, rows,
                            "Generalisation: detectors trained on one segmenter's masks, tested on another's"))
    return write_tables(tables, out_dir, stem, title=title, notes=notes, figures=figures)


def iou_scatter_png(result: Mapping) -> bytes | None:
    """Predicted vs. true per-class IoU (every image x class with a true IoU), one panel per image-level method
    (as the paper's Fig. 5, bottom, pooled over classes); ``None`` without image-level results."""
    import io

    import numpy as np
    from matplotlib.figure import Figure

    from synthcp3d.alarms.failure_detection import METHOD_LABELS

    pred, true = result.get("predicted_iou") or {}, result.get("true_iou")
    methods = [m for m in METHOD_LABELS if m in pred]
    if not methods or not true:
        return None
    t = np.array(true, dtype=np.float64)  # None -> nan
    fig = Figure(figsize=(2.6 * len(methods), 2.8), dpi=100, layout="constrained")
    for i, m in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        p = np.array(pred[m], dtype=np.float64)
        ok = np.isfinite(t) & np.isfinite(p)
        ax.scatter(t[ok], p[ok], s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=METHOD_LABELS[m], xlabel="true IoU")
        if i == 0:
            ax.set_ylabel("predicted IoU")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
