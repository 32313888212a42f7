import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from synthcp3d.alarms.baselines import entropy_confidence, mc_dropout_iou, msp_confidence, pixel_confidence
from synthcp3d.alarms.failure_detection import (
    METHOD_LABELS,
    evaluate_index,
    load_failure_samples,
    train_failure_detectors,
)
from synthcp3d.data.io import DataError, write_png
from synthcp3d.data.labels import one_hot
from synthcp3d.metrics import image_level
from synthcp3d.networks import DirectPredictor, ShapeVAE, SiameseComparator
from synthcp3d.reports.table1 import iou_scatter_png, write_table1

C, H, W = 4, 32, 64
TINY = {"widen_factor": 0.125, "fuse_channels": 4, "hidden": 8}


def _index(root, n=6, seed=0):
    """A scene prediction index written by hand: blocky labels, a corrupted prediction, softmax maps."""
    rng = np.random.default_rng(seed)
    index = {}
    for i in range(n):
        label = np.repeat(np.repeat(rng.integers(0, C, (4, 8)), 8, 0), 8, 1).astype(np.uint8)
        label[:4] = 255  # ignored band (ego hood)
        pred = label.copy()
        pred[pred == 255] = 0
        flip = rng.random((H, W)) < 0.1 * (i + 1) / n
        pred[flip] = rng.integers(0, C, flip.sum())
        logits = rng.normal(0, 1, (C, H, W)) + 3 * np.eye(C)[pred].transpose(2, 0, 1)
        probs = np.exp(logits) / np.exp(logits).sum(0)
        image = (np.stack([label * 40 % 255] * 3, -1) + rng.integers(0, 20, (H, W, 3))).astype(np.uint8)
        d = root / f"case_{i}"
        write_png(d / "image.png", image)
        write_png(d / "label.png", label)
        write_png(d / "pred.png", pred)
        write_png(root / "synth" / f"case_{i}" / "synth.png", (np.stack([pred * 40 % 255] * 3, -1)).astype(np.uint8))
        np.save(d / "probs.npy", probs.astype(np.float16))
        np.save(d / "mc_probs.npy", (0.8 * probs + 0.2 / C).astype(np.float16))
        index[f"case_{i}"] = {"split": "cv" if i < n - 2 else "test", "fold": None, "image": str(d / "image.png"),
                              "label": str(d / "label.png"), "pred": str(d / "pred.png"),
                              "probs": str(d / "probs.npy"), "mc_probs": str(d / "mc_probs.npy")}  # fmt: skip
    (root / "index.json").write_text(json.dumps(index))
    return root / "index.json"


def test_one_hot_ignore():
    lab = torch.tensor([[0, 2], [255, 1]])
    oh = one_hot(lab, 3, ignore_index=255)
    assert oh.shape == (3, 2, 2) and oh[:, 1, 0].sum() == 0 and oh[2, 0, 1] == 1 and oh.sum() == 3
    with pytest.raises(ValueError, match="outside"):
        one_hot(torch.tensor([[3]]), 3, ignore_index=255)


def test_baselines_by_hand():
    p = torch.tensor([[0.7, 0.25], [0.2, 0.25], [0.1, 0.5]])[:, :, None]  # (C=3, 2, 1)
    assert torch.allclose(msp_confidence(p)[:, 0], torch.tensor([0.7, 0.5]))
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy_confidence(p)[0, 0].item() == pytest.approx(1 - h / math.log(3), abs=1e-6)
    assert entropy_confidence(torch.full((3, 1, 1), 1 / 3)).item() == pytest.approx(0, abs=1e-6)
    # soft IoU: class 0 predicted at pixel 0 only
    iou = mc_dropout_iou(p, torch.tensor([[0], [2]]))
    assert iou[0].item() == pytest.approx(0.7 / (0.95 + 1 - 0.7)) and iou[1].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="mc_probs"):
        pixel_confidence("mcdropout", {"probs": p})


def test_samples_targets(tmp_path):
    idx = _index(tmp_path)
    samples = load_failure_samples(idx, tmp_path / "synth", num_classes=C, split="cv")
    assert [s["case_id"] for s in samples] == [f"case_{i}" for i in range(4)]
    s = samples[3]
    label, pred = s["label"].numpy(), s["pred"].numpy()
    keep = label != 255
    for c in range(C):
        inter, union = ((pred == c) & (label == c) & keep).sum(), (((pred == c) | (label == c)) & keep).sum()
        assert s["target"][c].item() == pytest.approx(inter / union)
    assert s["error"][0].numpy().sum() == ((pred != label) & keep).sum() and not s["error"][0, :4].any()
    assert s["probs"].shape == (C, H, W) and s["synth"].shape == s["image"].shape == (3, H, W)
    with pytest.raises(DataError):
        load_failure_samples(idx, tmp_path / "nowhere", num_classes=C)


def _nets():
    torch.manual_seed(0)
    return {"joint": SiameseComparator(2, 3, C, **TINY), "score": SiameseComparator(2, 3, C, error_head=False, **TINY),
            "error": SiameseComparator(2, 3, C, score_head=False, **TINY), "direct": DirectPredictor(2, 3, C, **TINY)}


def _vae():
    return ShapeVAE(2, (16, 32), in_channels=C, latent_size=4, channels=(4, 8), include_background=True)


def test_train_evaluate_and_table(tmp_path):
    idx = _index(tmp_path)
    cv = load_failure_samples(idx, tmp_path / "synth", num_classes=C, split="cv")
    manifest = train_failure_detectors(cv, tmp_path / "models", networks=_nets(), vae=_vae(), num_classes=C,
                                       iterations=2, vae_iterations=2, batch_size=2, progress=False)  # fmt: skip
    assert set(manifest["networks"]) == {"joint", "score", "error", "direct"} and manifest["n_samples"] == 4
    assert len(manifest["vae_regressor"]["coef"]) == C and len(manifest["vae_regressor"]["coef"][0]) == 1 + 2 * C

    res = evaluate_index(idx, tmp_path / "synth", tmp_path / "models", networks=_nets(), vae=_vae(), num_classes=C,
                         out_file=tmp_path / "res.json")  # fmt: skip
    assert res["n_images"] == 2 and json.loads((tmp_path / "res.json").read_text())["n_images"] == 2
    assert list(res["pixel_level"]) == ["msp", "entropy", "mcdropout", "direct", "synthcp_separate", "synthcp_joint"]
    assert list(res["image_level"]) == ["mcdropout", "vae_alarm", "direct", "synthcp_separate", "synthcp_joint"]

    # MSP pooled over the labelled pixels of both test images, against scikit-learn
    test = load_failure_samples(idx, None, num_classes=C, split="test")
    conf = np.concatenate([np.load(s["paths"]["probs"]).astype(np.float32).max(0)[~s["ignore"][0].numpy()]
                           for s in test])  # fmt: skip
    err = np.concatenate([s["error"][0].numpy()[~s["ignore"][0].numpy()] for s in test]).astype(bool)
    msp = res["pixel_level"]["msp"]
    assert msp["n_pixels"] == conf.size
    assert msp["aupr_error"] == pytest.approx(100 * average_precision_score(err, -conf), abs=0.2)
    assert msp["aupr_success"] == pytest.approx(100 * average_precision_score(~err, conf), abs=0.2)
    assert msp["auroc"] == pytest.approx(100 * roc_auc_score(~err, conf), abs=0.2)
    # image-level MCDropout = image_level of the soft IoUs
    mc = torch.stack([mc_dropout_iou(torch.from_numpy(np.load(s["paths"]["mc_probs"]).astype(np.float32)), s["pred"])
                      for s in test]).numpy()  # fmt: skip
    ref = image_level(mc, torch.stack([s["target"] for s in test]).numpy())
    assert res["image_level"]["mcdropout"]["mae"] == pytest.approx(ref["mae"])

    # generalisation-style call: Direct Prediction only, no synthesized images needed
    direct = evaluate_index(idx, None, tmp_path / "models", networks={"direct": DirectPredictor(2, 3, C, **TINY)},
                            num_classes=C, methods=["direct", "msp"])  # fmt: skip
    assert list(direct["pixel_level"]) == ["msp", "direct"] and list(direct["image_level"]) == ["direct"]

    paths = write_table1(res, tmp_path / "report", generalisation=[dict(direct, trained_on="a", tested_on="b")])
    doc = json.loads(paths["json"].read_text())
    main, gen = doc["tables"]
    assert [r["method"] for r in main["rows"]] == list(METHOD_LABELS.values())
    msp_row = main["rows"][0]
    assert msp_row["mae"] is None and msp_row["aupr_error"] == pytest.approx(msp["aupr_error"])
    assert main["rows"][3]["method"] == "VAE alarm" and main["rows"][3]["auroc"] is None
    assert [r["trained_on"] for r in gen["rows"]] == [None, "a"]  # MSP is not trained
    assert paths["html"].read_text().count("N/A") == 2 * 4 + 4 + 5  # MSP, Entropy image; VAE pixel; gen. MSP
    png = iou_scatter_png(res)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and iou_scatter_png({"predicted_iou": {}}) is None
