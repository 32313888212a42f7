import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from synthcp3d.metrics import aurc, optimal_aurc
from synthcp3d.reports.table2 import METHOD_LABELS, format_summary, summarize

from .conftest import METHODS


def _independent(rows, method, cls, threshold=0.5):
    pairs = [(r["predicted"][method][cls], r["true"][cls]) for r in rows
             if r["true"][cls] is not None and method in r["predicted"]]
    p, t = np.array(pairs).T
    err = np.abs(p - t)
    return {"n": len(pairs), "mae": 100 * err.mean(), "std": 100 * err.std(),
            "pearson": 100 * pearsonr(p, t)[0], "spearman": 100 * spearmanr(p, t)[0],
            "triage_accuracy": 100 * np.mean((p >= threshold) == (t >= threshold))}


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_summary_matches_independent_computation(rows, threshold):
    s = summarize(rows, threshold=threshold)
    assert s["methods"] == list(METHODS)
    assert s["classes"] == ["tumour", "pancreas"] and s["n_cases"] == len(rows)
    for cls in ("tumour", "pancreas"):
        for m in METHODS:
            ref, got = _independent(rows, m, cls, threshold), s["table"][cls][m]
            assert got["n"] == ref["n"]
            for k in ("mae", "std", "pearson", "spearman", "triage_accuracy"):
                assert got[k] == pytest.approx(ref[k], abs=1e-9), (cls, m, k)
            p, t = np.array([(r["predicted"][m][cls], r["true"][cls]) for r in rows if r["true"][cls] is not None]).T
            assert got["aurc"] == pytest.approx(100 * aurc(p, 1 - t), abs=1e-9)
            assert got["eaurc"] == pytest.approx(100 * (aurc(p, 1 - t) - optimal_aurc(1 - t)), abs=1e-9)
            assert got["eaurc"] >= 0
    assert s["table"]["tumour"]["synthcp"]["n"] == len(rows) - 2  # no-tumour case and the 'new' case
    assert s["table"]["pancreas"]["synthcp"]["n"] == len(rows) - 1


def test_coverage(rows):
    s = summarize(rows)
    for cls in ("tumour", "pancreas"):
        inside = [lo <= r["true"][cls] <= hi for r in rows if r["true"][cls] is not None
                  for lo, hi in [r["interval"][cls]]]
        c = s["coverage"][cls]
        assert (c["n"], c["inside"]) == (len(inside), sum(inside))
        assert c["observed"] == pytest.approx(np.mean(inside)) and c["stated"] == 0.9


def test_missing_methods_and_no_truth(rows):
    for i, r in enumerate(rows):
        r["predicted"] = {"synthcp": r["predicted"]["synthcp"]} if i % 2 else {
            "vae_alarm": r["predicted"]["vae_alarm"], "synthcp": r["predicted"]["synthcp"]}
    s = summarize(rows)
    assert s["methods"] == ["vae_alarm", "synthcp"]
    assert s["table"]["tumour"]["synthcp"]["n"] == len(rows) - 2
    assert s["table"]["tumour"]["vae_alarm"]["n"] == sum(
        1 for i, r in enumerate(rows) if i % 2 == 0 and r["true"]["tumour"] is not None)
    text = format_summary(s)
    assert "VAE alarm" in text and "SynthCP" in text and "Direct prediction" not in text

    empty = summarize([{**r, "true": {"tumour": None, "pancreas": None}} for r in rows])
    cell = empty["table"]["tumour"]["synthcp"]
    assert cell["n"] == 0 and cell["mae"] is None and empty["coverage"]["tumour"]["observed"] is None
    assert cell["aurc"] is None and cell["eaurc"] is None
    assert "-" in format_summary(empty)
    assert summarize([])["methods"] == [] and "no predicted Dice" in format_summary(summarize([]))


def test_format_summary_shows_numbers(rows):
    s = summarize(rows)
    text = format_summary(s)
    for m in METHODS:
        assert METHOD_LABELS[m] in text
    assert f"{s['table']['tumour']['ensemble']['mae']:6.2f}" in text
    assert text.index("tumour Dice") < text.index("pancreas Dice") and "Interval coverage (stated 90%)" in text


def test_aurc_by_hand_and_constant_prediction():
    true = [0.7, 0.9, 0.1, 0.5]  # risks 0.3, 0.1, 0.9, 0.5
    rows = [{"true": {"tumour": t, "pancreas": None},
             "predicted": {"synthcp": {"tumour": p}, "vae_alarm": {"tumour": 0.4}}}
            for t, p in zip(true, [0.9, 0.8, 0.7, 0.2], strict=True)]
    cells = summarize(rows, classes=["tumour"])["table"]["tumour"]
    # ranked risks 0.3, 0.1, 0.9, 0.5: top-k means 0.3, 0.2, 13/30, 0.45 -> AURC (83/60) / 4 = 83/240;
    # optimal 0.1, 0.3, 0.5, 0.9 -> 0.1, 0.2, 0.3, 0.45 -> 63/240
    assert cells["synthcp"]["aurc"] == pytest.approx(100 * 83 / 240)
    assert cells["synthcp"]["eaurc"] == pytest.approx(100 * 20 / 240)
    # a constant prediction ties every case: the random ranking, AURC = mean risk = 0.45
    assert cells["vae_alarm"]["aurc"] == pytest.approx(45.0)
    assert cells["vae_alarm"]["eaurc"] == pytest.approx(45.0 - 100 * 63 / 240)
    text = format_summary(summarize(rows, classes=["tumour"]))
    assert "AURC  e-AURC" in text and f"{100 * 83 / 240:6.2f}  {100 * 20 / 240:6.2f}" in text
