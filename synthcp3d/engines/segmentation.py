"""Segmenter training, whole-volume prediction and k-fold cross-validation on MONAI/ignite engines.

* :func:`train_segmenter` — MONAI ``SupervisedTrainer`` + ``SupervisedEvaluator`` with validation Dice,
  checkpoints (resumed from the newest after an interruption), TensorBoard and a progress bar.
* :func:`predict_volumes` — sliding-window inference at full volume, probabilities inverted back onto the
  input grid, saved as label + probability NIfTI in the input's geometry.
* :func:`cross_validate` — the paper's k-fold protocol (section 4.1): fold k trains on the other folds and
  predicts its held-out cases; a final model trains on all cases and predicts the test cases. Outputs land
  in the layout documented in :data:`PREDICTION_LAYOUT`, which the alarms consume.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
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
from synthcp3d.engines.checkpoints import latest_checkpoint
from synthcp3d.engines.distributed import distributed_sampler, is_main_process, unwrap, wrap_ddp
from synthcp3d.engines.inferers import AutocastInferer

__all__ = ["PREDICTION_LAYOUT", "cross_validate", "fold_split", "predict_volumes",
           "train_segmenter"]  # fmt: skip

logger = logging.getLogger(__name__)

PREDICTION_LAYOUT = """\
<out>/folds.json                      fold assignment {"seed", "num_folds", "folds": [[case ids], ...]}
<out>/fold_<k>/models/                checkpoints of fold k (model.pt = final weights)
<out>/final/models/                   the model trained on all training cases
<out>/predictions/index.json          {case_id: {"split": "cv"|"test", "fold": k|null, "image", "label"?,
                                                 "pred", "probs"}}
<out>/predictions/<case_id>/pred.nii.gz    uint8 label map on the input grid
<out>/predictions/<case_id>/probs.nii.gz   float32 class probabilities (X, Y, Z, C) on the input grid
"""


def fold_split(case_ids: Sequence[str], num_folds: int = 4, seed: int = 0) -> list[list[str]]:
    """Deterministic k-fold split: shuffle ``case_ids`` with ``seed``, then contiguous blocks.

    Returns ``num_folds`` lists of case ids (sizes differ by at most one).
    """
    if not 2 <= num_folds <= len(case_ids):
        raise ValueError(f"num_folds must be in [2, {len(case_ids)}] for {len(case_ids)} cases, got {num_folds}")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    return [[case_ids[i] for i in block] for block in np.array_split(order, num_folds)]


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
    val_interval: int = 5,
    amp_dtype: str | None = "bfloat16",
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    num_workers: int = 0,
    distributed: bool = False,
) -> dict:
    """Train ``network`` (logits ``(B, num_classes, *roi)``) with Dice+CE on label-class-balanced crops.

    ``class_ratios`` sets how often crops are centred on each class (the small tumour is seen often);
    ``class_weights`` optionally weights the classes in the cross-entropy term.

    Checkpoints go to ``out_dir/models`` every epoch (the last two kept) and on exit or interruption
    (``checkpoint_final_iteration=N.pt``); ``model.pt`` holds the final weights. With ``resume`` the
    newest checkpoint is loaded first, so training continues from the saved iteration. TensorBoard logs
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
    train_tf = ct_train_transforms(pixdim, hu_window, roi_size, num_classes, class_ratios, num_samples)
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
        val_ds = Dataset(list(val_items), ct_inference_transforms(pixdim, hu_window, with_label=True))
        val_sampler = distributed_sampler(val_ds, shuffle=False) if distributed else None
        val_handlers = [StatsHandler(iteration_log=False),
                        TensorBoardStatsHandler(log_dir=str(out_dir / "tb"), iteration_log=False)] if main else []
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
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True, weight=weight),
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
    # an exception (e.g. Ctrl-C) writes checkpoint_final.pt before the process stops.
    state = {"network": network, "optimizer": optimizer, "trainer": trainer}
    if main:
        CheckpointSaver(save_dir=str(model_dir), save_dict=state, save_interval=1, n_saved=2, save_final=True,
                        final_filename="checkpoint_final.pt").attach(trainer)  # fmt: skip
    ckpt = latest_checkpoint(model_dir) if resume else None
    if ckpt is not None:
        logger.info("resuming segmenter training from %s", ckpt)
        CheckpointLoader(load_path=str(ckpt), load_dict=state, map_location=device).attach(trainer)
    trainer.run()
    if main:
        torch.save(unwrap(network).state_dict(), model_dir / "model.pt")
    best = None if evaluator is None else float(evaluator.state.best_metric)
    return {"model": str(model_dir / "model.pt"), "iterations": int(trainer.state.iteration), "best_val_dice": best}


@torch.no_grad()
def predict_volumes(
    network: torch.nn.Module,
    items: Sequence[dict],
    out_dir: str | Path,
    *,
    roi_size: Sequence[int] = (48, 48, 32),
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    amp_dtype: str | None = "bfloat16",
    overlap: float = 0.25,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, dict]:
    """Segment whole volumes and save ``<out_dir>/<case_id>/{pred,probs}.nii.gz`` on each input's own grid.

    Probabilities ``(C, X', Y', Z')`` on the resampled grid are inverted (bilinear) onto the original grid
    with MONAI ``Invertd``, then arg-maxed, so predictions overlay their inputs in any viewer.

    Returns:
        ``{case_id: {"image", "pred", "probs"[, "label"]}}``.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    network = network.to(device).eval()
    pre = ct_inference_transforms(pixdim, hu_window, with_label=False)
    invert = mt.Invertd(keys="probs", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)
    inferer = AutocastInferer(SlidingWindowInferer(tuple(roi_size), sw_batch_size=2, overlap=overlap,
                                                   mode="gaussian"), dtype=amp_dtype)  # fmt: skip
    results = {}
    for item in tqdm(items, desc="predict", unit="case", disable=not progress):
        data = pre({"image": item["image"]})
        logits = inferer(data["image"][None].to(device), network)
        data["probs"] = torch.softmax(logits[0].float(), 0).cpu()
        data["probs"].meta = copy.deepcopy(data["image"].meta)
        data["probs"].applied_operations = copy.deepcopy(data["image"].applied_operations)
        probs = invert(data)["probs"]
        affine = np.asarray(probs.affine, dtype=np.float64)
        case_dir = Path(out_dir) / item["case_id"]
        pred = probs.argmax(0).numpy().astype(np.uint8)
        write_nifti(case_dir / "pred.nii.gz", pred, affine)
        write_nifti(case_dir / "probs.nii.gz", np.moveaxis(probs.numpy().astype(np.float32), 0, -1), affine)
        results[item["case_id"]] = {"image": item["image"], "pred": str(case_dir / "pred.nii.gz"),
                                    "probs": str(case_dir / "probs.nii.gz")}  # fmt: skip
        if "label" in item:
            results[item["case_id"]]["label"] = item["label"]
    return results


def cross_validate(
    network_factory: Callable[[], torch.nn.Module],
    train_items: Sequence[dict],
    test_items: Sequence[dict],
    out_dir: str | Path,
    *,
    num_folds: int = 4,
    fold_seed: int = 0,
    train_final: bool = True,
    train_kwargs: dict | None = None,
    predict_kwargs: dict | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, dict]:
    """Run k-fold cross-validation predictions plus a final model for the test cases.

    Args:
        network_factory: returns a fresh, untrained network per fold.
        train_items, test_items: MONAI datalists with ``case_id`` (see :func:`~synthcp3d.data.msd.msd_datalist`).
        out_dir: output root; layout in :data:`PREDICTION_LAYOUT`.
        num_folds, fold_seed: the split (recorded in ``folds.json``).
        train_final: also train on all cases and predict ``test_items``.
        train_kwargs, predict_kwargs: passed to :func:`train_segmenter` / :func:`predict_volumes`.

    Returns:
        The prediction index ``{case_id: {...}}`` also written to ``predictions/index.json``.
    """
    out_dir = Path(out_dir)
    train_kwargs, predict_kwargs = dict(train_kwargs or {}), dict(predict_kwargs or {})
    by_id = {it["case_id"]: it for it in train_items}
    folds = fold_split(sorted(by_id), num_folds, fold_seed)
    atomic_write_text(out_dir / "folds.json", json.dumps({"seed": fold_seed, "num_folds": num_folds,
                                                          "folds": folds}, indent=1))  # fmt: skip
    index: dict[str, dict] = {}
    pred_dir = out_dir / "predictions"
    for k, held in enumerate(folds):
        logger.info("fold %d/%d: training on %d cases, predicting %d", k + 1, num_folds,
                    len(by_id) - len(held), len(held))  # fmt: skip
        net = network_factory()
        train = [by_id[c] for c in sorted(by_id) if c not in held]
        val = [by_id[c] for c in held]
        train_segmenter(net, train, val, out_dir / f"fold_{k}", device=device, **train_kwargs)
        for cid, rec in predict_volumes(net, val, pred_dir, device=device, **predict_kwargs).items():
            index[cid] = {"split": "cv", "fold": k, **rec}
        atomic_write_text(pred_dir / "index.json", json.dumps(index, indent=1))
    if train_final and test_items:
        net = network_factory()
        train_segmenter(net, list(by_id.values()), None, out_dir / "final", device=device, **train_kwargs)
        for cid, rec in predict_volumes(net, test_items, pred_dir, device=device, **predict_kwargs).items():
            index[cid] = {"split": "test", "fold": None, **rec}
        atomic_write_text(pred_dir / "index.json", json.dumps(index, indent=1))
    return index
