import itertools

import numpy as np
import pytest

from synthcp3d.metrics import aurc, aurc_table, excess_aurc, optimal_aurc, risk_coverage_curve


def brute_aurc_no_ties(conf, risk):
    """Mean over k of the mean risk of the k most confident cases, by explicit loops."""
    order = sorted(range(len(conf)), key=lambda i: -conf[i])
    total = 0.0
    for k in range(1, len(conf) + 1):
        total += sum(risk[i] for i in order[:k]) / k
    return total / len(conf)


def brute_curve(conf, risk):
    """One point per distinct confidence t: accept every case with confidence >= t."""
    pts = []
    for t in sorted(set(conf), reverse=True):
        acc = [i for i in range(len(conf)) if conf[i] >= t]
        pts.append((len(acc) / len(conf), sum(risk[i] for i in acc) / len(acc)))
    return np.array(pts).T


def test_hand_computed():
    conf = [0.9, 0.8, 0.7, 0.2]
    risk = [0.3, 0.1, 0.9, 0.5]
    # ranked by confidence the risks are 0.3, 0.1, 0.9, 0.5; top-k means: 0.3, 0.4/2 = 0.2, 1.3/3, 1.8/4 = 0.45
    # AURC = (0.3 + 0.2 + 13/30 + 0.45) / 4 = (83/60) / 4 = 83/240
    # optimal order 0.1, 0.3, 0.5, 0.9: top-k means 0.1, 0.2, 0.3, 0.45 -> (1.05) / 4 = 63/240; e-AURC = 20/240
    cov, sel = risk_coverage_curve(conf, risk)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(sel, [0.3, 0.2, 13 / 30, 0.45])
    assert aurc(conf, risk) == pytest.approx(83 / 240)
    assert optimal_aurc(risk) == pytest.approx(63 / 240)
    assert excess_aurc(conf, risk) == pytest.approx(1 / 12)


def test_hand_computed_ties():
    conf = [0.9, 0.5, 0.5, 0.1]
    risk = [0.2, 0.0, 0.6, 1.0]
    # tie group {0.0, 0.6} at confidence 0.5: the curve has points at coverages 1/4, 3/4, 1 only:
    # 0.2, (0.2 + 0.0 + 0.6) / 3 = 0.8/3, 1.8/4 = 0.45
    cov, sel = risk_coverage_curve(conf, risk)
    np.testing.assert_allclose(cov, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(sel, [0.2, 0.8 / 3, 0.45])
    # per case, k = 2 falls inside the group: expected risk over both orders ((0.2 + 0.0)/2 + (0.2 + 0.6)/2) / 2
    # = (0.2 + 1 * 0.3) / 2 = 0.25; AURC = (0.2 + 0.25 + 0.8/3 + 0.45) / 4 = (7/6) / 4 = 7/24
    cov_k, sel_k = risk_coverage_curve(conf, risk, per_case=True)
    np.testing.assert_allclose(cov_k, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(sel_k, [0.2, 0.25, 0.8 / 3, 0.45])
    assert aurc(conf, risk) == pytest.approx(7 / 24)
    # optimal: 0.0, 0.2, 0.6, 1.0 -> 0, 0.1, 0.8/3, 0.45
    assert excess_aurc(conf, risk) == pytest.approx(7 / 24 - (0.1 + 0.8 / 3 + 0.45) / 4)


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    conf, risk = rng.random(n), rng.random(n)
    assert aurc(conf, risk) == pytest.approx(brute_aurc_no_ties(conf.tolist(), risk.tolist()), abs=1e-12)
    cov, sel = risk_coverage_curve(conf, risk)
    cov_k, sel_k = risk_coverage_curve(conf, risk, per_case=True)
    np.testing.assert_allclose(cov, np.arange(1, n + 1) / n)
    np.testing.assert_allclose(sel, sel_k, atol=1e-12)
    np.testing.assert_allclose(np.vstack([cov, sel]), brute_curve(conf.tolist(), risk.tolist()), atol=1e-12)
    assert aurc(conf, risk) == pytest.approx(sel.mean(), abs=1e-12)
    assert aurc(-risk, risk) == pytest.approx(optimal_aurc(risk), abs=1e-12)
    assert excess_aurc(-risk, risk) == pytest.approx(0.0, abs=1e-12)
    assert excess_aurc(conf, risk) >= -1e-12
    # any monotone transform of the confidence ranks the same
    assert aurc(np.exp(3 * conf), risk) == pytest.approx(aurc(conf, risk), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_ties_are_expected_value_over_random_tie_breaking(seed):
    rng = np.random.default_rng(100 + seed)
    n = 7
    conf = rng.integers(0, 3, n).astype(float)  # three levels: many ties
    risk = np.round(rng.random(n), 1)
    orders = [p for p in itertools.permutations(range(n)) if all(conf[a] >= conf[b] for a, b in itertools.pairwise(p))]
    # every order that breaks the ties, as a confidence without ties (minus the case's position in the order)
    expected = np.mean([brute_aurc_no_ties([-float(p.index(i)) for i in range(n)], risk.tolist()) for p in orders])
    assert aurc(conf, risk) == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(np.vstack(risk_coverage_curve(conf, risk)), brute_curve(conf.tolist(), risk.tolist()),
                               atol=1e-12)
    cov, sel = risk_coverage_curve(conf, risk)
    assert cov.size == np.unique(conf).size
    # the per-case curve passes through the tie-group points
    cov_k, sel_k = risk_coverage_curve(conf, risk, per_case=True)
    np.testing.assert_allclose(sel_k[np.round(cov * n).astype(int) - 1], sel, atol=1e-12)
    assert excess_aurc(conf, risk) >= -1e-12
    # input order does not matter, ties included
    perm = rng.permutation(n)
    assert aurc(conf[perm], risk[perm]) == pytest.approx(aurc(conf, risk), abs=1e-12)


def test_constant_confidence_is_the_random_ranking():
    risk = np.array([0.0, 1.0, 0.25, 0.75, 0.5])
    cov, sel = risk_coverage_curve(np.full(5, 0.3), risk)
    np.testing.assert_allclose(cov, [1.0])
    np.testing.assert_allclose(sel, [0.5])
    assert aurc(np.full(5, 0.3), risk) == pytest.approx(0.5)
    assert excess_aurc(np.zeros(5), risk) == pytest.approx(0.5 - optimal_aurc(risk))


def test_ties_in_risk_do_not_spoil_the_optimum():
    risk = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.3])  # missed tumours: many Dice = 0 -> risk 1
    # optimal order 0, 0, 0.3, 1, 1, 1: top-k means 0, 0, 0.1, 1.3/4, 2.3/5, 3.3/6
    assert optimal_aurc(risk) == pytest.approx((0.1 + 1.3 / 4 + 2.3 / 5 + 3.3 / 6) / 6)
    assert aurc(-risk, risk) == pytest.approx(optimal_aurc(risk))
    assert excess_aurc(1.0 - risk, risk) == pytest.approx(0.0, abs=1e-12)


def test_nan_dropped():
    conf = np.array([0.9, np.nan, 0.8, 0.7, 0.2, 0.5])
    risk = np.array([0.3, 0.0, 0.1, 0.9, 0.5, np.nan])
    keep = [0, 2, 3, 4]
    assert aurc(conf, risk) == pytest.approx(83 / 240)
    assert excess_aurc(conf, risk) == pytest.approx(aurc(conf[keep], risk[keep]) - optimal_aurc(risk[keep]))
    for a, b in zip(risk_coverage_curve(conf, risk), risk_coverage_curve(conf[keep], risk[keep]), strict=True):
        np.testing.assert_allclose(a, b)
    assert optimal_aurc([np.nan, 0.5]) == pytest.approx(0.5)


def test_infinite_confidence_ranks_normally():
    conf = [np.inf, 0.0, -np.inf, 0.0]
    risk = [0.0, 0.4, 1.0, 0.2]
    cov, sel = risk_coverage_curve(conf, risk)
    np.testing.assert_allclose(cov, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(sel, [0.0, 0.2, 0.4])


def test_empty_gives_nan_and_empty_curve():
    for conf, risk in (([], []), ([np.nan, 0.5], [0.1, np.nan])):
        cov, sel = risk_coverage_curve(conf, risk)
        assert cov.shape == sel.shape == (0,)
        assert np.isnan(aurc(conf, risk)) and np.isnan(excess_aurc(conf, risk))
    assert np.isnan(optimal_aurc([]))


def test_single_case():
    assert aurc([0.4], [0.25]) == pytest.approx(0.25)
    assert excess_aurc([0.4], [0.25]) == pytest.approx(0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="one length"):
        aurc([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="one length"):
        risk_coverage_curve([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        excess_aurc(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="1-D"):
        aurc(0.5, 0.5)
    with pytest.raises(ValueError, match="1-D"):
        optimal_aurc(np.zeros((2, 2)))


def test_aurc_table_from_rows():
    rows = [
        {"true": {"tumour": 0.7, "pancreas": 0.9}, "predicted": {"a": {"tumour": 0.9, "pancreas": 0.8},
                                                                 "b": {"tumour": 0.1, "pancreas": None}}},
        {"true": {"tumour": 0.9, "pancreas": 0.8}, "predicted": {"a": {"tumour": 0.8, "pancreas": 0.7},
                                                                 "b": {"tumour": 0.2, "pancreas": 0.5}}},
        {"true": {"tumour": 0.1, "pancreas": 0.6}, "predicted": {"a": {"tumour": 0.7, "pancreas": 0.2}}},
        {"true": {"tumour": 0.5, "pancreas": None}, "predicted": {"a": {"tumour": 0.2, "pancreas": 0.9},
                                                                 "b": None}},
        {"true": None, "predicted": {"a": {"tumour": 0.5}}},
    ]
    t = aurc_table(rows)
    assert list(t) == ["a", "b"] and set(t["a"]) == {"pancreas", "tumour"}
    # method a, tumour: the hand-computed example (risk = 1 - true Dice = 0.3, 0.1, 0.9, 0.5)
    assert t["a"]["tumour"]["n"] == 4
    assert t["a"]["tumour"]["aurc"] == pytest.approx(83 / 240)
    assert t["a"]["tumour"]["eaurc"] == pytest.approx(1 / 12)
    assert t["a"]["pancreas"]["n"] == 3
    assert t["b"]["tumour"]["n"] == 2 and t["b"]["pancreas"]["n"] == 1
    # b tumour: confidences 0.1 (risk 0.3), 0.2 (risk 0.1): order 0.1, 0.3 -> (0.1 + 0.2) / 2 = 0.15 = optimal
    assert t["b"]["tumour"]["aurc"] == pytest.approx(0.15) and t["b"]["tumour"]["eaurc"] == pytest.approx(0.0)
    only = aurc_table(rows, methods=["c"], classes=["tumour"])
    assert only["c"]["tumour"]["n"] == 0 and np.isnan(only["c"]["tumour"]["aurc"])
    assert np.isnan(only["c"]["tumour"]["eaurc"])
