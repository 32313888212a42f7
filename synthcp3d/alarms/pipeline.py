"""The alarm table of the 3D pancreas pipeline: SynthCP, Direct Prediction, the VAE alarm, their ensemble,
split-conformal intervals and the review flag for every case (paper Sec. 4.1, Table 2).

* :func:`build_alarm_table` — trains every alarm from the segmenter's cross-validation predictions and the
  synthesized volumes, predicts the CV cases out-of-fold and the test cases with models trained on all CV
  cases, and writes ``<out>/alarm_table.json`` (layout: :data:`ALARM_LAYOUT`).
* :func:`alarm_new_images` — the path for unseen images: segment, synthesize, compare, VAE, ensemble.

Row of the table (the contract with the report writer; JSON, one per case)::

    {"case_id", "split": "cv" | "test" | "new", "image", "pred", "synth", "error_map": path | null,
     "label": path | null, "true": {"pancreas": float | null, "tumour": float | null},
     "predicted": {"direct_prediction" | "vae_alarm" | "synthcp" | "ensemble": {"pancreas", "tumour"}},
     "interval": {"pancreas": [lo, hi], "tumour": [lo, hi]}, "coverage": 1 - alpha, "review": bool}

True Dice is null without ground truth or where the region is absent from prediction and ground truth.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from synthcp3d.alarms.comparator import predict_comparator, train_comparator
from synthcp3d.alarms.ensemble import conformal_interval, conformal_quantile, mean_ensemble, review_flags
from synthcp3d.alarms.samples import CLASS_NAMES, build_samples, load_index
from synthcp3d.alarms.vae import fit_dice_regressor, predict_dice_regressor, train_shape_vae, vae_features
from synthcp3d.data.io import atomic_write_text, read_json
from synthcp3d.engines.checkpoints import load_weights

__all__ = ["ALARM_LAYOUT", "METHODS", "alarm_new_images", "build_alarm_table"]

logger = logging.getLogger(__name__)

METHODS = ("direct_prediction", "vae_alarm", "synthcp", "ensemble")

ALARM_LAYOUT = """\
<out>/fold_<k>/{synthcp,direct,vae}/models/   models trained without CV fold k (predict fold k)
<out>/final/{synthcp,direct,vae}/models/      models trained on all CV cases (predict test / new cases)
<out>/error_maps/<case_id>/error_map.nii.gz    SynthCP error probability on the input grid (float32)
<out>/alarm_models.json                        final VAE regressor, conformal quantiles, settings
<out>/alarm_table.json                         one row per case (see the module docstring)
"""


def _train_models(cv: Sequence[dict], out: Path, nets: Mapping[str, torch.nn.Module | None], kw: dict) -> dict:
    """Train fresh copies of the comparator / direct / VAE templates on ``cv`` samples under ``out``."""
    common = {k: kw[k] for k in ("amp_dtype", "device", "resume", "progress", "checkpoint_every", "seed")}
    trained: dict[str, torch.nn.Module | None] = {}
    for name in ("synthcp", "direct"):
        net = nets.get(name)
        if net is not None:
            net = copy.deepcopy(net)
            train_comparator(net, cv, out / name, iterations=kw["comparator_iterations"], lr=kw["lr"],
                             batch_size=kw["batch_size"], **common)  # fmt: skip
        trained[name] = net
    vae = copy.deepcopy(nets["vae"])
    train_shape_vae(vae, [s["label_mask"] for s in cv], out / "vae", iterations=kw["vae_iterations"],
                    lr=kw["vae_lr"], batch_size=kw["vae_batch_size"], **common)  # fmt: skip
    trained["vae"] = vae
    return trained


def _regressor(vae: torch.nn.Module, fit_on: Sequence[dict], kw: dict) -> dict:
    """VAE regressor fit on the predicted-mask features and true Dice of the labelled ``fit_on`` samples."""
    feats = vae_features(vae, [s["pred_mask"] for s in fit_on], amp_dtype=kw["amp_dtype"], device=kw["device"])
    return fit_dice_regressor(feats, np.stack([s["true"] for s in fit_on]), alpha=kw["regressor_alpha"])


def _predict(models: Mapping, params: Mapping, samples: Sequence[dict], error_dir: Path | None,
             kw: Mapping) -> dict[str, np.ndarray]:  # fmt: skip
    """Predicted Dice ``{method: (N, 2)}`` of ``samples`` (NaN for a method left out); ``params``: the VAE
    regressor. SynthCP error maps go to ``error_dir``."""
    run = {"amp_dtype": kw["amp_dtype"], "device": kw["device"]}
    out = {m: np.full((len(samples), len(CLASS_NAMES)), np.nan) for m in METHODS}
    if models.get("synthcp") is not None:
        out["synthcp"] = predict_comparator(models["synthcp"], samples, error_map_dir=error_dir, **run)
    if models.get("direct") is not None:
        out["direct_prediction"] = predict_comparator(models["direct"], samples, **run)
    out["vae_alarm"] = predict_dice_regressor(params, vae_features(models["vae"], [s["pred_mask"] for s in samples],
                                                                   **run))  # fmt: skip
    out["ensemble"] = mean_ensemble(out["synthcp"], out["vae_alarm"])
    return out


def _quantiles(residuals: np.ndarray, alpha: float) -> np.ndarray:
    """(n, 2) absolute residuals -> (2,) per-class conformal quantiles."""
    return np.array([conformal_quantile(residuals[:, k], alpha) for k in range(residuals.shape[1])])


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _rows(samples: Sequence[dict], preds: Mapping[str, np.ndarray], q: np.ndarray, error_dir: Path | None,
          alpha: float, review_threshold: float, split: str | None = None) -> list[dict]:  # fmt: skip
    """Table rows; ``q`` (N, 2) conformal quantile per case and class."""
    review = review_flags(preds["ensemble"][:, CLASS_NAMES.index("tumour")], review_threshold)
    rows = []
    for i, s in enumerate(samples):
        err = None if error_dir is None else error_dir / s["case_id"] / "error_map.nii.gz"
        interval = conformal_interval(preds["ensemble"][i], q[i])
        rows.append({
            "case_id": s["case_id"], "split": split or s["split"], "image": s["paths"]["image"],
            "pred": s["paths"]["pred"], "synth": s["paths"].get("synth"),
            "error_map": str(err) if err is not None and err.is_file() else None,
            "label": s["paths"].get("label"),
            "true": {c: _num(s["true"][k]) for k, c in enumerate(CLASS_NAMES)},
            "predicted": {m: {c: _num(preds[m][i, k]) for k, c in enumerate(CLASS_NAMES)} for m in METHODS},
            "interval": {c: [_num(v) for v in interval[k]] for k, c in enumerate(CLASS_NAMES)},
            "coverage": 1.0 - alpha, "review": bool(review[i]),
        })  # fmt: skip
    return rows


def _folds(cv: Sequence[dict], num_folds: int) -> list[list[int]]:
    """Sample indices per fold: the segmenter's CV folds from the index, else a seeded k-fold split."""
    folds = [s["fold"] for s in cv]
    if all(f is not None for f in folds) and len(set(folds)) >= 2:
        return [[i for i, f in enumerate(folds) if f == k] for k in sorted(set(folds))]
    from synthcp3d.engines.segmentation import fold_split

    ids = [s["case_id"] for s in cv]
    blocks = fold_split(ids, min(num_folds, len(ids)), seed=0)
    return [[ids.index(c) for c in block] for block in blocks]


def build_alarm_table(
    index: str | Path,
    synth_dir: str | Path,
    out_dir: str | Path,
    *,
    comparator: torch.nn.Module,
    vae: torch.nn.Module,
    direct: torch.nn.Module | None = None,
    roi_size: Sequence[int] = (64, 64, 48),
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    num_classes: int = 3,
    comparator_iterations: int = 2000,
    vae_iterations: int = 2000,
    lr: float = 1e-3,
    vae_lr: float = 1e-3,
    batch_size: int = 2,
    vae_batch_size: int = 4,
    regressor_alpha: float = 0.1,
    alpha: float = 0.1,
    review_threshold: float = 0.5,
    out_of_fold: bool = True,
    num_folds: int = 4,
    amp_dtype: str | None = "bfloat16",
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 200,
    seed: int = 0,
) -> list[dict]:
    """Train the alarms on the segmenter's CV predictions and write the alarm table for CV and test cases.

    Out-of-fold protocol (``out_of_fold=True``), so the CV rows' numbers are honest: the CV cases are split
    by the segmenter's own folds (the index's ``"fold"``; a seeded ``num_folds`` split if absent). For each
    fold k, fresh copies of ``comparator``, ``direct`` and ``vae`` are trained on the CV cases outside fold k
    (the VAE on their ground-truth masks), the VAE regressor is fit on those cases' predicted-mask features
    and true Dice, and all of them predict fold k only. The conformal quantile of a CV row in fold k uses the
    ensemble's out-of-fold residuals of the CV cases outside fold k. Test rows use models trained on all CV
    cases (``final``) and the quantile of all CV out-of-fold residuals (split conformal: coverage >= 1 - alpha
    for exchangeable cases, per class). ``out_of_fold=False`` trains only the final models and predicts CV
    cases in-sample (optimistic; for quick runs).

    Args:
        index: the segmenter's ``predictions/index.json``.
        synth_dir: folder of ``<case_id>/synth.nii.gz`` (:func:`~synthcp3d.engines.spade.synthesize_volumes`).
        out_dir: output root, layout :data:`ALARM_LAYOUT`.
        comparator: untrained :class:`~synthcp3d.networks.SiameseComparator` template (copied per fold).
        vae: untrained ``ShapeVAE(3, in_shape=roi_size, in_channels=2, include_background=True)`` template.
        direct: untrained :class:`~synthcp3d.networks.DirectPredictor` template; None leaves it out (nulls).
        roi_size, pixdim, hu_window, num_classes: the crops (:func:`~synthcp3d.alarms.samples.build_samples`).
        comparator_iterations, vae_iterations, lr, vae_lr, batch_size, vae_batch_size: training.
        regressor_alpha: ridge penalty of the VAE regressor.
        alpha: conformal miscoverage (intervals cover with probability >= 1 - alpha).
        review_threshold: flag cases whose ensemble tumour Dice is below it.

    Returns:
        The rows, also written to ``<out_dir>/alarm_table.json``.

    Raises:
        DataError: a case's file is missing or its volumes disagree in geometry.
    """
    out = Path(out_dir)
    kw = {"comparator_iterations": comparator_iterations, "vae_iterations": vae_iterations, "lr": lr,
          "vae_lr": vae_lr, "batch_size": batch_size, "vae_batch_size": vae_batch_size,
          "regressor_alpha": regressor_alpha, "amp_dtype": amp_dtype, "device": device, "resume": resume,
          "progress": progress, "checkpoint_every": checkpoint_every, "seed": seed}  # fmt: skip
    nets = {"synthcp": comparator, "direct": direct, "vae": vae}
    cases = load_index(index, synth_dir)
    samples = build_samples(cases, roi_size=roi_size, pixdim=pixdim, hu_window=hu_window, num_classes=num_classes)
    cv = [s for s in samples if s["split"] == "cv" and s["label_mask"] is not None]
    test = [s for s in samples if s["split"] != "cv" or s["label_mask"] is None]
    if len(cv) < 2:
        raise ValueError(f"need at least 2 labelled CV cases to train the alarms, got {len(cv)}")
    error_dir = out / "error_maps"
    cv_preds = {m: np.full((len(cv), len(CLASS_NAMES)), np.nan) for m in METHODS}
    fold_of = np.zeros(len(cv), dtype=int)
    final = _train_models(cv, out / "final", nets, kw)
    if out_of_fold:
        for k, held in enumerate(_folds(cv, num_folds)):
            fold_of[held] = k
            train = [s for i, s in enumerate(cv) if i not in held]
            models = _train_models(train, out / f"fold_{k}", nets, kw)
            preds = _predict(models, _regressor(models["vae"], train, kw), [cv[i] for i in held], error_dir, kw)
            for m in METHODS:
                cv_preds[m][held] = preds[m]
    params = _regressor(final["vae"], cv, kw)
    if not out_of_fold:
        cv_preds = _predict(final, params, cv, error_dir, kw)
        fold_of = np.arange(len(cv))  # each case its own "fold": quantiles leave the case out
    true = np.stack([s["true"] for s in cv])
    residuals = np.abs(cv_preds["ensemble"] - true)
    q_all = _quantiles(residuals, alpha)
    if not np.isfinite(q_all).all():
        logger.warning("%d CV cases are too few for conformal coverage %.2f: intervals are [0, 1]", len(cv), 1 - alpha)
    q_cv = np.stack([_quantiles(residuals[fold_of != fold_of[i]], alpha) for i in range(len(cv))])
    rows = _rows(cv, cv_preds, q_cv, error_dir, alpha, review_threshold)
    if test:
        test_preds = _predict(final, params, test, error_dir, kw)
        rows += _rows(test, test_preds, np.tile(q_all, (len(test), 1)), error_dir, alpha, review_threshold)
    settings = {"regressor": params, "conformal_q": {c: _num(q_all[k]) for k, c in enumerate(CLASS_NAMES)},
                "alpha": alpha, "review_threshold": review_threshold, "roi_size": list(roi_size),
                "pixdim": list(pixdim), "hu_window": list(hu_window), "num_classes": num_classes,
                "direct": direct is not None, "out_of_fold": out_of_fold, "num_cv": len(cv)}  # fmt: skip
    atomic_write_text(out / "alarm_models.json", json.dumps(settings, indent=1))
    atomic_write_text(out / "alarm_table.json", json.dumps(rows, indent=1))
    return rows


def alarm_new_images(
    images: Sequence[str | Path | Mapping],
    out_dir: str | Path,
    *,
    alarm_dir: str | Path,
    segmenter: torch.nn.Module,
    generator: torch.nn.Module,
    comparator: torch.nn.Module,
    vae: torch.nn.Module,
    direct: torch.nn.Module | None = None,
    segment_roi_size: Sequence[int] = (48, 48, 32),
    synth_roi_size: Sequence[int] = (64, 64, 32),
    amp_dtype: str | None = "bfloat16",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[dict]:
    """Alarm rows (``split`` "new") for unseen CT volumes with the models of :func:`build_alarm_table`.

    Segments each image with ``segmenter`` (:func:`~synthcp3d.engines.segmentation.predict_volumes`, into
    ``<out_dir>/predictions``), synthesizes ``x̂ = G(ŷ)`` (:func:`~synthcp3d.engines.spade.synthesize_volumes`,
    into ``<out_dir>/synth``), then predicts Dice with the final comparator, Direct Prediction and VAE alarm
    (weights and regressor read from ``alarm_dir``), ensembles them and adds the conformal intervals of all
    CV residuals. Crop, resampling and thresholds come from ``alarm_dir/alarm_models.json``. Everything runs
    under ``amp_dtype`` autocast with channels-last inputs. Error maps: ``<out_dir>/error_maps``.

    Args:
        images: NIfTI CT volumes (case id = file name without extension) or datalist dicts ``{"image",
            "case_id"?}``.
        alarm_dir: the ``out_dir`` of :func:`build_alarm_table`.
        segmenter, generator: trained networks (weights loaded by the caller).
        comparator, vae, direct: templates of the alarm networks (the final weights are loaded into copies;
            ``direct`` None gives null Direct Prediction values).
        segment_roi_size, synth_roi_size: sliding-window sizes of the segmenter and the generator.

    Returns:
        The rows, also written to ``<out_dir>/alarm_table.json``.
    """
    from synthcp3d.data.msd import case_id
    from synthcp3d.engines.segmentation import predict_volumes
    from synthcp3d.engines.spade import synthesize_volumes

    out, alarm_dir = Path(out_dir), Path(alarm_dir)
    cfg = read_json(alarm_dir / "alarm_models.json")
    pixdim, hu, ncls = cfg["pixdim"], cfg["hu_window"], int(cfg["num_classes"])
    models: dict[str, torch.nn.Module | None] = {}
    for name, net in (("synthcp", comparator), ("direct", direct), ("vae", vae)):
        models[name] = None if net is None else load_weights(
            copy.deepcopy(net), alarm_dir / "final" / name / "models" / "model.pt", hint="run build_alarm_table first"
        )  # fmt: skip
    items = [dict(p) if isinstance(p, Mapping) else {"image": str(p)} for p in images]
    items = [{"image": str(it["image"]), "case_id": it.get("case_id") or case_id(it["image"])} for it in items]
    index = predict_volumes(segmenter, items, out / "predictions", roi_size=segment_roi_size, pixdim=pixdim,
                            hu_window=hu, amp_dtype=amp_dtype, device=device, progress=progress)  # fmt: skip
    index = {cid: {"split": "new", "fold": None, **rec} for cid, rec in index.items()}
    synthesize_volumes(generator, index, out / "synth", roi_size=synth_roi_size, num_classes=ncls, pixdim=pixdim,
                       hu_window=hu, amp_dtype=amp_dtype, device=device, progress=progress)  # fmt: skip
    samples = build_samples(load_index(index, out / "synth", splits=("new",)), roi_size=cfg["roi_size"],
                            pixdim=pixdim, hu_window=hu, num_classes=ncls)  # fmt: skip
    error_dir = out / "error_maps"
    preds = _predict(models, cfg["regressor"], samples, error_dir, {"amp_dtype": amp_dtype, "device": device})
    q = np.array([np.inf if cfg["conformal_q"][c] is None else cfg["conformal_q"][c] for c in CLASS_NAMES])
    rows = _rows(samples, preds, np.tile(q, (len(samples), 1)), error_dir, cfg["alpha"], cfg["review_threshold"],
                 split="new")  # fmt: skip
    atomic_write_text(out / "alarm_table.json", json.dumps(rows, indent=1))
    return rows
