import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from synthcp3d.metrics import BinaryCurveAccumulator, binary_curve_metrics
from synthcp3d.metrics.curves import as_tensor, curve_metrics_from_counts, prepare


def sk_fpr_first_ge(y, s, level=0.95):
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr[np.searchsorted(tpr, level, side="left")]


def official_fpr_nearest(y, s, level=0.95):
    """The official SynthCP / StreetHazards ``fpr_and_fdr_at_recall`` algorithm, in NumPy."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order].astype(bool)
    thr_idx = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[thr_idx]
    fps = 1 + thr_idx - tps
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    return fps[np.argmin(np.abs(recall - level))] / np.sum(~y)


def tied_data(rng, n, pos_rate=0.3, decimals=2):
    y = rng.random(n) < pos_rate
    s = np.round(np.clip(rng.normal(0.5 + 0.2 * y, 0.2), 0, 1), decimals)  # many ties
    return s, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_sklearn_with_ties_streamed(seed):
    rng = np.random.default_rng(seed)
    s, y = tied_data(rng, 5000)
    acc = BinaryCurveAccumulator("exact")
    for part in np.array_split(np.arange(s.size), 7):  # several updates exercise the merge
        acc.update(torch.from_numpy(s[part]), torch.from_numpy(y[part]))
    desc = acc.counts().flip(0)
    r = curve_metrics_from_counts(desc[:, 1], desc[:, 0])
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert r["fpr_at_tpr"] == pytest.approx(sk_fpr_first_ge(y, s), abs=1e-12)
    assert r["n_pos"] == y.sum() and r["n_neg"] == (~y).sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_rule_matches_official_code(seed):
    rng = np.random.default_rng(seed)
    s, y = tied_data(rng, 3000, decimals=3)
    r = binary_curve_metrics(s, y, fpr_rule="nearest")
    assert r["fpr_at_tpr"] == pytest.approx(official_fpr_nearest(y, s), abs=1e-12)


def test_hist_continuous_within_1e4_of_sklearn():
    rng = np.random.default_rng(3)
    y = rng.random(200_000) < 0.2
    s = 1 / (1 + np.exp(-rng.normal(1.0 * y, 1.0)))  # continuous scores in (0, 1)
    r = binary_curve_metrics(s.astype(np.float32), y, mode="hist")
    assert abs(r["ap"] - average_precision_score(y, s)) < 1e-4
    assert abs(r["auroc"] - roc_auc_score(y, s)) < 1e-4
    assert abs(r["fpr_at_tpr"] - sk_fpr_first_ge(y, s)) < 1e-4


def test_hist_exact_when_scores_on_distinct_bins():
    rng = np.random.default_rng(4)
    bins = 256
    y = rng.random(4000) < 0.4
    s = (rng.integers(0, bins, 4000) + 0.5) / bins  # bin centres: ties exactly as sklearn sees them
    r = binary_curve_metrics(s, y, mode="hist", bins=bins)
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert r["fpr_at_tpr"] == pytest.approx(sk_fpr_first_ge(y, s), abs=1e-12)


def test_hist_custom_range_and_clipping_warns():
    rng = np.random.default_rng(5)
    y = rng.random(1000) < 0.5
    s = (rng.integers(0, 64, 1000) - 32.0) / 8  # in [-4, 4)
    r = binary_curve_metrics(s, y, mode="hist", bins=64, score_range=(-4, 4))
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.warns(UserWarning, match="outside score_range"):
        clipped = binary_curve_metrics(s, y, mode="hist", bins=64, score_range=(0, 1))
    sc = np.clip(s, 0, 1)  # everything below 0 ties in bin 0; 1 falls in the last bin
    assert clipped["auroc"] == pytest.approx(roc_auc_score(y, np.minimum(np.floor(sc * 64), 63)), abs=1e-12)


def test_hand_computed_tiny_cases():
    r = binary_curve_metrics([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert r["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert r["auroc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered
    assert r["fpr_at_tpr"] == pytest.approx(0.5)  # 95% TPR needs threshold 0.7, which passes the 0.8 neg
    tie = binary_curve_metrics([0.5, 0.5, 0.1], [1, 0, 0])
    assert tie["ap"] == pytest.approx(0.5)  # the tie is one threshold: precision 1/2 at recall 1
    assert tie["auroc"] == pytest.approx(0.75)  # half credit for the tied pair
    assert tie["fpr_at_tpr"] == pytest.approx(0.5)


def test_single_class_batches():
    pos = binary_curve_metrics([0.2, 0.7], [1, 1])
    assert pos["ap"] == 1.0 and np.isnan(pos["auroc"]) and np.isnan(pos["fpr_at_tpr"])
    neg = binary_curve_metrics([0.2, 0.7], [0, 0])
    assert np.isnan(neg["ap"]) and np.isnan(neg["auroc"])
    # an all-positive batch followed by an all-negative batch equals the pooled sklearn result
    for mode in ("exact", "hist"):
        acc = BinaryCurveAccumulator(mode, bins=16)
        acc.update(torch.tensor([0.25, 0.75]), torch.tensor([True, True]))
        acc.update(torch.tensor([0.5, 0.75]), torch.tensor([False, False]))
        desc = acc.counts().flip(0)
        r = curve_metrics_from_counts(desc[:, 1], desc[:, 0])
        y, s = [1, 1, 0, 0], [0.25, 0.75, 0.5, 0.75]
        assert r["ap"] == pytest.approx(average_precision_score(y, s))
        assert r["auroc"] == pytest.approx(roc_auc_score(y, s))


def test_mask_selects_pixels():
    rng = np.random.default_rng(6)
    s, y = tied_data(rng, (20, 30))
    m = rng.random((20, 30)) < 0.7
    s_nan = s.copy()
    s_nan[~m] = np.nan  # NaN outside the mask is never looked at
    r = binary_curve_metrics(s_nan, y, mask=m)
    assert r["ap"] == pytest.approx(average_precision_score(y[m], s[m]), abs=1e-12)
    assert r["auroc"] == pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-12)


def test_nan_and_shape_errors():
    s = np.array([0.1, np.nan, 0.3, np.nan, np.nan])
    with pytest.raises(ValueError, match="3 NaN"):
        binary_curve_metrics(s, [0, 1, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\(3,\) and \(4,\)"):
        binary_curve_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="binary"):
        binary_curve_metrics(np.zeros(3), np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="binary"):
        binary_curve_metrics(np.zeros(3), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="mode"):
        BinaryCurveAccumulator("interp")


def test_numpy_is_not_copied_and_torch_matches_numpy():
    a = np.random.default_rng(7).random(100).astype(np.float32)
    assert as_tensor(a).data_ptr() == a.ctypes.data
    y = a > 0.3
    s, lab, _ = prepare(a, y)
    assert s.dtype == torch.float32 and lab.dtype == torch.bool
    r_np = binary_curve_metrics(a, (np.arange(100) % 3) == 0, mode="hist")
    r_t = binary_curve_metrics(torch.from_numpy(a), torch.arange(100) % 3 == 0, mode="hist")
    assert r_np == r_t


@pytest.mark.parametrize("mode", ["exact", "hist"])
def test_nan_rejected_atomically_and_ignored_outside_mask(mode, monkeypatch):
    monkeypatch.setattr("synthcp3d.metrics.curves._CHUNK", 7)  # many chunks on small data
    rng = np.random.default_rng(8)
    s = (rng.integers(0, 100, 50) + 0.5) / 100
    y = rng.random(50) < 0.5
    m = rng.random(50) < 0.6
    acc = BinaryCurveAccumulator(mode, bins=100)
    acc.update(torch.from_numpy(s), torch.from_numpy(y))
    before = acc.counts().clone()
    bad = s.copy()
    bad[[3, 40]] = np.nan
    with pytest.raises(ValueError, match="2 NaN"):
        acc.update(torch.from_numpy(bad), torch.from_numpy(y))
    torch.testing.assert_close(acc.counts(), before)  # the rejected batch left no trace
    bad[~m] = np.nan  # only masked-out NaN now
    bad[[3, 40]] = s[[3, 40]]
    r = binary_curve_metrics(bad, y, mask=m, mode=mode, bins=100)
    assert r["ap"] == pytest.approx(average_precision_score(y[m], s[m]), abs=1e-12)
    assert r["auroc"] == pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-12)
    assert r["fpr_at_tpr"] == pytest.approx(sk_fpr_first_ge(y[m], s[m]), abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_inputs_stay_on_gpu():
    s = torch.rand(10_000, device="cuda")
    y = torch.rand(10_000, device="cuda") < s
    acc = BinaryCurveAccumulator("hist")
    acc.update(s, y)
    assert acc.counts().is_cuda
    r = binary_curve_metrics(s, y, mode="exact")
    assert r["auroc"] == pytest.approx(roc_auc_score(y.cpu().numpy(), s.cpu().numpy()), abs=1e-12)
