import json

import nibabel as nib
import numpy as np
import pytest
import torch

from synthcp3d.data.msd import msd_datalist
from synthcp3d.data.phantom_pancreas import make_pancreas_dataset
from synthcp3d.engines.segmentation import (
    _one_hot_ignoring,
    cross_validate,
    fold_split,
    predict_volumes,
    train_segmenter,
    write_scene_prediction,
)
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


# ---------------------------------------------------------------- 2D scenes through the same functions
SCENE_SIZE = (32, 64)


def scene_net():
    torch.manual_seed(0)
    return Segmenter(2, 3, 19, backbone="unet", unet_channels=(4, 8, 16), feature_channels=4, dropout=0.2)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from synthcp3d.data.cityscapes import cityscapes_datalist
    from synthcp3d.data.phantom_scenes import make_scene_dataset

    root = make_scene_dataset(tmp_path_factory.mktemp("cs"), "cityscapes", num_images=4, size=SCENE_SIZE, seed=1,
                              write_color=False)  # fmt: skip
    return cityscapes_datalist(root, "train"), cityscapes_datalist(root, "val")


def _scene_kwargs():
    from synthcp3d.data.cityscapes import load_cityscapes
    from synthcp3d.data.transforms import scene_transforms
    from synthcp3d.losses import DiceCEIgnoreLoss

    train = dict(max_epochs=1, batch_size=2, roi_size=SCENE_SIZE, num_classes=19, progress=False, val_interval=1,
                 train_transform=scene_transforms(load_cityscapes, train=True),
                 val_transform=scene_transforms(load_cityscapes), loss_function=DiceCEIgnoreLoss(255),
                 ignore_index=255)  # fmt: skip
    predict = dict(roi_size=SCENE_SIZE, transform=scene_transforms(load_cityscapes), writer=write_scene_prediction,
                   mc_samples=3, progress=False)  # fmt: skip
    return train, predict


def test_one_hot_ignoring_drops_ignored_pixels():
    label = torch.tensor([[[0, 1], [255, 2]]])
    logits = torch.zeros(3, 2, 2)
    logits[2] = 1  # predicts class 2 everywhere
    out = _one_hot_ignoring({"pred": logits, "label": label}, num_classes=3, ignore_index=255)
    assert out["label"][:, 1, 0].sum() == 0 and out["pred"][:, 1, 0].sum() == 0
    assert out["label"][0, 0, 0] == 1 and out["label"][2, 1, 1] == 1 and out["pred"][2].sum() == 3


def test_scene_cross_validation_contiguous_folds_and_outputs(scenes, tmp_path):
    from synthcp3d.data.io import read_png

    train, val = scenes
    train_kw, predict_kw = _scene_kwargs()
    index = cross_validate(scene_net, train, val[:2], tmp_path, num_folds=2, fold_shuffle=False,
                           train_kwargs=train_kw, predict_kwargs=predict_kw)  # fmt: skip
    ids = sorted(i["case_id"] for i in train)
    assert json.loads((tmp_path / "folds.json").read_text())["folds"] == [ids[:2], ids[2:]]  # official: no shuffle
    assert sorted(k for k, v in index.items() if v["split"] == "cv") == ids
    rec = index[val[0]["case_id"]]
    assert rec["split"] == "test"
    pred, label, image = read_png(rec["pred"]), read_png(rec["label"]), read_png(rec["image"])
    probs, mc = np.load(rec["probs"]), np.load(rec["mc_probs"])
    assert pred.shape == label.shape == SCENE_SIZE and image.shape == (*SCENE_SIZE, 3)
    assert probs.shape == mc.shape == (19, *SCENE_SIZE) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1, atol=1e-2)
    np.testing.assert_allclose(mc.astype(np.float32).sum(0), 1, atol=1e-2)
    np.testing.assert_array_equal(pred, probs.astype(np.float32).argmax(0))
    assert not np.array_equal(probs, mc)  # dropout passes differ from the deterministic pass
    assert set(np.unique(label)) <= set(range(19)) | {255} and (label == 255).any()  # hood / border ignored


def test_scene_final_weights_are_loaded_not_trained(scenes, tmp_path):
    train, val = scenes
    net = scene_net()
    torch.save(net.state_dict(), tmp_path / "mine.pt")
    train_kw, predict_kw = _scene_kwargs()
    predict_kw["mc_samples"] = 0
    index = cross_validate(scene_net, train, val[:1], tmp_path, num_folds=2, train_final=False,
                           final_weights=tmp_path / "mine.pt", train_kwargs=train_kw, predict_kwargs=predict_kw)
    assert not (tmp_path / "final").exists() and "mc_probs" not in index[val[0]["case_id"]]
    probs = np.load(index[val[0]["case_id"]]["probs"]).astype(np.float32)
    with torch.no_grad():
        x = predict_kw["transform"](val[0])["image"][None]
        ref = torch.softmax(net.eval()(x), 1)[0].numpy()
    np.testing.assert_allclose(probs, ref, atol=2e-2)  # bf16 autocast + float16 storage


def test_scene_final_from_fold_reuses_that_folds_model(scenes, tmp_path):
    train, val = scenes
    train_kw, predict_kw = _scene_kwargs()
    predict_kw["mc_samples"] = 0
    index = cross_validate(scene_net, train, val[:1], tmp_path, num_folds=2, final_from_fold=1,
                           train_kwargs=train_kw, predict_kwargs=predict_kw)  # fmt: skip
    fold1 = torch.load(tmp_path / "fold_1" / "models" / "model.pt")
    final = torch.load(tmp_path / "final" / "models" / "model.pt")
    assert fold1.keys() == final.keys() and all(torch.equal(fold1[k], final[k]) for k in fold1)
    assert not (tmp_path / "final" / "tb").exists()  # nothing was trained for the final model
    assert json.loads((tmp_path / "folds.json").read_text())["final_from_fold"] == 1
    net = scene_net()
    net.load_state_dict(fold1)
    with torch.no_grad():
        ref = torch.softmax(net.eval()(predict_kw["transform"](val[0])["image"][None]), 1)[0].numpy()
    np.testing.assert_allclose(np.load(index[val[0]["case_id"]]["probs"]).astype(np.float32), ref, atol=2e-2)
    with pytest.raises(ValueError, match="final_from_fold"):  # before any training
        cross_validate(scene_net, train, val[:1], tmp_path / "bad", num_folds=2, final_from_fold=2,
                       train_kwargs=train_kw, predict_kwargs=predict_kw)  # fmt: skip
    assert not (tmp_path / "bad").exists()
