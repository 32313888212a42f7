"""Per-case SynthCP report from an alarm table: ``report.html``, ``report.csv``, ``report.json``.

Alarm-table contract (``alarm_table.json``, a JSON list, one row per case)::

    {"case_id": str, "split": "cv" | "test" | "new",
     "image": CT NIfTI (HU), "pred": uint8 label NIfTI (0 bg, 1 pancreas, 2 cancer),
     "synth": synthesized CT NIfTI or null, "error_map": float NIfTI in [0, 1] or null,
     "label": ground-truth label NIfTI or null,
     "true": {"pancreas": float | null, "tumour": float | null},
     "predicted": {method: {"pancreas": float | null, "tumour": float | null}},   # any subset of the methods
     "interval": {"pancreas": [lo, hi], "tumour": [lo, hi]}, "coverage": 0.9, "review": bool}

Every Dice (true, predicted, interval ends) and the coverage is a number in [0, 1] or null (missing); a
string, NaN or an out-of-range number is a :class:`~synthcp3d.data.io.DataError` naming the row and field.

Per-case display uses one *headline* method per row: the first present of ``ensemble``, ``synthcp``,
``vae_alarm``, ``direct_prediction`` (the interval is shown next to it). A case is flagged for review
when ``row["review"]`` is true or its headline predicted tumour Dice is below ``threshold``. Cases are
listed flagged first, then by increasing predicted tumour Dice.

Writing is all-or-nothing: the summary, figures, thumbnails and all three files are rendered in memory
first; only then is each file written through a temporary file and a rename. If anything fails while
rendering (an unreadable NIfTI, a plotting error), nothing is written and an earlier report in
``out_dir`` stays as it was.
"""

from __future__ import annotations

import csv
import io
import json
import numbers
from collections.abc import Sequence
from pathlib import Path

from synthcp3d.data.io import DataError, atomic_write_text, read_json

from . import figures
from .html import CaseView, render_html
from .table2 import CLASSES, _interval, _num, _predicted, _true, methods_present, summarize
from .tables import json_safe

__all__ = ["HEADLINE_ORDER", "REPORT_FILES", "load_alarm_table", "render_report", "write_report"]

HEADLINE_ORDER: tuple[str, ...] = ("ensemble", "synthcp", "vae_alarm", "direct_prediction")
REPORT_FILES: dict[str, str] = {"html": "report.html", "csv": "report.csv", "json": "report.json"}
_PATH_KEYS = ("image", "pred", "synth", "error_map", "label")


_DICE = "a number in [0, 1] or null"


def _is_unit(x) -> bool:
    """``x`` is a number in [0, 1] (NaN is not: the alarm stages write a missing value as null)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0.0 <= x <= 1.0


def _problem(row: dict) -> tuple[str, object, str] | None:
    """The first ``(field, value, expected)`` of ``row`` that breaks the contract, or None. Null is allowed
    wherever the alarm stages write it: no ground truth, a method that did not run, no interval, a failed case."""
    for key in ("true", "predicted", "interval"):
        if not isinstance(row.get(key) or {}, dict):
            return key, row[key], "an object or null"
    for cls, v in (row.get("true") or {}).items():
        if v is not None and not _is_unit(v):
            return f"true.{cls}", v, _DICE
    for m, per_class in (row.get("predicted") or {}).items():
        if not isinstance(per_class or {}, dict):
            return f"predicted.{m}", per_class, "an object or null"
        for cls, v in (per_class or {}).items():
            if v is not None and not _is_unit(v):
                return f"predicted.{m}.{cls}", v, _DICE
    for cls, iv in (row.get("interval") or {}).items():
        ends = [x for x in iv if x is not None] if isinstance(iv, (list, tuple)) and len(iv) == 2 else [-1]
        if iv is not None and (not all(map(_is_unit, ends)) or ends != sorted(ends)):
            return f"interval.{cls}", iv, "[lo, hi] with 0 <= lo <= hi <= 1 (or nulls)"
    if row.get("coverage") is not None and not _is_unit(row["coverage"]):
        return "coverage", row["coverage"], _DICE
    if not isinstance(row.get("review", False), bool):  # "no" would be truthy: flagged by accident
        return "review", row["review"], "true or false"
    return None


def _check_rows(rows, source: str | Path | None) -> None:
    if not isinstance(rows, list):
        raise DataError(source, f"alarm table must be a JSON list of rows, got {type(rows).__name__}")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("case_id"), str):
            raise DataError(source, f"alarm table row {i} is not an object with a string 'case_id'")
        if row["case_id"] in seen:
            raise DataError(source, f"alarm table has case_id {row['case_id']!r} twice")
        seen.add(row["case_id"])
        # else the summary skips a non-number as missing and averages an out-of-range one into the MAE
        problem = _problem(row)
        if problem:
            field, value, expected = problem
            raise DataError(source, f"row {i} (case {row['case_id']!r}): {field} must be {expected}, got {value!r}")


def load_alarm_table(path: str | Path, split: str = "all") -> list[dict]:
    """Read and check ``alarm_table.json``; relative file paths are taken relative to its folder.

    Args:
        path: the alarm table.
        split: keep only rows of this split (``"cv"``, ``"test"``, ``"new"``) or ``"all"``.

    Raises:
        DataError: missing or malformed table, or a value outside the contract (the message names the file,
            the row and the field).
    """
    path = Path(path)
    rows = read_json(path)
    _check_rows(rows, path)
    for row in rows:
        for key in _PATH_KEYS:
            if isinstance(row.get(key), str) and not Path(row[key]).is_absolute():
                row[key] = str(path.parent / row[key])
    return rows if split == "all" else [r for r in rows if r.get("split") == split]


def _headline(row: dict) -> str | None:
    predicted = row.get("predicted") or {}
    return next((m for m in HEADLINE_ORDER if predicted.get(m)), next(iter(predicted), None))


def _csv(cases: Sequence[CaseView], methods: Sequence[str], classes: Sequence[str]) -> str:
    header = ["case_id", "split", "review", "flagged", "headline_method",
              *(f"true_{c}" for c in classes),
              *(f"pred_{m}_{c}" for m in methods for c in classes),
              *(f"interval_{c}_{end}" for c in classes for end in ("lo", "hi")),
              "coverage", "thumbnail_slice"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def s(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    for c in cases:
        r = c.row
        ivs = [_interval(r, cls) for cls in classes]
        w.writerow([r["case_id"], r.get("split", ""), bool(r.get("review")), c.flagged, c.primary or "",
                    *(s(_true(r, cls)) for cls in classes),
                    *(s(_predicted(r, m, cls)) for m in methods for cls in classes),
                    *(s(iv[i]) if iv else "" for iv in ivs for i in (0, 1)),
                    s(_num(r.get("coverage"))), "" if c.thumbnail is None else c.thumbnail.slice_index])
    return buf.getvalue()


def render_report(rows: Sequence[dict], *, title: str = "SynthCP failure detection report", threshold: float = 0.5,
                  thumbnails: bool = True, classes: Sequence[str] = CLASSES) -> dict[str, str]:
    """Render the three report files in memory; nothing touches the disk except reading the NIfTIs.

    Args:
        rows: alarm-table rows (see the module docstring).
        title: page title.
        threshold: Dice threshold for triage accuracy and the review flag.
        thumbnails: render a tumour-slice thumbnail per case (reads the case's NIfTIs).
        classes: classes to summarise, headline first.

    Returns:
        ``{"html": str, "csv": str, "json": str}``.

    Raises:
        DataError: malformed rows, or a case's file is missing/unreadable (thumbnails only).
    """
    rows = list(rows)
    _check_rows(rows, None)
    summary = summarize(rows, classes=classes, threshold=threshold)
    methods = methods_present(rows)
    cases = []
    for r in rows:
        head = _headline(r)
        p = _predicted(r, head, "tumour") if head else None
        flagged = bool(r.get("review")) or (p is not None and p < threshold)
        cases.append(CaseView(r, flagged, head, figures.render_thumbnail(r) if thumbnails else None))

    def key(c: CaseView):
        p = _predicted(c.row, c.primary, "tumour") if c.primary else None
        return (not c.flagged, p is None, p if p is not None else 0.0, c.row["case_id"])

    cases.sort(key=key)
    scatter = figures.render_scatter(rows, summary, "tumour")
    page = render_html(title, summary, cases, scatter, thumbnails=thumbnails)
    doc = {"title": title, "threshold": float(threshold), "summary": summary,
           "order": [c.row["case_id"] for c in cases], "flagged": [c.row["case_id"] for c in cases if c.flagged],
           "headline_method": {c.row["case_id"]: c.primary for c in cases}, "rows": rows}
    return {"html": page, "csv": _csv(cases, methods, classes),
            "json": json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n"}


def write_report(rows: Sequence[dict], out_dir: str | Path, *, title: str = "SynthCP failure detection report",
                 threshold: float = 0.5, thumbnails: bool = True,
                 classes: Sequence[str] = CLASSES) -> dict[str, Path]:
    """Render and write ``report.html``, ``report.csv`` and ``report.json`` into ``out_dir``.

    Everything is rendered before the first byte is written; each file is then written atomically
    (temporary file + rename). A rendering error leaves ``out_dir`` untouched.

    Args:
        rows: alarm-table rows (see the module docstring), e.g. from :func:`load_alarm_table`.
        out_dir: output folder, created if needed.
        title: page title.
        threshold: Dice threshold for triage accuracy and the review flag.
        thumbnails: embed a tumour-slice thumbnail per case.
        classes: classes to summarise, headline first.

    Returns:
        ``{"html": Path, "csv": Path, "json": Path}``.
    """
    rendered = render_report(rows, title=title, threshold=threshold, thumbnails=thumbnails, classes=classes)
    out_dir = Path(out_dir)
    paths = {k: out_dir / name for k, name in REPORT_FILES.items()}
    for k in ("json", "csv", "html"):  # the page last: its presence means the report is complete
        atomic_write_text(paths[k], rendered[k])
    return paths
