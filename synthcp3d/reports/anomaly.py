"""Anomaly segmentation report: paper Table 3 (methods), Table 4 (post-processing threshold sweep) and a
Fig.-7-style grid of examples (image, ground truth, prediction, synthesized image, MSP map, SynthCP map).

Tables are written by :func:`synthcp3d.reports.tables.write_tables` (CSV + JSON + one self-contained HTML
page with the grid embedded); the raw results of :func:`synthcp3d.alarms.anomaly.evaluate_anomaly`
(without the example arrays) go to ``anomaly_metrics.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from synthcp3d.data.io import atomic_write_text

from .figures import _png
from .tables import Column, Table, write_tables

__all__ = ["anomaly_tables", "render_anomaly_grid", "write_anomaly_report"]

_METRICS = (("fpr95", "FPR95 ↓", "lower"), ("auroc", "AUROC ↑", "higher"), ("aupr", "AUPR ↑", "higher"))
_PANELS = (("image", "image"), ("label", "ground truth"), ("pred", "prediction"), ("synth", "synthesized x̂"),
           ("msp", "MSP"), ("synthcp", "SynthCP"))  # fmt: skip


def anomaly_tables(results: Mapping) -> list[Table]:
    """Table 3 (one row per method) and Table 4 (one row per metric, one column per ``t``) from
    :func:`~synthcp3d.alarms.anomaly.evaluate_anomaly` results; values in percent."""
    rows3 = [{"method": name, **{k: m.get(k) for k, _, _ in _METRICS}, "n_images": m.get("n_images")}
             for name, m in results["methods"].items()]  # fmt: skip
    cols3 = ["method", *(Column(k, label, better) for k, label, better in _METRICS),
             Column("n_images", "images", fmt=".0f")]  # fmt: skip
    sweep = results["sweep"]
    tkeys = {float(t): f"t={float(t):g}" for t in sweep}
    rows4 = [{"metric": label, **{tkeys[float(t)]: m.get(k) for t, m in sweep.items()}} for k, label, _ in _METRICS]
    n, skipped = results.get("n_images", 0), results.get("n_skipped", 0)
    return [
        Table("table3", cols3, rows3, "Anomaly segmentation (paper Table 3): per-image FPR95 / AUROC / AUPR in "
              f"percent, anomaly positive, averaged over {n} test images ({skipped} without anomaly skipped)."),
        Table("table4", ["metric", *(Column(v) for v in tkeys.values())], rows4,
              "SynthCP with MSP post-processing at threshold t (paper Table 4); t=1 is no post-processing."),
    ]  # fmt: skip


def _colour(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class map -> (H, W, 3) uint8 with ``palette`` (values past the palette, e.g. 255, black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    return lut[np.clip(label, 0, 255).astype(np.intp)]


def render_anomaly_grid(examples: Sequence[Mapping], palette: np.ndarray, *, panel_px: int = 160) -> bytes | None:
    """One row per example, as the paper's Fig. 7: image | ground truth | prediction | synthesized | MSP | SynthCP.

    Args:
        examples: dicts with ``image``, ``synth`` (H, W, 3) uint8; ``label``, ``pred`` (H, W) ints; ``msp``,
            ``synthcp`` (H, W) anomaly scores (each map is drawn min-max scaled, bright = anomalous);
            optional ``case_id`` (row title).
        palette: (N, 3) uint8 class colours (e.g. ``STREETHAZARDS_PALETTE``).
        panel_px: panel width in pixels.

    Returns:
        PNG bytes, or None without examples.
    """
    if not examples:
        return None
    from matplotlib.figure import Figure

    h, w = np.asarray(examples[0]["label"]).shape
    pw, ph = panel_px / 100, panel_px * h / w / 100
    fig = Figure(figsize=(pw * len(_PANELS), (ph + 0.25) * len(examples)), dpi=100)
    axes = fig.subplots(len(examples), len(_PANELS), squeeze=False)
    for r, ex in enumerate(examples):
        for c, (key, title) in enumerate(_PANELS):
            ax = axes[r, c]
            v = np.asarray(ex[key])
            if key in ("label", "pred"):
                ax.imshow(_colour(v, palette), interpolation="nearest")
            elif key in ("msp", "synthcp"):
                ax.imshow(v, cmap="magma", vmin=float(v.min()), vmax=max(float(v.max()), float(v.min()) + 1e-6),
                          interpolation="nearest")  # fmt: skip
            else:
                ax.imshow(v, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if c else f"{ex.get('case_id', r)}: {title}", fontsize=7)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - 0.25 / ((ph + 0.25) * len(examples)),
                        wspace=0.03, hspace=0.25)  # fmt: skip
    return _png(fig)


def write_anomaly_report(
    results: Mapping,
    out_dir: str | Path,
    *,
    palette: np.ndarray,
    title: str = "SynthCP anomaly segmentation",
    notes: str | Sequence[str] = "",
) -> dict:
    """Write ``anomaly.{csv,json,html}`` (Tables 3 and 4, the Fig.-7 grid embedded) and ``anomaly_metrics.json``.

    Returns:
        ``{"csv", "json", "html", "metrics": Path}``.
    """
    out_dir = Path(out_dir)
    grid = render_anomaly_grid(results.get("examples", []), palette)
    figures = {"Examples (paper Fig. 7): image, ground truth, prediction, x̂ = G(prediction), MSP and SynthCP "
               "anomaly maps (bright = anomalous)": grid} if grid else None  # fmt: skip
    paths = write_tables(anomaly_tables(results), out_dir, "anomaly", title=title, notes=notes, figures=figures)
    raw = {k: v for k, v in results.items() if k != "examples"}
    raw["sweep"] = {f"{float(t):g}": m for t, m in raw.get("sweep", {}).items()}
    atomic_write_text(out_dir / "anomaly_metrics.json", json.dumps(raw, indent=1, default=float) + "\n")
    return {**paths, "metrics": out_dir / "anomaly_metrics.json"}
