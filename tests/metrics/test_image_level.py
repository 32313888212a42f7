import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from synthcp3d.metrics import image_level


def test_matches_scipy_per_class_with_invalid_entries():
    rng = np.random.default_rng(0)
    true = rng.random((40, 5))
    pred = np.clip(true + rng.normal(0, 0.15, true.shape), 0, 1)
    pred[:10, 1] = np.round(pred[:10, 1], 1)  # ties for Spearman
    true[rng.random(true.shape) < 0.2] = np.nan  # class absent in some cases
    out = image_level(torch.from_numpy(pred), true)
    pcs, scs, maes, stds = [], [], [], []
    for c in range(5):
        v = ~np.isnan(true[:, c])
        pcs.append(pearsonr(pred[v, c], true[v, c])[0])
        scs.append(spearmanr(pred[v, c], true[v, c])[0])
        err = np.abs(pred[v, c] - true[v, c])
        maes.append(err.mean())
        stds.append(err.std())
    assert out["pearson"] == pytest.approx(100 * np.mean(pcs), abs=1e-10)
    assert out["spearman"] == pytest.approx(100 * np.mean(scs), abs=1e-10)
    assert out["mae"] == pytest.approx(100 * np.mean(maes), abs=1e-10)
    assert out["std"] == pytest.approx(100 * np.mean(stds), abs=1e-10)
    np.testing.assert_allclose(out["per_class"]["pearson"], 100 * np.array(pcs), atol=1e-10)
    np.testing.assert_array_equal(out["per_class"]["n_valid"], (~np.isnan(true)).sum(0))


def test_hand_computed_and_triage():
    pred = np.array([[0.9, 0.2], [0.4, 0.3], [0.6, 0.8], [0.1, 0.5]])
    true = np.array([[0.8, np.nan], [0.6, 0.1], [0.7, 0.9], [0.3, np.nan]])
    valid = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], dtype=bool)  # case 3 class 0 excluded
    out = image_level(pred, true, valid)
    # class 0 over cases 0-2: |err| = 0.1, 0.2, 0.1 ; class 1 over cases 1-2: |err| = 0.2, 0.1
    assert out["per_class"]["mae"] == pytest.approx([100 * 0.4 / 3, 15.0])
    assert out["mae"] == pytest.approx((100 * 0.4 / 3 + 15.0) / 2)
    assert out["per_class"]["std"][1] == pytest.approx(5.0)
    # good = >= 0.5. class 0: pred G,B,G vs true G,G,G -> 2/3 ; class 1: B,G vs B,G -> 1
    assert out["per_class"]["triage_accuracy"] == pytest.approx([200 / 3, 100.0])
    # truly bad entries: class 0 none (NaN), class 1 case 1 called bad
    assert np.isnan(out["per_class"]["triage_bad_recall"][0])
    assert out["triage_bad_recall"] == pytest.approx(100.0)
    # two valid cases give a correlation of +-1
    assert out["per_class"]["pearson"][1] == pytest.approx(100.0)


def test_degenerate_classes_are_nan_not_errors():
    true = np.array([[0.5, np.nan], [0.5, np.nan], [0.5, 0.2]])
    out = image_level(np.array([[0.1, 0.3], [0.9, 0.2], [0.4, 0.2]]), true)
    assert np.isnan(out["per_class"]["pearson"]).all()  # constant truth / single case
    assert np.isnan(out["pearson"])
    assert out["per_class"]["mae"][1] == pytest.approx(0.0)


def test_errors():
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(3, 3\)"):
        image_level(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="1 NaN"):
        image_level(np.array([[np.nan], [0.5]]), np.array([[0.2], [0.4]]))
