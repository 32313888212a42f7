"""Risk-coverage curve, AURC and e-AURC: ranking cases by a confidence score (Zenk et al., MedIA 2025).

A failure detector gives each case a confidence (here: the predicted Dice); the cases it is most confident
about are accepted first. At coverage ``k / N`` the *selective risk* is the mean risk (here ``1 - true Dice``)
of the ``k`` most confident cases. The AURC summarises that curve (lower is better); e-AURC subtracts the
AURC of the optimal ranking (cases by increasing risk), so 0 is a perfect ranking whatever the risks.

Ties in confidence. A threshold on the confidence cannot split cases with the same confidence, so the
curve :func:`risk_coverage_curve` returns has one point per tie group, at the group's end (coverage
``K_j / N`` = the fraction of cases with confidence >= the group's value), as the current fd-shifts
``selective_risk_stats`` (IML-DKFZ/fd-shifts, ``analysis/rc_stats_utils.py``) does. Inside a tie group the
accepted error sum grows linearly, i.e. the cases of the group are taken in random order: at coverage
``k / N`` inside group ``j`` the selective risk is ``(S_{j-1} + (k - K_{j-1}) * mean_risk_j) / k``, the
expected selective risk over random tie-breaking (the interpolation fd-shifts calls "non-linear"). This
is what ``per_case=True`` returns and what :func:`aurc` averages. Consequences: without ties the AURC is
the plain mean over ``k`` of the top-``k`` mean risk; a constant confidence (every case tied) gives
``AURC = mean risk``, the random ranking; cases tied in confidence *and* risk cost nothing, so
``aurc(-risk, risk)`` is the optimal AURC even when risks tie (tumour Dice 0 is common); and e-AURC >= 0.

AURC convention: the mean of the selective risks over the ``N`` coverages ``1/N, 2/N, ..., 1`` (a
right-endpoint Riemann sum over coverage, the convention of Geifman et al. 2019 and of fd-shifts'
original ``RC_curve``), not the trapezoidal area of the current fd-shifts ``aurc`` (which, without ties, is
larger by ``(r_1 - r_N) / (2 N)``), and as a fraction (fd-shifts displays x1000, the study tables x100).

Inputs are 1-D arrays of one length; a case whose confidence or risk is NaN is dropped. ``+-inf``
confidences rank normally. With no case left the curve is empty and the AURCs are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["aurc", "aurc_table", "excess_aurc", "optimal_aurc", "risk_coverage_curve"]

CLASSES: tuple[str, ...] = ("pancreas", "tumour")


def _prepare(confidence, risk) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, risk) as float64 (M,), NaN pairs dropped, sorted by decreasing confidence (stable)."""
    c = np.asarray(confidence, dtype=np.float64)
    r = np.asarray(risk, dtype=np.float64)
    if c.ndim != 1 or r.ndim != 1:
        raise ValueError(f"confidence and risk must be 1-D (N,), got shapes {c.shape} and {r.shape}")
    if c.shape != r.shape:
        raise ValueError(f"confidence and risk must have one length, got {c.shape} and {r.shape}")
    keep = ~(np.isnan(c) | np.isnan(r))
    c, r = c[keep], r[keep]
    order = np.argsort(-c, kind="stable")
    return c[order], r[order]


def _group_ends(c_sorted: np.ndarray) -> np.ndarray:
    """0-based index of the last case of every tie group of a sorted (M,) confidence, M >= 1."""
    return np.flatnonzero(np.append(c_sorted[1:] != c_sorted[:-1], True))


def _per_case(c_sorted: np.ndarray, r_sorted: np.ndarray) -> np.ndarray:
    """(M,) expected selective risk at coverage k / M, k = 1..M, ties broken at random."""
    m = r_sorted.size
    ends = _group_ends(c_sorted)
    sizes = np.diff(np.append(-1, ends))  # cases per group
    cum = np.cumsum(r_sorted)
    group_sum = np.diff(np.append(0.0, cum[ends]))
    prev_k = np.append(0, ends[:-1] + 1)  # cases accepted before the group
    prev_sum = np.append(0.0, cum[ends[:-1]])
    g = np.repeat(np.arange(ends.size), sizes)  # group of each sorted case
    k = np.arange(1, m + 1)
    return (prev_sum[g] + (k - prev_k[g]) * (group_sum[g] / sizes[g])) / k


def risk_coverage_curve(confidence, risk, *, per_case: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Coverages and selective risks of ranking the cases by decreasing ``confidence``.

    Args:
        confidence: (N,) confidence score per case, higher = more trusted (e.g. the predicted Dice).
        risk: (N,) risk per case (e.g. ``1 - true Dice``); NaN in either array drops the case.
        per_case: False: one point per tie group of the confidence, at its end (``K_j / M``, the mean risk
            of the cases with confidence >= the group's). True: one point per coverage ``k / M``, inside a
            tie group the expected selective risk when the group's cases are taken in random order (the
            values :func:`aurc` averages). Without ties both are the same M points.

    Returns:
        ``(coverage, selective_risk)``, float64 (P,) each, coverage increasing in ``(0, 1]``; P = number of
        distinct confidences (``per_case=False``) or M = number of cases kept; both empty when M = 0.
    """
    c, r = _prepare(confidence, risk)
    m = r.size
    if m == 0:
        return np.zeros(0), np.zeros(0)
    if per_case:
        return np.arange(1, m + 1) / m, _per_case(c, r)
    ends = _group_ends(c)
    k = ends + 1
    return k / m, np.cumsum(r)[ends] / k


def aurc(confidence, risk) -> float:
    """Area under the risk-coverage curve of ranking by ``confidence``: the mean over the coverages ``k / M``,
    k = 1..M, of the selective risk (ties in confidence: expected over random tie-breaking).

    Args:
        confidence: (N,) confidence per case, higher = more trusted.
        risk: (N,) risk per case; NaN in either array drops the case.

    Returns:
        AURC in the units of ``risk`` (a fraction for ``1 - Dice``); NaN when no case is left.
    """
    c, r = _prepare(confidence, risk)
    return float(_per_case(c, r).mean()) if r.size else float("nan")


def optimal_aurc(risk) -> float:
    """AURC of the best ranking of the cases (by increasing risk): the mean over k of the mean of the k
    smallest risks. ``risk`` (N,); NaN entries dropped; NaN when none is left."""
    r = np.asarray(risk, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"risk must be 1-D (N,), got shape {r.shape}")
    r = np.sort(r[~np.isnan(r)])
    return float(np.mean(np.cumsum(r) / np.arange(1, r.size + 1))) if r.size else float("nan")


def excess_aurc(confidence, risk) -> float:
    """e-AURC = ``aurc(confidence, risk) - optimal_aurc(risk)`` over the cases where both are not NaN (>= 0,
    0 for a ranking by increasing risk). Shapes (N,); NaN when no case is left."""
    c, r = _prepare(confidence, risk)
    return aurc(c, r) - optimal_aurc(r) if r.size else float("nan")


def _number(x) -> float | None:
    """A finite float, or None for missing / NaN / non-numeric (bool included) values."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def aurc_table(rows: Iterable[Mapping], methods: Sequence[str] | None = None,
               classes: Sequence[str] = CLASSES) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
    """AURC and e-AURC per method and class from alarm-table rows (confidence = predicted Dice, risk =
    1 - true Dice).

    Args:
        rows: alarm-table rows, ``row["true"][cls]`` and ``row["predicted"][method][cls]`` a Dice or None.
        methods: methods to score; default: every method in any row, in order of appearance.
        classes: class names.

    Returns:
        ``{method: {cls: {"aurc", "eaurc", "n"}}}``: fractions (not x100) over the ``n`` cases where both the
        true and that method's predicted Dice are numbers; NaN when ``n`` is 0.
    """
    rows = list(rows)
    if methods is None:
        methods = list(dict.fromkeys(m for r in rows for m in (r.get("predicted") or {})))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m in methods:
        out[m] = {}
        for cls in classes:
            pairs = [(p, t) for p, t in ((_number(((r.get("predicted") or {}).get(m) or {}).get(cls)),
                                          _number((r.get("true") or {}).get(cls))) for r in rows)
                     if p is not None and t is not None]  # fmt: skip
            p, t = (np.array(pairs, dtype=np.float64).T if pairs else (np.zeros(0), np.zeros(0)))
            out[m][cls] = {"aurc": aurc(p, 1.0 - t), "eaurc": excess_aurc(p, 1.0 - t), "n": len(pairs)}
    return out
