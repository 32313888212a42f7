"""Report figures as in-memory PNG bytes: per-case tumour-slice thumbnails, paper-Fig.-6 scatter plots and
the risk-coverage curves of ranking the cases by the predicted Dice.

Matplotlib is used through :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state), so rendering
needs no display and leaves the global backend alone.

Thumbnails show the axial slice with the most predicted-or-true tumour voxels (else the most pancreas
voxels, else the middle slice) in radiological convention: the volume is read in its closest canonical
(RAS) orientation, as :func:`nibabel.as_closest_canonical` would give, and drawn with anterior up and the
patient's right on the image's left. Only the chosen slice of the CT, synthesized CT and error map is
read from disk. Missing inputs: ``image`` and ``pred`` are required; ``synth``, ``error_map`` and
``label`` may be ``None`` (drawn as an "n/a" panel / no ground-truth contour); any path that is given but
does not exist or is unreadable raises :class:`~synthcp3d.data.io.DataError` naming the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthcp3d.data.io import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CT_WINDOW", "Thumbnail", "canonical_axial_slice", "render_risk_coverage", "render_scatter",
           "render_thumbnail", "risk_coverage_figure"]

CT_WINDOW: tuple[float, float] = (-135.0, 215.0)  # abdominal soft-tissue window: level 40 HU, width 350 HU
_DPI = 100


def _png(fig) -> bytes:
    """Figure -> 8-bit palette PNG (about half the size of matplotlib's RGBA output, no metadata)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    buf.seek(0)
    with Image.open(buf) as im:
        out = io.BytesIO()
        im.convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _crop_box(fg: np.ndarray, zooms: tuple[float, float], min_mm: float) -> tuple[slice, slice]:
    """Square (in mm) window around the foreground of a canonical (R, A) mask, 1.5x its extent, >= min_mm."""
    if not fg.any():
        return slice(None), slice(None)
    box = []
    side_mm = max(min_mm, 1.5 * max((np.ptp(np.flatnonzero(fg.any(1 - a))) + 1) * zooms[a] for a in (0, 1)))
    for a in (0, 1):
        idx = np.flatnonzero(fg.any(1 - a))
        n, side = fg.shape[a], int(round(side_mm / zooms[a]))
        if side >= n:
            box.append(slice(0, n))
            continue
        lo = int(np.clip(round((idx[0] + idx[-1]) / 2 - side / 2), 0, n - side))
        box.append(slice(lo, lo + side))
    return box[0], box[1]


@dataclass(frozen=True)
class Thumbnail:
    """One case's 4-panel PNG (CT, prediction overlay, synthesized CT, error map) and its slice."""

    png: bytes
    slice_index: int  # axial index in canonical (RAS) orientation
    basis: str  # "tumour", "pancreas" or "middle": what chose the slice


def _load(path, role: str, case_id: str):
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise DataError(p, f"{role} NIfTI of case {case_id!r} not found")
    try:
        img = nib.load(str(p))
    except Exception as e:  # nibabel raises several types for bad files
        raise DataError(p, f"unreadable {role} NIfTI of case {case_id!r} ({e})") from None
    if len(img.shape) < 3 or any(s != 1 for s in img.shape[3:]):
        raise DataError(p, f"{role} of case {case_id!r} is not a 3D volume (shape {img.shape})")
    return img


def canonical_axial_slice(img, k: int, ornt: np.ndarray | None = None) -> np.ndarray:
    """Axial slice ``k`` of the closest canonical (RAS) orientation, reading only that slice.

    Equal to ``as_closest_canonical(img).get_fdata()[:, :, k]`` (as float32), axes (R, A).

    Args:
        img: a nibabel image of a 3D volume (trailing singleton axes allowed).
        k: axial index in canonical orientation (inferior to superior).
        ornt: orientation of the grid, ``nibabel.io_orientation(affine)``; default from ``img.affine``.
    """
    import nibabel as nib

    ornt = nib.io_orientation(img.affine) if ornt is None else ornt
    src = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    kk = img.shape[src] - 1 - k if ornt[src, 1] < 0 else k
    index: list = [slice(None)] * 3 + [0] * (len(img.shape) - 3)
    index[src] = kk
    s = np.asarray(img.dataobj[tuple(index)], dtype=np.float32)
    rest = [a for a in range(3) if a != src]
    for pos, a in enumerate(rest):
        if ornt[a, 1] < 0:
            s = np.flip(s, pos)
    return np.ascontiguousarray(s.T if ornt[rest[0], 0] == 1 else s)


def _canonical_volume(img, ornt: np.ndarray) -> np.ndarray:
    import nibabel as nib

    arr = np.asanyarray(img.dataobj).reshape(img.shape[:3])
    return nib.orientations.apply_orientation(arr, ornt)


def _display(s: np.ndarray) -> np.ndarray:
    """Canonical (R, A) slice -> image rows anterior-first, columns patient-right-first (radiological)."""
    return s.T[::-1, ::-1]


def render_thumbnail(row: dict, *, height_px: int = 120, crop_mm: float | None = 80.0) -> Thumbnail:
    """Four-panel PNG of a case's tumour slice: CT, CT + prediction, synthesized CT, error map.

    The prediction panel fills predicted tumour in red, outlines predicted pancreas in yellow and, when a
    ground-truth label is given, outlines the true tumour in cyan. Panels are cropped to a square around
    the predicted-or-true pancreas and tumour (1.5x their extent, at least ``crop_mm``), so a small tumour
    stays visible at thumbnail size.

    Args:
        row: alarm-table row with ``case_id``, ``image``, ``pred`` and optional ``synth``, ``error_map``,
            ``label`` paths.
        height_px: panel height in pixels; the panel width follows the slice's physical aspect ratio.
        crop_mm: smallest side of the crop window in mm; ``None`` shows the whole slice.

    Raises:
        DataError: a given file is missing, unreadable, not 3D or on a different grid than ``image``.
    """
    import nibabel as nib
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    case = str(row.get("case_id"))
    for role in ("image", "pred"):
        if not row.get(role):
            raise DataError(None, f"case {case!r} has no {role!r} path (needed for its thumbnail)")
    img = _load(row["image"], "image", case)
    vols = {role: _load(row[role], role, case) for role in ("pred", "label", "synth", "error_map") if row.get(role)}
    for role, v in vols.items():
        if v.shape[:3] != img.shape[:3]:
            raise DataError(v.get_filename(), f"{role} of case {case!r} has shape {v.shape[:3]}, "
                                              f"image has {img.shape[:3]}")
    ornt = nib.io_orientation(img.affine)
    pred = _canonical_volume(vols["pred"], ornt).astype(np.int16)
    label = _canonical_volume(vols["label"], ornt).astype(np.int16) if "label" in vols else np.zeros_like(pred)
    counts = ((pred == 2) | (label == 2)).sum((0, 1))
    basis = "tumour"
    if not counts.any():
        counts, basis = ((pred > 0) | (label > 0)).sum((0, 1)), "pancreas"
    k = int(np.argmax(counts)) if counts.any() else pred.shape[2] // 2
    basis = basis if counts.any() else "middle"

    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    zx, zy = (zooms[int(np.flatnonzero(ornt[:, 0] == c)[0])] for c in (0, 1))
    box = ((slice(None), slice(None)) if crop_mm is None
           else _crop_box(((pred > 0) | (label > 0)).any(2), (zx, zy), crop_mm))
    nx, ny = pred[box].shape[:2]
    width_px = int(np.clip(round(height_px * (nx * zx) / (ny * zy)), height_px // 2, 2 * height_px))
    gap = 2
    fig = Figure(figsize=((4 * width_px + 3 * gap) / _DPI, height_px / _DPI), dpi=_DPI, facecolor="white")
    total = 4 * width_px + 3 * gap
    axes = [fig.add_axes((i * (width_px + gap) / total, 0, width_px / total, 1)) for i in range(4)]
    ct = _display(canonical_axial_slice(img, k, ornt)[box])
    gray = {"cmap": "gray", "vmin": CT_WINDOW[0], "vmax": CT_WINDOW[1], "aspect": "auto"}
    axes[0].imshow(ct, **gray)
    axes[1].imshow(ct, **gray)
    p2, l2 = _display(pred[box][:, :, k]), _display(label[box][:, :, k])
    axes[1].imshow(np.ma.masked_where(p2 != 2, p2), cmap=ListedColormap(["red"]), alpha=0.45, aspect="auto",
                   interpolation="nearest")
    for mask, color, style in ((p2 > 0, "yellow", "solid"), (p2 == 2, "red", "solid"),
                               (l2 == 2, "cyan", "dashed")):
        if mask.any() and not mask.all():
            axes[1].contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=0.8,
                            linestyles=style)
    for ax, role, name in ((axes[2], "synth", "synth"), (axes[3], "error_map", "error")):
        if role not in vols:
            ax.set_facecolor("0.85")
            ax.text(0.5, 0.5, f"no {name}", ha="center", va="center", fontsize=7, color="0.3",
                    transform=ax.transAxes)
            continue
        s = _display(canonical_axial_slice(vols[role], k, ornt)[box])
        if role == "synth":
            ax.imshow(s, **gray)
        else:
            ax.imshow(np.clip(s, 0, 1), cmap="inferno", vmin=0, vmax=1, aspect="auto")
    for ax, name in zip(axes, ("CT", "pred", "synth", "error"), strict=True):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.text(0.03, 0.97, name, ha="left", va="top", fontsize=6, color="white", transform=ax.transAxes,
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    axes[0].text(0.03, 0.03, "R", ha="left", va="bottom", fontsize=6, color="white", transform=axes[0].transAxes)
    return Thumbnail(_png(fig), k, basis)


_SPLIT_COLORS = {"cv": "tab:blue", "test": "tab:orange", "new": "tab:green"}


def render_scatter(rows: list[dict], summary: dict, cls: str = "tumour") -> bytes | None:
    """Paper Fig. 6: predicted vs. true Dice of ``cls``, one panel per method, identity line, r in title.

    Args:
        rows: alarm-table rows; those without a true Dice for ``cls`` are skipped.
        summary: :func:`~synthcp3d.reports.table2.summarize` output (gives methods, r, n, threshold).
        cls: class to plot.

    Returns:
        PNG bytes, or ``None`` when no method has a case with both values.
    """
    from matplotlib.figure import Figure

    from .table2 import METHOD_LABELS, _num

    cells = summary["table"].get(cls, {})
    methods = [m for m in summary["methods"] if cells.get(m, {}).get("n")]
    if not methods:
        return None
    thr = summary["threshold"]
    fig = Figure(figsize=(2.5 * len(methods) + 0.4, 2.9), dpi=_DPI, facecolor="white")
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for i, (ax, m) in enumerate(zip(axes, methods, strict=True)):
        by_split: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            t = _num((r.get("true") or {}).get(cls))
            p = _num(((r.get("predicted") or {}).get(m) or {}).get(cls))
            if t is not None and p is not None:
                by_split.setdefault(str(r.get("split")), []).append((t, p))
        ax.plot([0, 1], [0, 1], color="0.55", lw=0.8, ls="--", zorder=1)
        ax.axhline(thr, color="0.85", lw=0.6, zorder=0)
        ax.axvline(thr, color="0.85", lw=0.6, zorder=0)
        for split, pts in sorted(by_split.items()):
            t, p = np.array(pts).T
            ax.scatter(t, p, s=12, alpha=0.8, color=_SPLIT_COLORS.get(split, "tab:gray"), label=split, zorder=2,
                       linewidths=0)
        pc = cells[m]["pearson"]
        r_txt = f"r = {pc / 100:.2f}" if pc is not None else "r = n/a"
        ax.set_title(f"{METHOD_LABELS.get(m, m)}\n{r_txt} (n = {cells[m]['n']})", fontsize=8)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel(f"true {cls} Dice", fontsize=7)
        if i == 0:
            ax.set_ylabel(f"predicted {cls} Dice", fontsize=7)
            if len(by_split) > 1:
                ax.legend(fontsize=6, loc="upper left", handletextpad=0.2, borderpad=0.3)
    fig.tight_layout(pad=0.4)
    return _png(fig)


_METHOD_COLORS = {"direct_prediction": "tab:blue", "vae_alarm": "tab:orange", "synthcp": "tab:green",
                  "ensemble": "tab:red", "ensemble_weighted": "tab:purple", "ensemble_agreement": "tab:brown",
                  "msp": "tab:pink", "entropy": "tab:olive"}  # fmt: skip


def render_risk_coverage(rows: list[dict], summary: dict, cls: str = "tumour") -> bytes | None:
    """Risk-coverage curves of ``cls``: cases accepted by decreasing predicted Dice, selective risk = mean
    ``1 - true Dice`` of the accepted ones (Zenk et al., MedIA 2025), one curve per method, AURC x100 in the
    legend (the mean of the plotted values, :func:`synthcp3d.metrics.aurc`).

    References, over the cases with a true Dice that some plotted method predicts: the optimal ranking
    (by increasing risk) and a random ranking (a horizontal line at the mean risk, what a constant
    prediction scores). Inside a tie of predicted Dice the curve shows the expected risk over the tie's orders.

    Args:
        rows: alarm-table rows; a method's curve uses the rows with both its predicted and the true Dice.
        summary: :func:`~synthcp3d.reports.table2.summarize` output (gives the methods, in order).
        cls: class to plot.

    Returns:
        PNG bytes, or ``None`` when no method has a case with both values.
    """
    fig = risk_coverage_figure(rows, summary, cls)
    return None if fig is None else _png(fig)


def risk_coverage_figure(rows: list[dict], summary: dict, cls: str = "tumour") -> Figure | None:
    """The :class:`matplotlib.figure.Figure` that :func:`render_risk_coverage` saves, or ``None``."""
    from matplotlib.figure import Figure

    from synthcp3d.metrics import aurc, optimal_aurc, risk_coverage_curve

    from .table2 import METHOD_LABELS, _num

    curves = []
    reference: dict[int, float] = {}  # row index -> risk of the cases some method predicts
    for m in summary["methods"]:
        conf, risk = [], []
        for i, r in enumerate(rows):
            t = _num((r.get("true") or {}).get(cls))
            p = _num(((r.get("predicted") or {}).get(m) or {}).get(cls))
            if t is not None and p is not None:
                conf.append(p)
                risk.append(1.0 - t)
                reference[i] = 1.0 - t
        if conf:
            curves.append((m, conf, risk))
    if not curves:
        return None
    ref = np.array(list(reference.values()))
    fig = Figure(figsize=(4.6, 3.3), dpi=_DPI, facecolor="white")
    ax = fig.subplots()
    top = float(ref.max())
    for m, conf, risk in curves:
        cov, sel = risk_coverage_curve(conf, risk, per_case=True)
        top = max(top, float(sel.max()))
        ax.plot(cov, sel, lw=1.3, marker="o" if cov.size < 30 else None, ms=2.5,
                color=_METHOD_COLORS.get(m), label=f"{METHOD_LABELS.get(m, m)} (AURC {100 * aurc(conf, risk):.1f}, "
                f"n = {len(conf)})")
    cov, sel = risk_coverage_curve(-ref, ref, per_case=True)
    ax.plot(cov, sel, color="black", lw=1.0, ls="--", label=f"optimal ranking (AURC {100 * optimal_aurc(ref):.1f})")
    ax.axhline(float(ref.mean()), color="0.45", lw=1.0, ls=":",
               label=f"random ranking (AURC {100 * ref.mean():.1f})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.02, min(1.0, top) * 1.05 + 0.02)
    ax.set_xlabel(f"coverage (fraction of cases accepted, by decreasing predicted {cls} Dice)", fontsize=7)
    ax.set_ylabel(f"selective risk (mean 1 - true {cls} Dice)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(color="0.92", lw=0.6)
    ax.legend(fontsize=6, loc="best", handlelength=2.2, borderpad=0.3, framealpha=0.9)
    ax.set_title(f"Risk-coverage, {cls} (AURC x100, lower is better)", fontsize=8)
    fig.tight_layout(pad=0.4)
    return fig
