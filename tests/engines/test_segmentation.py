import json

import nibabel as nib
import numpy as np
import pytest
import torch

from synthcp3d.data.msd import msd_datalist
from synthcp3d.data.phantom_pancreas import make_pancreas_dataset
from synthcp3d.engines.segmentation import cross_validate, fold_split, predict_volumes, train_segmenter
from synthcp3d.networks import Segmenter

TINY = dict(roi_size=(16, 16, 16), pixdim=(4.0, 4.0, 5.0), batch_size=2, num_samples=1, progress=False,
            val_interval=1)  # fmt: skip


def tiny_net():
    torch.manual_seed(0)
    return Segmenter(3, 1, 3, backbone="unet", unet_channels=(4, 8, 16), feature_channels=4)


@pytest.fixture(scope="module")
def roi_root(tmp_path_factory):
    return make_pancreas_dataset(tmp_path_factory.mktemp("roi"), num_cases=4, size=(32, 32, 16), seed=1, num_test=1,
                                 field_of_view_mm=(128, 128, 80), roi_center="pancreas", progress=False)


def test_fold_split_is_a_deterministic_partition():
    ids = [f"case_{i:02d}" for i in range(10)]
    folds = fold_split(ids, 4, seed=3)
    assert folds == fold_split(ids, 4, seed=3) and folds != fold_split(ids, 4, seed=4)
    assert sorted(sum(folds, [])) == ids
    assert sorted(len(f) for f in folds) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="num_folds"):
        fold_split(ids, 11)


def test_train_resumes_from_saved_iteration(roi_root, tmp_path):
    items = msd_datalist(roi_root)
    first = train_segmenter(tiny_net(), items[:3], items[3:], tmp_path, max_epochs=1, **TINY)
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_final.pt").is_file()
    per_epoch = first["iterations"]
    assert per_epoch == 2  # 3 cases x 1 crop, batch 2
    assert 0.0 <= first["best_val_dice"] <= 1.0
    # "interrupted" after epoch 1: asking for 3 epochs continues at iteration 2 instead of restarting
    second = train_segmenter(tiny_net(), items[:3], items[3:], tmp_path, max_epochs=3, **TINY)
    assert second["iterations"] == 3 * per_epoch
    ckpt = torch.load(models / "checkpoint_final.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3 * per_epoch and ckpt["trainer"]["max_epochs"] == 3
    # without resume it starts again from iteration 0
    third = train_segmenter(tiny_net(), items[:3], None, tmp_path / "fresh", max_epochs=1, resume=False, **TINY)
    assert third["iterations"] == per_epoch and third["best_val_dice"] is None


def test_predictions_overlay_their_inputs(roi_root, tmp_path):
    items = msd_datalist(roi_root)[:1]
    out = predict_volumes(tiny_net(), items, tmp_path, roi_size=(16, 16, 16), pixdim=(4.0, 4.0, 5.0), progress=False)
    rec = out[items[0]["case_id"]]
    img, pred, probs = nib.load(rec["image"]), nib.load(rec["pred"]), nib.load(rec["probs"])
    assert pred.shape == img.shape and probs.shape == (*img.shape, 3)
    np.testing.assert_allclose(pred.affine, img.affine, atol=1e-4)
    p = np.asarray(probs.dataobj)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(pred.dataobj), p.argmax(-1))


def test_cross_validation_predicts_every_case_once(roi_root, tmp_path):
    train, test = msd_datalist(roi_root), msd_datalist(roi_root, "test")
    kw = {k: v for k, v in TINY.items() if k != "progress"}
    predict = dict(roi_size=(16, 16, 16), pixdim=(4.0, 4.0, 5.0), progress=False)
    index = cross_validate(tiny_net, train, test, tmp_path, num_folds=2, fold_seed=5,
                           train_kwargs=dict(max_epochs=1, progress=False, **kw), predict_kwargs=predict)
    folds = json.loads((tmp_path / "folds.json").read_text())
    assert folds["folds"] == fold_split(sorted(i["case_id"] for i in train), 2, 5)
    assert json.loads((tmp_path / "predictions" / "index.json").read_text()) == index
    for k, held in enumerate(folds["folds"]):
        for cid in held:
            assert index[cid]["split"] == "cv" and index[cid]["fold"] == k and "label" in index[cid]
    assert index["pancreas_005"]["split"] == "test" and "label" not in index["pancreas_005"]
    assert (tmp_path / "final" / "models" / "model.pt").is_file()
