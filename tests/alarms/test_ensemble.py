import math

import numpy as np
import pytest

from synthcp3d.alarms.ensemble import conformal_interval, conformal_quantile, mean_ensemble, review_flags
from synthcp3d.alarms.vae import fit_dice_regressor, predict_dice_regressor


def test_conformal_quantile_by_hand():
    r = np.array([0.3, 0.05, 0.2, 0.1, 0.4, 0.15, 0.25, 0.35, 0.45, np.nan])
    # n = 9 finite residuals, alpha = 0.2: k = ceil(10 * 0.8) = 8 -> 8th smallest = 0.4
    assert conformal_quantile(r, 0.2) == 0.4
    # alpha = 0.1: k = ceil(10 * 0.9) = 9 -> the largest
    assert conformal_quantile(r, 0.1) == 0.45
    assert conformal_quantile(r[:5], 0.1) == math.inf  # k = 6 > 5
    assert conformal_quantile(-r[:9], 0.2) == 0.4  # absolute values


def test_conformal_empirical_coverage():
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(200):
        calib = np.abs(rng.standard_t(3, 50))
        q = conformal_quantile(calib, 0.1)
        covered.append((np.abs(rng.standard_t(3, 500)) <= q).mean())
    assert 0.9 <= np.mean(covered) <= 0.93  # E[coverage] = ceil(51 * 0.9) / 51 = 0.902


def test_interval_clipped_and_review():
    iv = conformal_interval(np.array([0.05, 0.5, 0.97, np.nan]), 0.1)
    np.testing.assert_allclose(iv[:3], [[0.0, 0.15], [0.4, 0.6], [0.87, 1.0]])
    assert np.isnan(iv[3]).all()
    np.testing.assert_array_equal(conformal_interval(np.array([0.3]), math.inf), [[0.0, 1.0]])
    np.testing.assert_array_equal(review_flags(np.array([0.2, 0.5, 0.9, np.nan])), [True, False, False, True])
    np.testing.assert_array_equal(review_flags(np.array([0.6]), threshold=0.7), [True])


def test_mean_ensemble():
    a, b = np.array([[0.2, 0.4], [np.nan, np.nan]]), np.array([[0.6, 1.0], [0.3, np.nan]])
    # a failed member (NaN) fails the ensemble instead of leaving the other member's answer
    np.testing.assert_allclose(mean_ensemble(a, b), [[0.4, 0.7], [np.nan, np.nan]])
    np.testing.assert_allclose(mean_ensemble(b), b)
    with pytest.raises(ValueError):
        mean_ensemble()


def test_dice_regressor_recovers_linear_map_and_clips():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (40, 3))
    y = np.stack([0.2 + 0.5 * x[:, 0], 0.9 - 0.6 * x[:, 2]], 1)
    y[::7, 1] = np.nan
    p = fit_dice_regressor(x, y, alpha=1e-8)
    np.testing.assert_allclose(p["coef"], [[0.5, 0, 0], [0, 0, -0.6]], atol=1e-5)
    np.testing.assert_allclose(predict_dice_regressor(p, x)[:, 0], y[:, 0], atol=1e-6)
    assert predict_dice_regressor(p, np.array([[5.0, 0, 0]]))[0, 0] == 1.0
    const = fit_dice_regressor(x[:3], np.array([[0.3, np.nan], [np.nan, np.nan], [np.nan, np.nan]]))
    np.testing.assert_allclose(predict_dice_regressor(const, x[:2]), [[0.3, 0.5], [0.3, 0.5]])


def test_ensemble_weight_is_the_grid_least_squares_weight():
    from synthcp3d.alarms.ensemble import fit_ensemble_weight, weighted_ensemble

    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, (30, 2))
    a = t + rng.normal(0, 0.05, t.shape)  # a good member
    b = rng.uniform(0, 1, t.shape)  # a useless one
    w = fit_ensemble_weight(a, b, t)
    grid = np.linspace(0, 1, 21)
    for k in range(2):  # brute force over the grid
        mse = [np.mean((g * a[:, k] + (1 - g) * b[:, k] - t[:, k]) ** 2) for g in grid]
        assert w[k] == pytest.approx(grid[int(np.argmin(mse))])
    assert (w > 0.8).all()
    np.testing.assert_allclose(weighted_ensemble(a, b, w), w * a + (1 - w) * b)
    np.testing.assert_allclose(weighted_ensemble(a, b, 0.5), mean_ensemble(a, b))
    # equal members: every weight fits equally, the paper's mean is kept; too few rows: 0.5
    np.testing.assert_array_equal(fit_ensemble_weight(a, a, t), [0.5, 0.5])
    t2 = t.copy()
    t2[1:, 1] = np.nan
    assert fit_ensemble_weight(a, b, t2)[1] == 0.5
