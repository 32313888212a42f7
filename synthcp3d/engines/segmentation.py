"""Segmenter training, whole-volume prediction and k-fold cross-validation on MONAI/ignite engines.

* :func:`train_segmenter` — MONAI ``SupervisedTrainer`` + ``SupervisedEvaluator`` with validation Dice,
  checkpoints (resumed from the newest after an interruption), TensorBoard and a progress bar.
* :func:`predict_volumes` — sliding-window inference at full volume, probabilities inverted back onto the
  input grid, saved as label + probability NIfTI in the input's geometry.
* :func:`cross_validate` — the paper's k-fold protocol (section 4.1): fold k trains on the other folds and
  predicts its held-out cases; a final model trains on all cases and predicts the test cases. Outputs land
  in the layout documented in :data:`PREDICTION_LAYOUT`, which the alarms consume.

The defaults are the 3D CT chains (:mod:`synthcp3d.data.transforms`, NIfTI outputs inverted onto the input
grid). 2D street scenes use the same functions with injected pieces: ``train_transform`` / ``val_transform``
(e.g. :func:`~synthcp3d.data.transforms.scene_train_transforms`), ``loss_function`` and ``ignore_index``
(255 = unlabelled pixels, left out of loss and validation Dice), ``transform`` + ``writer`` for prediction
(:func:`write_scene_prediction`: PNG labels + NumPy probabilities, :data:`SCENE_PREDICTION_LAYOUT`), and
``mc_samples`` for Monte-Carlo-dropout probabilities.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    MeanDice,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
    from_engine,
)
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss

from synthcp3d.data.io import atomic_write_text, write_nifti
from synthcp3d.data.transforms import ct_inference_transforms, ct_train_transforms
from synthcp3d.engines.checkpoints import run_checkpointed
from synthcp3d.engines.distributed import distributed_sampler, is_main_process, unwrap, wrap_ddp
from synthcp3d.engines.inferers import AutocastInferer
from synthcp3d.engines.precision import resolve_precision

__all__ = ["PREDICTION_LAYOUT", "SCENE_PREDICTION_LAYOUT", "cross_validate", "fold_split", "predict_volumes",
           "train_segmenter", "write_nifti_prediction", "write_scene_prediction"]  # fmt: skip

logger = logging.getLogger(__name__)

PREDICTION_LAYOUT = """\
<out>/folds.json                      fold assignment {"seed", "num_folds", "folds": [[case ids], ...]}
<out>/fold_<k>/models/                checkpoints of fold k (model.pt = final weights)
<out>/final/models/                   the model trained on all training cases
<out>/predictions/index.json          {case_id: {"split": "cv"|"test", "fold": k|null, "image", "label"?,
                                                 "pred", "probs"}}
<out>/predictions/<case_id>/pred.nii.gz    uint8 label map on the input grid
<out>/predictions/<case_id>/probs.nii.gz   float32 class probabilities (X, Y, Z, C) on the input grid
<out>/predictions/<case_id>/mc_probs.nii.gz  (mc_samples > 0) mean MC-dropout probabilities, same layout
"""

SCENE_PREDICTION_LAYOUT = """\
(2D scenes, writer=write_scene_prediction; folds.json, fold_<k>/, final/ and index.json as above)
<out>/predictions/<case_id>/image.png      RGB input at the working resolution (what the network saw)
<out>/predictions/<case_id>/label.png      uint8 ground-truth trainIds at the working resolution, 255 = ignore
<out>/predictions/<case_id>/pred.png       uint8 predicted trainIds
<out>/predictions/<case_id>/probs.npy      float16 softmax (C, H, W)
<out>/predictions/<case_id>/mc_probs.npy   (mc_samples > 0) float16 mean MC-dropout softmax (C, H, W)
"""


def fold_split(case_ids: Sequence[str], num_folds: int = 4, seed: int = 0, shuffle: bool = True) -> list[list[str]]:
    """Deterministic k-fold split: shuffle ``case_ids`` with ``seed``, then contiguous blocks.

    With ``shuffle=False`` the folds are contiguous blocks of ``case_ids`` as given (the official SynthCP
    Cityscapes code splits the sorted file list this way; ``seed`` is then unused).

    Returns ``num_folds`` lists of case ids (sizes differ by at most one).
    """
    if not 2 <= num_folds <= len(case_ids):
        raise ValueError(f"num_folds must be in [2, {len(case_ids)}] for {len(case_ids)} cases, got {num_folds}")
    n = len(case_ids)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return [[case_ids[i] for i in block] for block in np.array_split(order, num_folds)]


def _one_hot_ignoring(data: dict, num_classes: int, ignore_index: int) -> dict:
    """Evaluator post-processing: arg-max ``pred`` and one-hot both ``pred`` and ``label`` ``(C, *S)``, with every
    channel zero at ``ignore_index`` pixels, so MONAI's ``MeanDice`` counts labelled pixels only."""
    label = torch.as_tensor(data["label"])[0].long()
    keep = label != ignore_index
    pred = torch.as_tensor(data["pred"]).argmax(0)
    classes = torch.arange(num_classes, device=label.device).view(-1, *([1] * label.ndim))
    data = dict(data)
    data["pred"] = ((pred[None] == classes) & keep).float()
    data["label"] = ((label[None] == classes) & keep).float()
    return data


def train_segmenter(
    network: torch.nn.Module,
    train_items: Sequence[dict],
    val_items: Sequence[dict] | None,
    out_dir: str | Path,
    *,
    max_epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 2,
    num_samples: int = 2,
    roi_size: Sequence[int] = (48, 48, 32),
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    num_classes: int = 3,
    class_ratios: Sequence[float] | None = (1.0, 2.0, 3.0),
    class_weights: Sequence[float] | None = None,
    batch_dice: bool = False,
    val_interval: int = 5,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    num_workers: int = 0,
    distributed: bool = False,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
    loss_function: Callable | None = None,
    ignore_index: int | None = None,
) -> dict:
    """Train ``network`` (logits ``(B, num_classes, *roi)``) with Dice+CE on label-class-balanced crops.

    ``class_ratios`` sets how often crops are centred on each class (the small tumour is seen often);
    ``class_weights`` optionally weights the classes in the cross-entropy term. ``batch_dice`` computes the Dice
    term over the whole batch (nnU-Net's batch Dice) instead of per crop: per crop, a crop without tumour scores
    a tumour Dice of 1 only if nothing is predicted, which teaches a small model to predict no tumour at all.

    Other data (e.g. 2D scenes): ``train_transform`` maps a datalist item to ``{"image", "label"}`` training
    crops (default: :func:`~synthcp3d.data.transforms.ct_train_transforms` from the CT arguments),
    ``val_transform`` to whole ``{"image", "label"}`` images (validated by sliding windows of ``roi_size``);
    ``loss_function(logits, label)`` replaces Dice+CE; ``ignore_index`` marks unlabelled pixels, which are left
    out of the validation Dice (give the loss the same ignore, e.g. :class:`~synthcp3d.losses.DiceCEIgnoreLoss`).

    Checkpoints go to ``out_dir/models`` every epoch (the newest two kept, across runs) and at the end, on Ctrl-C /
    SIGTERM (after the current iteration) or on an exception (``checkpoint_final.pt``); ``model.pt`` holds the
    final weights. With ``resume`` the newest readable checkpoint is loaded first, so training continues from the
    saved iteration (more epochs than before train the extra ones; a checkpoint beyond ``max_epochs`` is an error
    saying how to start fresh; see :func:`~synthcp3d.engines.checkpoints.run_checkpointed`). TensorBoard logs
    go to ``out_dir/tb``. With ``distributed`` (under ``torchrun``, see
    :mod:`synthcp3d.engines.distributed`) the network is wrapped in DDP, crops are sharded across ranks
    and only rank 0 writes checkpoints and logs.

    Returns:
        ``{"model": path to model.pt, "iterations": n, "best_val_dice": float | None}``.
    """
    out_dir = Path(out_dir)
    model_dir = out_dir / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    network = network.to(device)
    model = wrap_ddp(network, device) if distributed else network
    main = is_main_process()
    train_tf = train_transform or ct_train_transforms(pixdim, hu_window, roi_size, num_classes, class_ratios,
                                                      num_samples)  # fmt: skip
    train_ds = CacheDataset(list(train_items), train_tf, progress=False)
    sampler = distributed_sampler(train_ds) if distributed else None
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=num_workers)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr)
    inferer = AutocastInferer(dtype=amp_dtype)
    handlers = [] if not main else [
        StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True), iteration_log=False),
        TensorBoardStatsHandler(log_dir=str(out_dir / "tb"), tag_name="train_loss",
                                output_transform=from_engine(["loss"], first=True)),
    ]  # fmt: skip
    evaluator = None
    if val_items:
        # every rank validates its shard with the plain (non-DDP) network, whose forward holds no collective;
        # MeanDice gathers the shards' results across ranks.
        post = mt.Compose([mt.AsDiscreted(keys=["pred", "label"], argmax=(True, False),
                                          to_onehot=(num_classes, num_classes))])  # fmt: skip
        if ignore_index is not None:
            post = mt.Lambda(partial(_one_hot_ignoring, num_classes=num_classes, ignore_index=ignore_index))
        val_ds = Dataset(list(val_items), val_transform or ct_inference_transforms(pixdim, hu_window, with_label=True))
        val_sampler = distributed_sampler(val_ds, shuffle=False) if distributed else None
        val_handlers = (
            [
                StatsHandler(iteration_log=False),
                TensorBoardStatsHandler(log_dir=str(out_dir / "tb"), iteration_log=False),
            ]
            if main
            else []
        )
        evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=DataLoader(val_ds, batch_size=1, sampler=val_sampler, num_workers=num_workers),
            network=network,
            inferer=AutocastInferer(SlidingWindowInferer(tuple(roi_size), sw_batch_size=2, overlap=0.25,
                                                         mode="gaussian"), dtype=amp_dtype),  # fmt: skip
            postprocessing=post,
            key_val_metric={"val_mean_dice": MeanDice(include_background=False,
                                                      output_transform=from_engine(["pred", "label"]))},
            val_handlers=val_handlers,
        )  # fmt: skip
        handlers.append(ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True))
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=model,
        optimizer=optimizer,
        loss_function=loss_function or DiceCELoss(to_onehot_y=True, softmax=True, weight=weight, batch=batch_dice),
        inferer=inferer,
        train_handlers=handlers,
    )
    if sampler is not None:
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: sampler.set_epoch(e.state.epoch))
    if progress and main:
        from ignite.handlers import ProgressBar

        ProgressBar(desc=f"segmenter {out_dir.name}", persist=False).attach(
            trainer, output_transform=from_engine(["loss"], first=True)
        )
    # the trainer's state is in every checkpoint, so a resumed run continues from the saved iteration;
    # Ctrl-C / SIGTERM / an exception write checkpoint_final.pt before the process stops.
    run_checkpointed(trainer, loader, {"network": network, "optimizer": optimizer, "trainer": trainer}, model_dir,
                     every=1, event="epoch", max_epochs=max_epochs, keep=2, resume=resume, write=main,
                     map_location=device, interruptible=[evaluator] if evaluator is not None else [],
                     desc=f"segmenter {out_dir.name}")  # fmt: skip
    if main:
        torch.save(unwrap(network).state_dict(), model_dir / "model.pt")
    best = None if evaluator is None else float(evaluator.state.best_metric)
    return {"model": str(model_dir / "model.pt"), "iterations": int(trainer.state.iteration), "best_val_dice": best}


def write_nifti_prediction(transform: Callable) -> Callable:
    """Writer for :func:`predict_volumes` on NIfTI volumes preprocessed by ``transform``: every output
    ``(C, X', Y', Z')`` is inverted (bilinear) onto the input's own grid with MONAI ``Invertd``; writes
    ``pred.nii.gz`` (uint8 arg-max of ``probs``) and ``<name>.nii.gz`` (float32 ``(X, Y, Z, C)``) per output."""

    def write(case_dir: Path, data: dict, outputs: dict[str, torch.Tensor]) -> dict[str, str]:
        paths = {}
        for name, out in outputs.items():
            data[name] = MetaTensor(
                torch.as_tensor(out).as_subclass(torch.Tensor),
                meta=copy.deepcopy(data["image"].meta),
                applied_operations=copy.deepcopy(data["image"].applied_operations),
            )
        inverted = mt.Invertd(keys=list(outputs), transform=transform, orig_keys="image", nearest_interp=False,
                              to_tensor=True)(data)  # fmt: skip
        for name in outputs:
            probs = inverted[name]
            affine = np.asarray(probs.affine, dtype=np.float64)
            if name == "probs":
                write_nifti(case_dir / "pred.nii.gz", probs.argmax(0).numpy().astype(np.uint8), affine)
                paths["pred"] = str(case_dir / "pred.nii.gz")
            write_nifti(case_dir / f"{name}.nii.gz", np.moveaxis(probs.numpy().astype(np.float32), 0, -1), affine)
            paths[name] = str(case_dir / f"{name}.nii.gz")
        return paths

    return write


def write_scene_prediction(case_dir: Path, data: dict, outputs: dict[str, torch.Tensor]) -> dict[str, str]:
    """Writer for :func:`predict_volumes` on 2D scenes (:data:`SCENE_PREDICTION_LAYOUT`): the network's input
    ``image.png``, ``label.png`` (if the item has a label), ``pred.png`` and ``<name>.npy`` float16 ``(C, H, W)``
    per output, all at the working resolution."""
    from synthcp3d.data.io import write_png

    paths = {}
    image = torch.as_tensor(data["image"]).float().clamp(0, 1)
    write_png(case_dir / "image.png", (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    paths["image"] = str(case_dir / "image.png")
    if data.get("label") is not None:
        write_png(case_dir / "label.png", torch.as_tensor(data["label"])[0].round().numpy().astype(np.uint8))
        paths["label"] = str(case_dir / "label.png")
    write_png(case_dir / "pred.png", outputs["probs"].argmax(0).numpy().astype(np.uint8))
    paths["pred"] = str(case_dir / "pred.png")
    for name, out in outputs.items():
        np.save(case_dir / f"{name}.npy", out.numpy().astype(np.float16))
        paths[name] = str(case_dir / f"{name}.npy")
    return paths


@torch.no_grad()
def predict_volumes(
    network: torch.nn.Module,
    items: Sequence[dict],
    out_dir: str | Path,
    *,
    roi_size: Sequence[int] = (48, 48, 32),
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    amp_dtype: str | None = "auto",
    overlap: float = 0.25,
    device: str | torch.device = "cpu",
    progress: bool = True,
    transform: Callable | None = None,
    writer: Callable | None = None,
    mc_samples: int = 0,
) -> dict[str, dict]:
    """Segment whole images and save the predictions of each item under ``<out_dir>/<case_id>/``.

    Default (3D CT): ``transform`` = :func:`~synthcp3d.data.transforms.ct_inference_transforms`, and the
    probabilities ``(C, X', Y', Z')`` on the resampled grid are inverted (bilinear) onto the original grid with
    MONAI ``Invertd``, then arg-maxed, so ``pred.nii.gz`` / ``probs.nii.gz`` overlay their inputs in any viewer.
    2D scenes: pass ``transform`` (item -> ``{"image"[, "label"]}``) and ``writer=write_scene_prediction``.

    Inference is a Gaussian-blended ``SlidingWindowInferer(roi_size)`` under ``amp_dtype`` autocast. With
    ``mc_samples > 0`` the network's ``mc_predict`` (Monte-Carlo dropout, e.g.
    :meth:`~synthcp3d.networks.Segmenter.mc_predict`) also gives the mean softmax of that many passes,
    saved as ``mc_probs``.

    Args:
        writer: ``writer(case_dir, data, {"probs": (C, *S)[, "mc_probs"]}) -> {name: path}``; default
            :func:`write_nifti_prediction` of ``transform``.

    Returns:
        ``{case_id: {"image", "pred", "probs"[, "mc_probs"][, "label"]}}`` (the writer's paths win).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    network = network.to(device).eval()
    pre = transform or ct_inference_transforms(pixdim, hu_window, with_label=False)
    writer = writer or write_nifti_prediction(pre)
    inferer = AutocastInferer(SlidingWindowInferer(tuple(roi_size), sw_batch_size=2, overlap=overlap,
                                                   mode="gaussian"), dtype=amp_dtype)  # fmt: skip
    results = {}
    for item in tqdm(items, desc="predict", unit="case", disable=not progress):
        data = pre({k: v for k, v in item.items() if transform is not None or k == "image"})
        x = torch.as_tensor(data["image"])[None].to(device)
        outputs = {"probs": torch.softmax(inferer(x, network)[0].float(), 0).cpu()}
        if mc_samples:
            outputs["mc_probs"] = inferer(x, lambda t: network.mc_predict(t, mc_samples)[0])[0].float().cpu()
        rec = {"image": item["image"], **({"label": item["label"]} if "label" in item else {})}
        rec.update(writer(Path(out_dir) / item["case_id"], data, outputs))
        results[item["case_id"]] = rec
    return results


def cross_validate(
    network_factory: Callable[[], torch.nn.Module],
    train_items: Sequence[dict],
    test_items: Sequence[dict],
    out_dir: str | Path,
    *,
    num_folds: int = 4,
    fold_seed: int = 0,
    fold_shuffle: bool = True,
    train_folds: bool = True,
    train_final: bool = True,
    final_weights: str | Path | None = None,
    final_from_fold: int | None = None,
    train_kwargs: dict | None = None,
    predict_kwargs: dict | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, dict]:
    """Run k-fold cross-validation predictions plus a final model for the test cases.

    Args:
        network_factory: returns a fresh, untrained network per fold.
        train_items, test_items: MONAI datalists with ``case_id`` (see :func:`~synthcp3d.data.msd.msd_datalist`).
        out_dir: output root; layout in :data:`PREDICTION_LAYOUT`.
        num_folds, fold_seed, fold_shuffle: the split (recorded in ``folds.json``), see :func:`fold_split`.
        train_folds: run the folds (``False``: only the final model, e.g. a second segmenter whose test
            predictions serve the generalisation test; ``folds.json`` is still written).
        train_final: also train on all cases and predict ``test_items``.
        final_weights: a ``state_dict`` file (e.g. your own segmenter): loaded as the final model instead of
            training it; ``test_items`` are predicted with it.
        final_from_fold: use fold k's model as the final model (copied to ``final/models/model.pt``) instead of
            training one more. Its test predictions then err the way the out-of-fold predictions the alarms learn
            from do (a model trained on (k-1)/k of the cases, not on all), and the CV costs one training less.
        train_kwargs, predict_kwargs: passed to :func:`train_segmenter` / :func:`predict_volumes`.

    Returns:
        The prediction index ``{case_id: {...}}`` also written to ``predictions/index.json``.
    """
    if final_from_fold is not None:
        if not train_folds or not 0 <= final_from_fold < num_folds:
            raise ValueError(f"final_from_fold={final_from_fold} needs train_folds and 0 <= k < {num_folds}")
        if final_weights:
            raise ValueError("give final_weights or final_from_fold, not both")
    out_dir = Path(out_dir)
    train_kwargs, predict_kwargs = dict(train_kwargs or {}), dict(predict_kwargs or {})
    by_id = {it["case_id"]: it for it in train_items}
    folds = fold_split(sorted(by_id), num_folds, fold_seed, fold_shuffle)
    precision = resolve_precision(train_kwargs.get("amp_dtype", "auto"), device)
    split = {"seed": fold_seed, "num_folds": num_folds, "shuffle": fold_shuffle, "folds": folds,
             "precision": precision.as_dict(), "final_from_fold": final_from_fold}  # fmt: skip
    atomic_write_text(out_dir / "folds.json", json.dumps(split, indent=1))
    index: dict[str, dict] = {}
    pred_dir = out_dir / "predictions"
    for k, held in enumerate(folds if train_folds else []):
        logger.info("fold %d/%d: training on %d cases, predicting %d", k + 1, num_folds,
                    len(by_id) - len(held), len(held))  # fmt: skip
        net = network_factory()
        train = [by_id[c] for c in sorted(by_id) if c not in held]
        val = [by_id[c] for c in held]
        train_segmenter(net, train, val, out_dir / f"fold_{k}", device=device, **train_kwargs)
        for cid, rec in predict_volumes(net, val, pred_dir, device=device, **predict_kwargs).items():
            index[cid] = {"split": "cv", "fold": k, **rec}
        atomic_write_text(pred_dir / "index.json", json.dumps(index, indent=1))
    if final_from_fold is not None:
        final_weights = out_dir / "final" / "models" / "model.pt"
        final_weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_dir / f"fold_{final_from_fold}" / "models" / "model.pt", final_weights)
    if (train_final or final_weights) and test_items:
        net = network_factory()
        if final_weights:
            from synthcp3d.engines.checkpoints import load_weights

            load_weights(net, final_weights)
        else:
            train_segmenter(net, list(by_id.values()), None, out_dir / "final", device=device, **train_kwargs)
        for cid, rec in predict_volumes(net, test_items, pred_dir, device=device, **predict_kwargs).items():
            index[cid] = {"split": "test", "fold": None, **rec}
        atomic_write_text(pred_dir / "index.json", json.dumps(index, indent=1))
    return index
