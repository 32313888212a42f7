"""Anomaly scores (eq. 9, MSP post-processing, baselines) and the per-image evaluation against references."""

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from synthcp3d.alarms.anomaly import (
    anomaly_maps,
    evaluate_anomaly,
    feature_cosine_distance,
    maxlogit_score,
    msp_postprocess,
    msp_score,
)
from synthcp3d.data.phantom_scenes import make_scene_dataset
from synthcp3d.data.streethazards import load_streethazards, streethazards_datalist

SIZE = (32, 64)
K = 13


class StubSegmenter(torch.nn.Module):
    """Features = the image itself (+1, so never all zero); logits = a fixed 1x1 conv of the image."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, K, 1)

    def forward_features(self, x):
        return self.conv(x) * 5, x + 1


class StubGenerator(torch.nn.Module):
    """One fixed colour per class (in [-1, 1]); all-zero one-hot -> 0."""

    def __init__(self):
        super().__init__()
        self.colours = torch.linspace(-0.9, 0.9, K * 3).reshape(K, 3)

    def forward(self, seg):
        return torch.einsum("bkhw,kc->bchw", seg, self.colours)


def test_feature_cosine_distance_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 5, 3, 4))
    ref = 1 - (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    out = feature_cosine_distance(torch.tensor(a), torch.tensor(b))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 2, 1)  # pixel 0: (1, 0), pixel 1: (0, 1)
    assert feature_cosine_distance(e, e).abs().max() < 1e-6
    assert feature_cosine_distance(e, e.flip(1)).flatten().tolist() == [1.0, 1.0]  # orthogonal
    assert feature_cosine_distance(e, -e).flatten().tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="differ in shape"):
        feature_cosine_distance(e, e[:, :1])


def test_msp_postprocess_by_hand():
    score = torch.tensor([0.9, 0.2, 0.5, 0.7])
    p = torch.tensor([0.5, 0.9995, 0.999, 1.0])
    out = msp_postprocess(score, p, 0.999)
    torch.testing.assert_close(out, torch.tensor([0.9, 1 - 0.9995, 0.5, 0.0]))  # p > t only, not p == t
    torch.testing.assert_close(msp_postprocess(score, p, 1.0), score)
    torch.testing.assert_close(msp_postprocess(score, p, 0.0), 1 - p)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        msp_postprocess(score, p, 1.5)


def test_baselines_match_scipy():
    logits = torch.randn(2, K, 3, 5)
    ref = 1 - softmax(logits.numpy(), axis=1).max(1)
    np.testing.assert_allclose(msp_score(logits).numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maxlogit_score(logits).numpy(), -logits.numpy().max(1))


def test_anomaly_maps_wiring():
    seg, gen = StubSegmenter(), StubGenerator()
    x = torch.rand(2, 3, *SIZE)
    maps = anomaly_maps(seg, gen, x, K, thresholds=(0.5, 1.0), amp_dtype="float32")
    logits = seg.conv(x) * 5
    pred = logits.argmax(1)
    synth01 = (gen.colours[pred].movedim(-1, 1) + 1) / 2  # x̂ mapped to the segmenter's [0, 1]
    torch.testing.assert_close(maps["pred"], pred)
    torch.testing.assert_close(maps["synth"], synth01)
    ref = 1 - torch.nn.functional.cosine_similarity(x + 1, synth01 + 1, dim=1)
    torch.testing.assert_close(maps["synthcp"], ref)
    p = torch.softmax(logits, 1).amax(1)
    torch.testing.assert_close(maps["synthcp_t=0.5"], torch.where(p > 0.5, 1 - p, ref))
    torch.testing.assert_close(maps["synthcp_t=1"], ref)
    torch.testing.assert_close(maps["score_msp"], msp_score(logits))
    torch.testing.assert_close(maps["score_maxlogit"], maxlogit_score(logits))


@pytest.fixture(scope="module")
def test_items(tmp_path_factory):
    root = make_scene_dataset(tmp_path_factory.mktemp("sh"), style="streethazards", num_images=4, size=SIZE,
                              seed=3, splits=("test",))  # fmt: skip
    return streethazards_datalist(root, "test")


def test_evaluate_anomaly_per_image_against_sklearn(test_items):
    seg, gen = StubSegmenter(), StubGenerator()
    res = evaluate_anomaly(seg, gen, test_items, load=load_streethazards, size=SIZE, num_classes=K, num_examples=2,
                           thresholds=(0.9, 1.0), threshold=0.9, amp_dtype="float32", progress=False)  # fmt: skip
    assert list(res["methods"]) == ["MSP", "MaxLogit", "SynthCP (t=0.9)", "SynthCP, no post-processing"]
    assert set(res["sweep"]) == {0.9, 1.0}
    assert res["sweep"][1.0] == res["methods"]["SynthCP, no post-processing"]
    # independent reference: the phantom is at the working size, so the maps are the networks' outputs as is
    aurocs, aps, areas = [], [], []
    for item in test_items:
        d = load_streethazards(item)
        x, lab = torch.as_tensor(d["image"])[None], d["label"][0]
        score = maxlogit_score(seg.forward_features(x)[0])[0].detach().numpy()
        valid, pos = lab != 255, lab == 13
        areas.append(int(pos.sum()))
        if pos[valid].any() and (~pos[valid]).any():
            aurocs.append(roc_auc_score(pos[valid], score[valid]))
            aps.append(average_precision_score(pos[valid], score[valid]))
    m = res["methods"]["MaxLogit"]
    assert m["n_images"] == len(aurocs) == res["n_images"] and res["n_skipped"] == len(test_items) - len(aurocs)
    assert m["auroc"] == pytest.approx(100 * np.mean(aurocs), abs=1e-6)
    assert m["aupr"] == pytest.approx(100 * np.mean(aps), abs=1e-6)
    assert 0 <= m["fpr95"] <= 100
    # Fig.-7 examples: the two images with the largest anomaly area, arrays at the working size
    assert len(res["examples"]) == 2
    top = sorted(range(len(areas)), key=lambda i: -areas[i])[:2]
    assert [e["case_id"] for e in res["examples"]] == [test_items[i]["case_id"] for i in top]
    ex = res["examples"][0]
    assert ex["image"].shape == ex["synth"].shape == (*SIZE, 3) and ex["image"].dtype == np.uint8
    assert ex["label"].shape == ex["pred"].shape == ex["msp"].shape == ex["synthcp"].shape == SIZE


def test_evaluate_anomaly_upsamples_to_annotation_size(test_items):
    """Networks at half size: maps are upsampled to the 32x64 annotations, every pixel is evaluated."""
    res = evaluate_anomaly(StubSegmenter(), StubGenerator(), test_items[:2], load=load_streethazards, size=(16, 32),
                           num_classes=K, num_examples=0, progress=False)  # fmt: skip
    assert res["examples"] == []
    labels = [load_streethazards(it)["label"] for it in test_items[:2]]
    evaluated = [lab for lab in labels if (lab == 13).any()]
    assert res["methods"]["MSP"]["n_pixels"] == sum(int((lab != 255).sum()) for lab in evaluated)
