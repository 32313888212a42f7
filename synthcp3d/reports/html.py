"""One self-contained HTML page: Table 2 (with AURC / e-AURC), Fig.-6 scatter plots, the tumour risk-coverage
curves and per-case rows with thumbnails.

Images are embedded as ``data:image/png;base64`` URIs and the only styling is an inline ``<style>``, so
the page opens offline and can be mailed or archived as one file. All text from the table (case ids,
splits, method names) is HTML-escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from . import figures
from .figures import CT_WINDOW, Thumbnail
from .table2 import METHOD_LABELS, _interval, _predicted, _true

__all__ = ["CaseView", "render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;font-size:14px}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:right}
th{background:#f4f4f4;font-weight:600}td.l,th.l{text-align:left}caption{text-align:left;font-weight:600;padding:4px 0}
tr.flagged{background:#fff1f0}.flag{background:#c62828;color:#fff;border-radius:3px;padding:1px 6px;font-weight:700;
font-size:.85em}.ok{color:#2e7d32}.miss{color:#c62828;font-weight:600}.meta,.note{color:#555}.mono{font-family:monospace}
td.thumb{padding:2px}.nw{white-space:nowrap}
td.thumb img{display:block;height:120px}.small{font-size:.85em;color:#555}b.best{color:#000}
"""

METHOD_SHORT = {"direct_prediction": "Direct", "vae_alarm": "VAE", "synthcp": "SynthCP", "ensemble": "Ens."}
_COLUMNS = (("mae", "MAE ↓"), ("std", "STD ↓"), ("pearson", "P.C. ↑"), ("spearman", "S.C. ↑"),
            ("triage_accuracy", "Triage acc. ↑"), ("aurc", "AURC ↓"), ("eaurc", "e-AURC ↓"))
_LOWER_BETTER = frozenset({"mae", "std", "aurc", "eaurc"})


@dataclass(frozen=True)
class CaseView:
    """A row as displayed: review flag, headline method and its thumbnail (or ``None``)."""

    row: dict
    flagged: bool
    primary: str | None
    thumbnail: Thumbnail | None


def _img(png: bytes, alt: str, **attrs: str) -> str:
    extra = "".join(f' {k}="{escape(v)}"' for k, v in attrs.items())
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(alt)}"{extra}>'


def _d(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _summary_tables(summary: dict) -> str:
    out = []
    for cls in summary["classes"]:
        cells = summary["table"][cls]
        n = max((c["n"] for c in cells.values()), default=0)
        head = "".join(f"<th>{escape(label)}</th>" for _, label in _COLUMNS)
        best = {}
        for key, _ in _COLUMNS:
            vals = [c.get(key) for c in cells.values() if c.get(key) is not None]
            if len(vals) > 1:
                best[key] = min(vals) if key in _LOWER_BETTER else max(vals)
        body = []
        for m, c in cells.items():
            tds = "".join(
                "<td>—</td>" if c.get(k) is None else
                (f'<td><b class="best">{c[k]:.2f}</b></td>' if best.get(k) == c[k] else f"<td>{c[k]:.2f}</td>")
                for k, _ in _COLUMNS)
            body.append(f'<tr><td class="l">{escape(METHOD_LABELS.get(m, m))}</td>{tds}<td>{c["n"]}</td></tr>')
        if not body:
            body.append(f'<tr><td class="l" colspan="{len(_COLUMNS) + 2}">no predicted Dice in the table</td></tr>')
        out.append(f'<table class="summary"><caption>{escape(cls.capitalize())} Dice prediction '
                   f'({n} of {summary["n_cases"]} cases with ground truth)</caption>'
                   f'<tr><th class="l">Method</th>{head}<th>n</th></tr>{"".join(body)}</table>')
    return "\n".join(out)


def _coverage(summary: dict) -> str:
    parts = []
    for cls, c in summary["coverage"].items():
        obs = "—" if c["observed"] is None else f"{100 * c['observed']:.1f}%"
        parts.append(f"{escape(cls)} {obs} ({c['inside']}/{c['n']})")
    stated = next((c["stated"] for c in summary["coverage"].values() if c["stated"] is not None), None)
    stated_txt = f"stated {100 * stated:.0f}%" if stated is not None else "no stated coverage"
    return f"<p>Interval coverage of the true Dice ({stated_txt}): {', '.join(parts)}.</p>"


def _dice(row: dict, method: str | None, cls: str) -> str:
    p = _predicted(row, method, cls) if method else None
    if p is None:
        return "—"
    iv = _interval(row, cls)
    return f"{p:.2f}" + (f' <span class="small">[{iv[0]:.2f}, {iv[1]:.2f}]</span>' if iv else "")


def _true_html(row: dict, cls: str) -> str:
    t, iv = _true(row, cls), _interval(row, cls)
    if t is None:
        return "—"
    if iv is not None and not iv[0] <= t <= iv[1]:
        return f'<span class="miss" title="outside the interval">{t:.2f} ✗</span>'
    return f"{t:.2f}"


def _case_rows(cases: Sequence[CaseView], methods: Sequence[str], thumbnails: bool) -> str:
    head = ('<tr><th>#</th><th class="l">Case</th><th class="l">Review</th><th class="l"></th>'
            "<th>Predicted Dice<br>[interval]</th><th>True<br>Dice</th>"
            '<th class="l">Tumour Dice<br>by method</th>' + ('<th class="l">Tumour slice</th>' if thumbnails else "")
            + "</tr>")
    body = []
    for i, c in enumerate(cases, 1):
        r = c.row
        flag = '<span class="flag">REVIEW</span>' if c.flagged else '<span class="ok">ok</span>'
        by_method = "<br>".join(f"{escape(METHOD_SHORT.get(m, m))} {_d(_predicted(r, m, 'tumour'))}"
                                for m in methods if (r.get("predicted") or {}).get(m) is not None)
        cells = [f"<td>{i}</td>",
                 f'<td class="l"><span class="mono">{escape(str(r.get("case_id")))}</span><br>'
                 f'<span class="small">{escape(str(r.get("split")))}</span></td>',
                 f'<td class="l">{flag}</td>', '<td class="l">tumour<br><span class="small">pancreas</span></td>',
                 f'<td class="nw"><b>{_dice(r, c.primary, "tumour")}</b><br>'
                 f'<span class="small">{_dice(r, c.primary, "pancreas")}</span></td>',
                 f'<td class="nw">{_true_html(r, "tumour")}<br>'
                 f'<span class="small">{_true_html(r, "pancreas")}</span></td>',
                 f'<td class="l small nw">{by_method or "—"}</td>']
        if thumbnails:
            t = c.thumbnail
            cells.append('<td class="l thumb">' + (
                _img(t.png, f"case {r.get('case_id')}: CT, prediction, synthesized CT, error map",
                     title=f"axial slice {t.slice_index} (most {t.basis} voxels)" if t.basis != "middle"
                     else f"axial slice {t.slice_index} (middle; no tumour or pancreas)")
                if t else "—") + "</td>")
        body.append(f'<tr class="{"flagged" if c.flagged else "case"}">{"".join(cells)}</tr>')
    return f'<table class="cases">{head}{"".join(body)}</table>'


def render_html(title: str, summary: dict, cases: Sequence[CaseView], scatter_png: bytes | None,
                thumbnails: bool = True, risk_coverage: bool = True) -> str:
    """The report page as a string.

    Args:
        title: page title (escaped).
        summary: :func:`~synthcp3d.reports.table2.summarize` output.
        cases: per-case views in display order (all rows of the table: the risk-coverage plot uses them).
        scatter_png: Fig.-6 PNG or ``None`` (no case with ground truth).
        thumbnails: include the thumbnail column.
        risk_coverage: include the tumour risk-coverage plot
            (:func:`~synthcp3d.reports.figures.render_risk_coverage`, rendered here from ``cases``).
    """
    n_flag = sum(c.flagged for c in cases)
    splits: dict[str, int] = {}
    for c in cases:
        splits[str(c.row.get("split"))] = splits.get(str(c.row.get("split")), 0) + 1
    order = list(METHOD_LABELS)
    primaries = sorted({c.primary for c in cases if c.primary},
                       key=lambda p: (order.index(p) if p in order else len(order), p))
    primary_txt = ", ".join(escape(METHOD_LABELS.get(p, p)) for p in primaries) or "—"
    thr = summary["threshold"]
    meta = (f"{len(cases)} cases (" + ", ".join(f"{escape(s)} {n}" for s, n in splits.items()) + ") · "
            f"review threshold {thr:g} · per-case prediction: {primary_txt} · "
            f'<span class="flag">{n_flag}</span> flagged for review')
    scatter = (_img(scatter_png, "predicted vs true tumour Dice per method") if scatter_png
               else '<p class="note">No case has a true tumour Dice: nothing to plot.</p>')
    rc_section = ""
    if risk_coverage:
        rc_png = figures.render_risk_coverage([c.row for c in cases], summary, "tumour")
        rc_plot = (_img(rc_png, "risk-coverage curves of the tumour Dice per method") if rc_png
                   else '<p class="note">No case has a true tumour Dice: nothing to plot.</p>')
        rc_section = f"""<h2>Risk-coverage: ranking cases by predicted tumour Dice</h2>
<p class="note">Cases are accepted in order of decreasing predicted Dice; the selective risk at a coverage is the
mean of 1 - true Dice over the accepted cases. AURC (x100, lower is better) is the mean selective risk over all
coverages; e-AURC subtracts the AURC of the optimal ranking (by true Dice), so 0 is a perfect ranking. A random
ranking, or a constant prediction, scores the mean risk (dotted line). Failure-detection benchmark convention of
Zenk et al., MedIA 2025.</p>
{rc_plot}
"""
    methods = summary["methods"]
    legend = (f"Thumbnails: axial slice with the most predicted-or-true tumour voxels, radiological view "
              "(anterior up, patient right on the left, marked R), cropped around the pancreas; "
              f"CT window [{CT_WINDOW[0]:g}, {CT_WINDOW[1]:g}] HU. "
              "Panels: CT · CT with prediction (yellow pancreas outline, red tumour, cyan dashed true tumour) · "
              "synthesized CT · error map (black 0 to yellow 1)." if thumbnails else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{escape(title)}</title><style>{_CSS}</style></head><body>
<h1>{escape(title)}</h1>
<p class="meta">{meta}</p>
<p class="note">A case is flagged for review when the alarm table marks it or its predicted tumour Dice is below
{thr:g}. Dice values are fractions; the summary is in percent, as in the SynthCP paper (Table 2).</p>
<h2>Failure detection (paper Table 2)</h2>
{_summary_tables(summary)}
{_coverage(summary)}
<h2>Predicted vs. true tumour Dice (paper Fig. 6)</h2>
{scatter}
{rc_section}<h2>Cases (flagged first, then by predicted tumour Dice)</h2>
<p class="note">{legend}</p>
{_case_rows(cases, methods, thumbnails)}
</body></html>
"""
