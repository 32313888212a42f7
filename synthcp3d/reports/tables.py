"""Results tables (paper Tables 1, 3, 4 and the like) as ``<stem>.csv``, ``<stem>.json`` and ``<stem>.html``.

A :class:`Table` is a list of row dicts and the :class:`Column` s to show. Cells that are missing, ``None``,
NaN or non-numeric where a number is expected print as ``N/A`` (a method without that output). Columns
with a direction (``better="lower"`` / ``"higher"``) get their best value in bold in the HTML page.

Files (all rendered in memory first, then each written atomically through
:func:`synthcp3d.data.io.atomic_write_text`, the HTML page last):

* ``<stem>.csv``: one line per row, the columns' keys as header; with more than one table a leading
  ``table`` column holds the table's name. Empty cell = N/A. Floats are written in full precision.
* ``<stem>.json``: ``{"title", "notes", "figures": [captions], "tables": [{"name", "caption",
  "columns": [{"key", "label", "better", "fmt"}], "rows": [{key: value}]}]}`` (NaN/Inf -> null).
* ``<stem>.html``: one self-contained page (inline CSS, figures as ``data:image/png;base64``).
* ``<stem>.md``: the tables as Markdown (for notes and terminals).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from synthcp3d.data.io import atomic_write_text

from .html import _CSS, _img

__all__ = ["Column", "Table", "json_safe", "render_tables", "write_table", "write_tables"]

NA = "N/A"


@dataclass(frozen=True)
class Column:
    """One column: row key, header label, which direction is better (or ``None``) and a format spec.

    ``fmt`` is a :func:`format` spec for numbers (e.g. ``".2f"``); ``""`` shows the value as text.
    """

    key: str
    label: str | None = None
    better: str | None = None
    fmt: str = ".2f"

    def __post_init__(self):
        if self.better not in (None, "lower", "higher"):
            raise ValueError(f"Column {self.key!r}: better must be None, 'lower' or 'higher', got {self.better!r}")


@dataclass
class Table:
    """A named table: rows (dicts keyed by column key) and the columns to show, in order."""

    name: str
    columns: Sequence[Column | str]
    rows: Sequence[Mapping] = field(default_factory=list)
    caption: str = ""

    def cols(self) -> list[Column]:
        """Columns with plain strings promoted to text columns (``fmt=""``)."""
        return [c if isinstance(c, Column) else Column(c, fmt="") for c in self.columns]


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def json_safe(x):
    """JSON-safe copy: NaN/Inf -> None, NumPy scalars -> Python, tuples -> lists, paths -> str."""
    if isinstance(x, (np.integer, np.floating)):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _text(value, col: Column) -> str:
    if col.fmt:
        v = _number(value)
        return NA if v is None else format(v, col.fmt)
    return NA if value is None or (isinstance(value, float) and not math.isfinite(value)) else str(value)


def _best(rows: Sequence[Mapping], col: Column) -> float | None:
    if col.better is None or not col.fmt:
        return None
    vals = [v for v in (_number(r.get(col.key)) for r in rows) if v is not None]
    if len(vals) < 2:
        return None
    return min(vals) if col.better == "lower" else max(vals)


def _html_table(t: Table) -> str:
    cols = t.cols()
    arrow = {"lower": " ↓", "higher": " ↑", None: ""}
    head = "".join(f'<th class="{"" if c.fmt else "l"}">{escape(c.label or c.key)}{arrow[c.better]}</th>'
                   for c in cols)
    best = {c.key: _best(t.rows, c) for c in cols}
    body = []
    for r in t.rows:
        tds = []
        for c in cols:
            txt = escape(_text(r.get(c.key), c))
            b = best[c.key]
            if b is not None and _number(r.get(c.key)) == b:
                txt = f'<b class="best">{txt}</b>'
            tds.append(f'<td class="{"" if c.fmt else "l"}">{txt}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    if not body:
        body.append(f'<tr><td class="l" colspan="{len(cols)}">no rows</td></tr>')
    cap = f"<caption>{escape(t.caption or t.name)}</caption>"
    return f'<table class="results">{cap}<tr>{head}</tr>{"".join(body)}</table>'


def _csv(tables: Sequence[Table]) -> str:
    multi = len(tables) > 1
    keys: list[str] = []
    for t in tables:
        keys += [c.key for c in t.cols() if c.key not in keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow((["table"] if multi else []) + keys)
    for t in tables:
        for r in t.rows:
            cells = []
            for k in keys:
                v = r.get(k)
                n = _number(v)
                cells.append(repr(n) if n is not None else ("" if v is None or isinstance(v, float) else str(v)))
            w.writerow(([t.name] if multi else []) + cells)
    return buf.getvalue()


def _markdown(tables: Sequence[Table], title: str, notes: Sequence[str]) -> str:
    lines = [f"# {title}", ""] + [f"{n}\n" for n in notes]
    for t in tables:
        cols = t.cols()
        lines += [f"**{t.caption or t.name}**", "",
                  "| " + " | ".join((c.label or c.key) + {"lower": " ↓", "higher": " ↑", None: ""}[c.better]
                                    for c in cols) + " |",
                  "|" + "|".join("---" if not c.fmt else "---:" for c in cols) + "|"]  # fmt: skip
        for r in t.rows:
            lines.append("| " + " | ".join(_text(r.get(c.key), c).replace("|", "\\|") for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def render_tables(tables: Sequence[Table], *, title: str, notes: str | Sequence[str] = "",
                  figures: Mapping[str, bytes] | None = None) -> dict[str, str]:
    """Render tables to ``{"csv", "json", "html", "md"}`` strings (nothing written; ``md``: Markdown tables).

    Args:
        tables: the tables, shown in order.
        title: page title (escaped).
        notes: paragraph(s) of plain text shown under the title (escaped).
        figures: ``{caption: PNG bytes}`` embedded after the tables.
    """
    figures = dict(figures or {})
    notes = [notes] if isinstance(notes, str) else list(notes)
    notes = [n for n in notes if n]
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ValueError(f"table names must be unique, got {names}")
    doc = {"title": title, "notes": notes, "figures": list(figures),
           "tables": [{"name": t.name, "caption": t.caption,
                       "columns": [asdict(c) for c in t.cols()],
                       "rows": [dict(r) for r in t.rows]} for t in tables]}
    figs = "\n".join(f"<figure>{_img(png, cap)}<figcaption>{escape(cap)}</figcaption></figure>"
                     for cap, png in figures.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{escape(title)}</title><style>{_CSS}figure{{margin:1em 0}}figure img{{max-width:100%}}</style></head><body>
<h1>{escape(title)}</h1>
{"".join(f'<p class="note">{escape(n)}</p>' for n in notes)}
{"".join(_html_table(t) for t in tables)}
{figs}
</body></html>
"""
    return {"csv": _csv(tables), "json": json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n", "html": page,
            "md": _markdown(tables, title, notes)}


def write_tables(tables: Sequence[Table], out_dir: str | Path, stem: str = "table", *, title: str,
                 notes: str | Sequence[str] = "", figures: Mapping[str, bytes] | None = None) -> dict[str, Path]:
    """Render then atomically write ``<stem>.csv``, ``<stem>.json``, ``<stem>.md``, ``<stem>.html`` into ``out_dir``.

    Everything is rendered before the first byte is written, so a rendering error leaves ``out_dir`` as it was.
    See :func:`render_tables` for the arguments.

    Returns:
        ``{"csv": Path, "json": Path, "md": Path, "html": Path}``.
    """
    rendered = render_tables(tables, title=title, notes=notes, figures=figures)
    paths = {k: Path(out_dir) / f"{stem}.{k}" for k in ("csv", "json", "md", "html")}
    for k in ("json", "csv", "md", "html"):  # the page last: its presence means the set is complete
        atomic_write_text(paths[k], rendered[k])
    return paths


def write_table(rows: Sequence[Mapping], columns: Sequence[Column | str], out_dir: str | Path, stem: str = "table",
                *, title: str, caption: str = "", notes: str | Sequence[str] = "",
                figures: Mapping[str, bytes] | None = None) -> dict[str, Path]:
    """One-table shortcut for :func:`write_tables` (CSV without the ``table`` column)."""
    return write_tables([Table(stem, columns, rows, caption or title)], out_dir, stem, title=title, notes=notes,
                        figures=figures)
