"""Paper Table 2 from an alarm table: MAE / STD / Pearson / Spearman / triage of predicted vs. true Dice, plus
AURC / e-AURC of ranking the cases by the predicted Dice (risk = 1 - true Dice; Zenk et al., MedIA 2025).

Rows follow the alarm-table contract (see :mod:`synthcp3d.reports.writer`): ``row["true"][cls]`` is the
true Dice or ``None`` (no ground truth, or the class is absent), ``row["predicted"][method][cls]`` the
predicted Dice of one method. The Table-2 numbers come from :func:`synthcp3d.metrics.image_level`, the
AURCs from :func:`synthcp3d.metrics.aurc` / :func:`synthcp3d.metrics.excess_aurc`, all in percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from synthcp3d.metrics import aurc, excess_aurc, image_level

__all__ = ["CLASSES", "METHODS", "METHOD_LABELS", "RC_METRICS", "format_summary", "methods_present", "summarize"]

METHODS: tuple[str, ...] = ("direct_prediction", "vae_alarm", "synthcp", "ensemble")
METHOD_LABELS: dict[str, str] = {
    "direct_prediction": "Direct prediction",
    "vae_alarm": "VAE alarm",
    "synthcp": "SynthCP",
    "ensemble": "SynthCP + VAE",
    "ensemble_weighted": "SynthCP + VAE, weighted",
    "ensemble_agreement": "Ensemble agreement",
    "msp": "MSP (confidence)",
    "entropy": "Entropy (confidence)",
}
CLASSES: tuple[str, ...] = ("tumour", "pancreas")
METRICS: tuple[str, ...] = ("mae", "std", "pearson", "spearman", "triage_accuracy", "triage_bad_recall")
RC_METRICS: tuple[str, ...] = ("aurc", "eaurc")  # risk-coverage ranking, x100, lower is better


def _num(x) -> float | None:
    """A finite float, or ``None`` for missing / NaN / non-numeric values."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def methods_present(rows: Iterable[dict]) -> list[str]:
    """Methods found in any row's ``predicted``: the known ones in :data:`METHODS` order, then others."""
    seen: list[str] = []
    for row in rows:
        for m in row.get("predicted") or {}:
            if m not in seen:
                seen.append(m)
    return [m for m in METHODS if m in seen] + [m for m in seen if m not in METHODS]


def _predicted(row: dict, method: str, cls: str) -> float | None:
    return _num(((row.get("predicted") or {}).get(method) or {}).get(cls))


def _true(row: dict, cls: str) -> float | None:
    return _num((row.get("true") or {}).get(cls))


def _interval(row: dict, cls: str) -> tuple[float, float] | None:
    iv = (row.get("interval") or {}).get(cls)
    if not isinstance(iv, (list, tuple)) or len(iv) != 2:
        return None
    lo, hi = _num(iv[0]), _num(iv[1])
    return None if lo is None or hi is None else (lo, hi)


def summarize(rows: Sequence[dict], classes: Sequence[str] = CLASSES, threshold: float = 0.5) -> dict:
    """Table 2 per class and method, plus interval coverage, over the cases with a true Dice.

    A case enters a (method, class) cell when both its true Dice and that method's predicted Dice for
    the class are numbers; rows with ``true`` ``None`` count in ``n_cases`` only.

    Args:
        rows: alarm-table rows.
        classes: class names to summarise (``"tumour"``, the paper's headline, first).
        threshold: good/bad triage threshold on Dice.

    Returns:
        ``{"threshold", "classes", "n_cases", "methods": [...], "table": {cls: {method: {"n", "mae",
        "std", "pearson", "spearman", "triage_accuracy", "triage_bad_recall", "aurc", "eaurc"}}},
        "coverage": {cls: {"n", "inside", "observed", "stated"}}}``. Metrics are percent from
        :func:`~synthcp3d.metrics.image_level`; ``aurc`` / ``eaurc`` are x100 AURC and excess AURC of ranking
        the cell's cases by the predicted Dice with risk 1 - true Dice (lower is better; a constant
        prediction scores the mean risk, the random ranking); undefined ones (no case, < 2 cases or constant
        values for correlations) are ``None``. ``observed`` coverage is the fraction of cases with a true Dice and
        an interval whose true Dice lies inside it; ``stated`` the mean of the rows' ``coverage``.
    """
    methods = methods_present(rows)
    table: dict[str, dict[str, dict]] = {}
    coverage: dict[str, dict] = {}
    stated = [c for c in (_num(r.get("coverage")) for r in rows) if c is not None]
    for cls in classes:
        table[cls] = {}
        for m in methods:
            pairs = [(p, t) for p, t in ((_predicted(r, m, cls), _true(r, cls)) for r in rows)
                     if p is not None and t is not None]
            cell: dict = {"n": len(pairs), **{k: None for k in (*METRICS, *RC_METRICS)}}
            if pairs:
                p, t = np.array(pairs, dtype=np.float64).T
                out = image_level(p, t, threshold=threshold)
                cell.update({k: _num(out[k]) for k in METRICS})
                cell.update(aurc=_num(100 * aurc(p, 1.0 - t)), eaurc=_num(100 * excess_aurc(p, 1.0 - t)))
            table[cls][m] = cell
        inside = n = 0
        for r in rows:
            t, iv = _true(r, cls), _interval(r, cls)
            if t is not None and iv is not None:
                n += 1
                inside += iv[0] <= t <= iv[1]
        coverage[cls] = {"n": n, "inside": inside, "observed": inside / n if n else None,
                         "stated": float(np.mean(stated)) if stated else None}
    return {"threshold": float(threshold), "classes": list(classes), "n_cases": len(rows), "methods": methods,
            "table": table, "coverage": coverage}


def _fmt(x: float | None, spec: str = "6.2f") -> str:
    return format(x, spec) if x is not None else format("-", ">" + spec.split(".")[0])


def format_summary(summary: dict) -> str:
    """Plain-text Table 2 (one block per class) and interval coverage, for terminals and logs."""
    lines: list[str] = []
    width = max([len(METHOD_LABELS.get(m, m)) for m in summary["methods"]] + [6])
    thr = summary["threshold"]
    for cls in summary["classes"]:
        cells = summary["table"][cls]
        n = max((c["n"] for c in cells.values()), default=0)
        lines.append(f"{cls} Dice prediction, {n} of {summary['n_cases']} cases with ground truth "
                     f"(percent; MAE/STD/AURC/e-AURC lower is better, P.C./S.C./triage@{thr:g} higher is better)")
        head = "".join(f"  {h:>6}" for h in ("MAE", "STD", "P.C.", "S.C.", "Triage", "AURC", "e-AURC"))
        lines.append(f"  {'Method':<{width}}{head}  {'n':>4}")
        for m, c in cells.items():
            if not c["n"]:  # a method these cases do not have (e.g. the new-image baselines on CV cases)
                continue
            lines.append(f"  {METHOD_LABELS.get(m, m):<{width}}  {_fmt(c['mae'])}  {_fmt(c['std'])}  "
                         f"{_fmt(c['pearson'])}  {_fmt(c['spearman'])}  {_fmt(c['triage_accuracy'])}  "
                         f"{_fmt(c.get('aurc'))}  {_fmt(c.get('eaurc'))}  {c['n']:>4}")
        if not cells:
            lines.append("  (no predicted Dice in the table)")
    cov = summary["coverage"]
    parts = [f"{cls} {_fmt(None if c['observed'] is None else 100 * c['observed'], '.1f')}% "
             f"({c['inside']}/{c['n']})" for cls, c in cov.items()]
    stated = next((c["stated"] for c in cov.values() if c["stated"] is not None), None)
    stated_txt = f"stated {100 * stated:.0f}%" if stated is not None else "no stated coverage"
    lines.append(f"Interval coverage ({stated_txt}): " + ", ".join(parts))
    return "\n".join(lines)
