import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from synthcp3d.metrics import AnomalyMetrics, PixelFailureMetrics

from .test_curves import official_fpr_nearest, sk_fpr_first_ge


def failure_batch(rng, b=4, h=16, w=20, decimals=3):
    correct = rng.random((b, h, w)) < 0.8
    conf = np.round(np.clip(rng.normal(0.45 + 0.3 * correct, 0.2), 0, 1), decimals).astype(np.float32)
    mask = rng.random((b, h, w)) < 0.9
    return conf, correct, mask


def sk_failure(conf, correct):
    err = ~correct
    return {
        "aupr_error": 100 * average_precision_score(err, -conf),
        "aupr_success": 100 * average_precision_score(correct, conf),
        "auroc": 100 * roc_auc_score(correct, conf),
        "fpr95": 100 * sk_fpr_first_ge(err, -conf),
        "fpr95_success": 100 * sk_fpr_first_ge(correct, conf),
    }


def test_failure_pooled_exact_matches_sklearn():
    rng = np.random.default_rng(0)
    batches = [failure_batch(rng) for _ in range(3)]
    m = PixelFailureMetrics(mode="exact")
    for conf, correct, mask in batches:
        m.update(torch.from_numpy(conf), torch.from_numpy(correct), torch.from_numpy(mask))
    out = m.compute()
    conf = np.concatenate([c[k] for c, _, k in batches])
    correct = np.concatenate([c[k] for _, c, k in batches])
    for key, ref in sk_failure(conf, correct).items():
        assert out[key] == pytest.approx(ref, abs=1e-9), key
    assert out["n_pixels"] == conf.size
    assert out["error_rate"] == pytest.approx(100 * (~correct).mean())
    assert (out["protocol"], out["mode"], out["fpr_rule"]) == ("pooled", "exact", "first_ge")


def test_failure_pooled_hist_close_to_sklearn():
    rng = np.random.default_rng(1)
    correct = rng.random((8, 100, 100)) < 0.85
    conf = (1 / (1 + np.exp(-rng.normal(2.0 * correct, 1.0)))).astype(np.float32)  # continuous
    m = PixelFailureMetrics()  # hist, 2**16 bins
    for i in range(0, 8, 3):
        m.update(conf[i : i + 3], correct[i : i + 3])
    out = m.compute()
    assert out["mode"] == "hist" and out["bins"] == 1 << 16
    for key, ref in sk_failure(conf.ravel(), correct.ravel()).items():
        assert abs(out[key] - ref) < 1e-2, key  # 1e-4 as a fraction, in percent


@pytest.mark.parametrize("rule", ["first_ge", "nearest"])
def test_failure_per_image_matches_per_image_sklearn(rule):
    rng = np.random.default_rng(2)
    conf, correct, mask = failure_batch(rng, b=5)
    correct[1] = True  # no error: skipped
    mask[3] = False  # nothing to evaluate: skipped
    m = PixelFailureMetrics(protocol="per_image", mode="exact", fpr_rule=rule)
    m.update(conf[:2], correct[:2], mask[:2])
    m.update(conf[2:], correct[2:], mask[2:])
    out = m.compute()
    refs = []
    for i in (0, 2, 4):
        c, ok = conf[i][mask[i]], correct[i][mask[i]]
        ref = sk_failure(c, ok)
        if rule == "nearest":
            ref["fpr95"] = 100 * official_fpr_nearest(~ok, -c)
            ref["fpr95_success"] = 100 * official_fpr_nearest(ok, c)
        refs.append(ref)
    for key in refs[0]:
        assert out[key] == pytest.approx(np.mean([r[key] for r in refs]), abs=1e-9), key
    assert (out["protocol"], out["n_images"], out["n_skipped"]) == ("per_image", 3, 2)


def test_failure_errors():
    m = PixelFailureMetrics()
    conf = torch.rand(2, 4, 4)
    conf[0, 0, :2] = float("nan")
    with pytest.raises(ValueError, match="confidence contains 2 NaN"):
        m.update(conf, torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\) and \(2, 4, 5\)"):
        m.update(torch.rand(2, 4, 4), torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="protocol"):
        PixelFailureMetrics(protocol="mean")
    assert m.compute()["n_pixels"] == 0  # rejected batches left no trace
    with pytest.raises(ValueError, match="batch"):
        PixelFailureMetrics(protocol="per_image").update(torch.rand(5), torch.ones(5, dtype=torch.bool))


def test_failure_tiny_hand_case_and_reset():
    m = PixelFailureMetrics(mode="exact")
    # confidences of correct pixels 0.9, 0.7; of errors 0.8, 0.2
    m.update(np.array([[0.9, 0.8, 0.7, 0.2]]), np.array([[True, False, True, False]]))
    out = m.compute()
    assert out["auroc"] == pytest.approx(75.0)  # 3 of 4 (correct, error) pairs ordered
    # errors by -conf: 0.2(err) 0.7(ok) 0.8(err) 0.9(ok) -> AP = 1/2*1 + 1/2*2/3
    assert out["aupr_error"] == pytest.approx(100 * (0.5 + 1 / 3))
    assert out["fpr95"] == pytest.approx(50.0)
    m.reset()
    assert np.isnan(m.compute()["auroc"])


def anomaly_batch(rng, b=6, n=300):
    anomaly = rng.random((b, n)) < 0.1
    score = np.round(np.clip(rng.normal(0.3 + 0.3 * anomaly, 0.2), 0, 1), 3)
    return score, anomaly


def test_anomaly_pooled_and_per_image_match_sklearn():
    rng = np.random.default_rng(3)
    score, anomaly = anomaly_batch(rng)
    anomaly[2] = False  # no anomaly: skipped per image
    anomaly[4] = True  # only anomaly: skipped per image
    pooled = AnomalyMetrics(mode="exact")
    pooled.update(score, anomaly)
    out = pooled.compute()
    y, s = anomaly.ravel(), score.ravel()
    assert out["aupr"] == pytest.approx(100 * average_precision_score(y, s), abs=1e-9)
    assert out["auroc"] == pytest.approx(100 * roc_auc_score(y, s), abs=1e-9)
    assert out["fpr95"] == pytest.approx(100 * sk_fpr_first_ge(y, s), abs=1e-9)

    per = AnomalyMetrics(protocol="per_image", mode="hist", bins=1000, fpr_rule="nearest")
    per.update(torch.from_numpy(score), torch.from_numpy(anomaly))
    res = per.compute()
    used = [0, 1, 3, 5]
    assert (res["n_images"], res["n_skipped"]) == (4, 2)
    # scores have 3 decimals and 1000 bins: every distinct score has its own bin, so this is exact
    assert res["aupr"] == pytest.approx(np.mean([100 * average_precision_score(anomaly[i], score[i]) for i in used]))
    assert res["auroc"] == pytest.approx(np.mean([100 * roc_auc_score(anomaly[i], score[i]) for i in used]))
    ref_fpr = np.mean([100 * official_fpr_nearest(anomaly[i], score[i]) for i in used])
    assert res["fpr95"] == pytest.approx(ref_fpr)
    assert res["protocol"] == "per_image"
