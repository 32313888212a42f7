"""The alarm table of the 3D pancreas pipeline: SynthCP, Direct Prediction, the VAE alarm, their ensemble,
split-conformal intervals and the review flag for every case (paper Sec. 4.1, Table 2).

Three stages, one bundle config each, then the report:

* :func:`train_comparator_alarms` (``train_comparator`` config) — the SynthCP comparator and the Direct
  Prediction ablation trained on the segmenter's cross-validation predictions (optionally with perturbed label
  maps, :mod:`~synthcp3d.alarms.augment`); predicts every CV case out-of-fold and the test cases with models
  trained on all CV cases; writes SynthCP error maps and ``comparator_predictions.json``.
* :func:`train_vae_alarm` (``train_vae`` config) — the shape VAE on ground-truth masks and its Dice regressor
  on predicted masks, same protocol; writes ``vae_predictions.json``.
* :func:`ensemble_alarm_table` (``ensemble`` config) — the mean of SynthCP and VAE, split-conformal intervals
  and review flags; writes ``alarm_table.json`` and ``alarm_models.json`` (what inference on new images needs,
  :mod:`~synthcp3d.alarms.inference`).

Row of the table (the contract with the report writer)::

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

from synthcp3d.alarms.augment import augment_samples, synthesize_crops
from synthcp3d.alarms.comparator import predict_comparator, train_comparator
from synthcp3d.alarms.ensemble import (
    conformal_interval,
    conformal_quantile,
    fit_ensemble_weight,
    mean_ensemble,
    review_flags,
    weighted_ensemble,
)
from synthcp3d.alarms.samples import CLASS_NAMES, build_samples, load_index
from synthcp3d.alarms.vae import fit_dice_regressor, predict_dice_regressor, train_shape_vae, vae_features
from synthcp3d.data.io import DataError, atomic_write_text, read_json
from synthcp3d.engines.precision import resolve_precision

__all__ = ["ALARM_LAYOUT", "METHODS", "ensemble_alarm_table", "error_row", "rows_for", "train_comparator_alarms",
           "train_vae_alarm"]  # fmt: skip

logger = logging.getLogger(__name__)

# The SynthCP alarms, then the label-free baselines of synthcp3d.alarms.agreement (Zenk et al., MedIA 2025):
# "ensemble_agreement" (mean pairwise Dice among the final and the fold segmenters), "msp" and "entropy" (mean
# max-softmax probability / 1 - normalised entropy over the predicted foreground; confidences, not Dice
# estimates). MSP / entropy come from the saved softmax of every row; agreement is computed for new images only
# (inference.alarm_new_images): CV and test rows of ensemble_alarm_table carry it as null ("absent"), see rows_for.
METHODS = ("direct_prediction", "vae_alarm", "synthcp", "ensemble", "ensemble_weighted", "ensemble_agreement", "msp",
           "entropy")

ALARM_LAYOUT = """\
<out>/fold_<k>/{synthcp,direct,vae}/models/   models trained without CV fold k (predict fold k)
<out>/final/{synthcp,direct,vae}/models/      models trained on all CV cases (predict test / new cases)
<out>/error_maps/<case_id>/error_map.nii.gz    SynthCP error probability on the input grid (float32)
<out>/comparator_predictions.json              SynthCP + Direct Dice per case (train_comparator stage)
<out>/vae_predictions.json                     VAE-alarm Dice per case and the final regressor (train_vae stage)
<out>/alarm_models.json                        final VAE regressor, conformal quantiles, crop settings (ensemble)
<out>/alarm_table.json                         one row per case (see the module docstring)
"""

STAGE_FILES = {"comparator": "comparator_predictions.json", "vae": "vae_predictions.json"}


def _samples(index, synth_dir, crop: Mapping, read_synth: bool = True) -> tuple[list[dict], list[dict]]:
    """(labelled CV samples, test / unlabelled samples) of the prediction index."""
    cases = load_index(index, synth_dir)
    samples = build_samples(cases, **crop, read_synth=read_synth)
    cv = [s for s in samples if s["split"] == "cv" and s["label_mask"] is not None]
    test = [s for s in samples if s["split"] != "cv" or s["label_mask"] is None]
    if len(cv) < 2:
        raise ValueError(f"need at least 2 labelled CV cases to train the alarms, got {len(cv)}")
    return cv, test


def _groups(cv: Sequence[dict], num_folds: int, out_of_fold: bool) -> list[list[int]]:
    """Sample indices per out-of-fold group: the segmenter's CV folds from the index (a seeded ``num_folds``
    split if absent); without ``out_of_fold`` every case is its own group (for leave-one-out quantiles)."""
    if not out_of_fold:
        return [[i] for i in range(len(cv))]
    folds = [s["fold"] for s in cv]
    if all(f is not None for f in folds) and len(set(folds)) >= 2:
        return [[i for i, f in enumerate(folds) if f == k] for k in sorted(set(folds))]
    from synthcp3d.engines.segmentation import fold_split

    ids = [s["case_id"] for s in cv]
    blocks = fold_split(ids, min(num_folds, len(ids)), seed=0)
    return [[ids.index(c) for c in block] for block in blocks]


def _stage_protocol(cv: Sequence[dict], test: Sequence[dict], groups: list[list[int]], out_of_fold: bool,
                    train_and_predict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], object]:  # fmt: skip
    """Out-of-fold protocol shared by the stages. ``train_and_predict(train, predict, tag)`` trains on ``train``
    under ``tag`` ("fold_k" / "final") and returns ``({method: (len(predict), 2)}, extra)``.

    Returns ``(cv predictions, test predictions, extra of the final models)``.
    """
    final_targets = list(test) if out_of_fold else [*cv, *test]
    final, extra = train_and_predict(list(cv), final_targets, "final")
    cv_preds = {m: np.full((len(cv), len(CLASS_NAMES)), np.nan) for m in final}
    if out_of_fold:
        for k, held in enumerate(groups):
            train = [s for i, s in enumerate(cv) if i not in held]
            preds, _ = train_and_predict(train, [cv[i] for i in held], f"fold_{k}")
            for m in preds:
                cv_preds[m][held] = preds[m]
        test_preds = final
    else:
        cv_preds = {m: v[: len(cv)] for m, v in final.items()}
        test_preds = {m: v[len(cv) :] for m, v in final.items()}
    return cv_preds, test_preds, extra


def _write_stage(path: Path, stage: str, cv: Sequence[dict], test: Sequence[dict], groups: list[list[int]],
                 cv_preds: Mapping, test_preds: Mapping, settings: Mapping) -> dict:  # fmt: skip
    group_of = {i: k for k, g in enumerate(groups) for i in g}
    cases = {}
    for preds, samples, is_cv in ((cv_preds, cv, True), (test_preds, test, False)):
        for i, s in enumerate(samples):
            cases[s["case_id"]] = {
                "split": s["split"], "group": group_of[i] if is_cv else None,
                "true": [_num(v) for v in s["true"]], "paths": {k: str(v) for k, v in s["paths"].items()},
                "predicted": {m: [_num(v) for v in preds[m][i]] for m in preds},
            }  # fmt: skip
    doc = {"stage": stage, "classes": list(CLASS_NAMES), "settings": dict(settings), "cases": cases}
    atomic_write_text(path, json.dumps(doc, indent=1))
    return doc


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def train_comparator_alarms(
    index: str | Path,
    synth_dir: str | Path,
    out_dir: str | Path,
    *,
    comparator: torch.nn.Module,
    direct: torch.nn.Module | None = None,
    generator: torch.nn.Module | None = None,
    roi_size: Sequence[int] = (64, 64, 48),
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    num_classes: int = 3,
    pred_input: str = "onehot",
    augment_per_case: int = 0,
    iterations: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 2,
    out_of_fold: bool = True,
    num_folds: int = 4,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 200,
    seed: int = 0,
) -> dict:
    """Train SynthCP's comparator (and Direct Prediction) on the CV predictions; predict every case.

    Out-of-fold protocol (``out_of_fold=True``), so the CV numbers are honest: the CV cases are split by the
    segmenter's own folds (the index's ``"fold"``; a seeded ``num_folds`` split if absent); for each fold k,
    fresh copies of ``comparator`` / ``direct`` are trained on the CV cases outside fold k and predict fold k.
    Test cases are predicted by copies trained on all CV cases (``final``). ``out_of_fold=False`` trains only
    the final models and predicts CV cases in-sample (optimistic; quick runs).

    Args:
        index: the segmenter's ``predictions/index.json``.
        synth_dir: folder of ``<case_id>/synth.nii.gz`` (:func:`~synthcp3d.engines.spade.synthesize_volumes`).
        out_dir: output root, layout :data:`ALARM_LAYOUT`.
        comparator: untrained :class:`~synthcp3d.networks.SiameseComparator` template (copied per fold).
        direct: untrained :class:`~synthcp3d.networks.DirectPredictor` template; None leaves it out (nulls).
        generator: the trained SPADE generator; needed only for ``augment_per_case > 0``.
        roi_size, pixdim, hu_window, num_classes, pred_input: the crops
            (:func:`~synthcp3d.alarms.samples.build_samples`); ``pred_input`` "onehot" (the paper's ŷ) or "probs".
        augment_per_case: perturbed label maps per training case (:func:`~synthcp3d.alarms.augment.augment_samples`),
            synthesized with ``generator``; 0 trains on the CV predictions alone.
        iterations, lr, batch_size: training of each model.

    Returns:
        The document written to ``<out_dir>/comparator_predictions.json``.

    Raises:
        DataError: a case's file is missing or its volumes disagree in geometry.
    """
    if augment_per_case > 0 and generator is None:
        raise ValueError("augment_per_case > 0 needs the trained SPADE generator (generator=...)")
    out = Path(out_dir)
    crop = {"roi_size": [int(r) for r in roi_size], "pixdim": [float(p) for p in pixdim],
            "hu_window": [float(h) for h in hu_window], "num_classes": int(num_classes),
            "pred_input": pred_input}  # fmt: skip
    cv, test = _samples(index, synth_dir, crop, read_synth=generator is None)
    run = {"amp_dtype": amp_dtype, "device": device}
    if generator is not None:  # one synthesis path for real, perturbed and new samples (augment.synthesize_crops)
        cv, test = (synthesize_crops(s, generator, num_classes=num_classes, **run) for s in (cv, test))
    groups = _groups(cv, num_folds, out_of_fold)
    common = {"amp_dtype": amp_dtype, "device": device, "resume": resume, "progress": progress,
              "checkpoint_every": checkpoint_every, "seed": seed}  # fmt: skip
    nets = {"synthcp": comparator, "direct": direct}
    # every CV case's perturbed copies are drawn and synthesized once; a fold trains on the copies of its own
    # training cases only (so no held-out case leaks in), and the final models on all of them. Synthesizing per
    # fold instead did the same work 3 times over (each case trains in k-1 folds and the final model).
    augmented: dict[str, list[dict]] = {}
    if augment_per_case > 0:
        for a in augment_samples(cv, generator, per_case=augment_per_case, num_classes=num_classes, seed=seed,
                                 **run):  # fmt: skip
            augmented.setdefault(a["case_id"], []).append(a)

    def train_and_predict(train: list[dict], targets: list[dict], tag: str):
        train = train + [a for s in train for a in augmented.get(s["case_id"], [])]
        preds = {}
        for name, method in (("synthcp", "synthcp"), ("direct", "direct_prediction")):
            if nets[name] is None:
                preds[method] = np.full((len(targets), len(CLASS_NAMES)), np.nan)
                continue
            net = copy.deepcopy(nets[name])
            train_comparator(net, train, out / tag / name, iterations=iterations, lr=lr, batch_size=batch_size,
                             **common)  # fmt: skip
            error_dir = out / "error_maps" if name == "synthcp" else None
            preds[method] = predict_comparator(net, targets, error_map_dir=error_dir, **run) if targets else \
                np.zeros((0, len(CLASS_NAMES)))  # fmt: skip
        return preds, None

    cv_preds, test_preds, _ = _stage_protocol(cv, test, groups, out_of_fold, train_and_predict)
    settings = {**crop, "precision": resolve_precision(amp_dtype, device).as_dict(),
                "direct": direct is not None, "out_of_fold": out_of_fold, "crop_synthesis": generator is not None,
                "augment_per_case": augment_per_case, "iterations": iterations}  # fmt: skip
    return _write_stage(out / STAGE_FILES["comparator"], "comparator", cv, test, groups, cv_preds, test_preds,
                        settings)  # fmt: skip


def train_vae_alarm(
    index: str | Path,
    out_dir: str | Path,
    *,
    vae: torch.nn.Module,
    roi_size: Sequence[int] = (64, 64, 48),
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    num_classes: int = 3,
    iterations: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 4,
    regressor_alpha: float = 0.1,
    out_of_fold: bool = True,
    num_folds: int = 4,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 200,
    seed: int = 0,
) -> dict:
    """The VAE alarm of Liu et al.: a shape VAE trained on the ground-truth masks of the CV cases, and a ridge
    regressor from its features of the *predicted* masks (:func:`~synthcp3d.alarms.vae.vae_features`) to the true
    Dice, fit on the same cases. Same out-of-fold protocol as :func:`train_comparator_alarms`.

    Args:
        vae: untrained ``ShapeVAE(3, in_shape=roi_size, in_channels=2, include_background=True)`` template.
        regressor_alpha: ridge penalty of the regressor.
        Others: as :func:`train_comparator_alarms`.

    Returns:
        The document written to ``<out_dir>/vae_predictions.json`` (its ``"regressor"``: the final one).
    """
    out = Path(out_dir)
    crop = {"roi_size": [int(r) for r in roi_size], "pixdim": [float(p) for p in pixdim],
            "hu_window": [float(h) for h in hu_window], "num_classes": int(num_classes)}  # fmt: skip
    # the VAE sees the label maps only: no probability maps read (another tool's predictions have none)
    cv, test = _samples(index, None, {**crop, "pred_input": "onehot"})
    groups = _groups(cv, num_folds, out_of_fold)
    run = {"amp_dtype": amp_dtype, "device": device}

    def train_and_predict(train: list[dict], targets: list[dict], tag: str):
        net = copy.deepcopy(vae)
        train_shape_vae(net, [s["label_mask"] for s in train], out / tag / "vae", iterations=iterations, lr=lr,
                        batch_size=batch_size, resume=resume, progress=progress, checkpoint_every=checkpoint_every,
                        seed=seed, **run)  # fmt: skip
        feats = vae_features(net, [s["pred_mask"] for s in train], **run)
        params = fit_dice_regressor(feats, np.stack([s["true"] for s in train]), alpha=regressor_alpha)
        pred = np.zeros((0, len(CLASS_NAMES)))
        if targets:
            pred = predict_dice_regressor(params, vae_features(net, [s["pred_mask"] for s in targets], **run))
        return {"vae_alarm": pred}, params

    cv_preds, test_preds, params = _stage_protocol(cv, test, groups, out_of_fold, train_and_predict)
    settings = {**crop, "precision": resolve_precision(amp_dtype, device).as_dict(), "out_of_fold": out_of_fold,
                "iterations": iterations, "regressor": params}  # fmt: skip
    return _write_stage(out / STAGE_FILES["vae"], "vae", cv, test, groups, cv_preds, test_preds, settings)


def _read_stage(out: Path, stage: str) -> dict:
    path = out / STAGE_FILES[stage]
    if not path.is_file():
        config = {"comparator": "train_comparator", "vae": "train_vae"}[stage]
        raise DataError(path, f"missing: run the {config} config first")
    return read_json(path)


def rows_for(
    cases: Mapping[str, Mapping],
    preds: Mapping[str, np.ndarray],
    q: np.ndarray,
    error_dir: Path | None,
    alpha: float,
    review_threshold: float,
    absent: Sequence[str] = (),
    undefined_ok: Sequence[str] = (),
) -> list[dict]:
    """Alarm-table rows of ``cases`` (``{case_id: {"split", "true", "paths"}}``, in order) from the per-method
    predictions ``{method: (N, 2)}`` (``"ensemble"`` included) and the per-case conformal quantiles ``q`` (N, 2).

    Every method of :data:`METHODS` is in a row's ``predicted``; a method without an entry in ``preds`` is null
    there and counts as absent. ``failed_methods`` of a row lists the methods, other than the ``absent`` ones
    (not run at all, e.g. no Direct Prediction model) and those missing from ``preds``, that gave no finite
    number for it; for the ``undefined_ok`` ones a NaN is an undefined value, not a failure (MSP / entropy over
    an empty predicted region).

    "ensemble_agreement" is not in the ``preds`` of :func:`ensemble_alarm_table`, so its CV and test rows carry it
    as null: on the out-of-fold CV cases the fold segmenters are NOT a fair ensemble (every fold model but the
    case's own was trained on that case, so they would agree on it too well); agreement is computed for new images
    only (:func:`~synthcp3d.alarms.inference.alarm_new_images`). MSP / entropy of the saved out-of-fold
    ``probs.nii.gz`` are fair and computed for every row."""
    review = review_flags(preds["ensemble"][:, CLASS_NAMES.index("tumour")], review_threshold)
    required = [m for m in METHODS if m not in absent and m in preds]
    nulls = {n: None for n in CLASS_NAMES}
    rows = []
    for i, (cid, c) in enumerate(cases.items()):
        err = None if error_dir is None else error_dir / cid / "error_map.nii.gz"
        interval = conformal_interval(preds["ensemble"][i], q[i])
        true = c.get("true") or [None] * len(CLASS_NAMES)
        rows.append({
            "case_id": cid, "split": c["split"], "image": c["paths"]["image"], "pred": c["paths"]["pred"],
            "synth": c["paths"].get("synth"), "error_map": str(err) if err is not None and err.is_file() else None,
            "label": c["paths"].get("label"),
            "true": {n: _num(true[k]) for k, n in enumerate(CLASS_NAMES)},
            "predicted": {m: {n: _num(preds[m][i, k]) for k, n in enumerate(CLASS_NAMES)} if m in preds
                          else dict(nulls) for m in METHODS},
            "interval": {n: [_num(v) for v in interval[k]] for k, n in enumerate(CLASS_NAMES)},
            "coverage": 1.0 - alpha, "review": bool(review[i]),
            "status": "ok", "error": None,
            "failed_methods": [m for m in required if m not in undefined_ok and not np.isfinite(preds[m][i]).all()],
        })  # fmt: skip
    return rows


def error_row(case_id: str, image: str | None, error: str, alpha: float, split: str = "new") -> dict:
    """The alarm-table row of a case that could not be judged (``status`` "error", every prediction null,
    ``review`` True): what ``on_error="skip"`` writes instead of a number."""
    nulls = {n: None for n in CLASS_NAMES}
    return {"case_id": case_id, "split": split, "image": image, "pred": None, "synth": None, "error_map": None,
            "label": None, "true": dict(nulls), "predicted": {m: dict(nulls) for m in METHODS},
            "interval": {n: [None, None] for n in CLASS_NAMES}, "coverage": 1.0 - alpha, "review": True,
            "status": "error", "error": error, "failed_methods": list(METHODS)}  # fmt: skip


def _saved_uncertainty(paths: Mapping[str, str]) -> dict[str, np.ndarray]:
    """MSP / entropy confidences (2,) of a case's saved ``pred`` and ``probs``; NaN without a readable softmax."""
    from synthcp3d.alarms.agreement import nifti_uncertainty

    nan = {"msp": np.full(len(CLASS_NAMES), np.nan), "entropy": np.full(len(CLASS_NAMES), np.nan)}
    if not paths.get("probs"):
        return nan
    try:
        return nifti_uncertainty(paths["pred"], paths["probs"])
    except (DataError, ValueError) as e:
        logger.warning("%s: no MSP / entropy (%s)", paths["probs"], e)
        return nan


def _quantiles(residuals: np.ndarray, alpha: float) -> np.ndarray:
    """(n, 2) absolute residuals -> (2,) per-class conformal quantiles."""
    return np.array([conformal_quantile(residuals[:, k], alpha) for k in range(residuals.shape[1])])


def _matrix(doc: Mapping, ids: Sequence[str], method: str) -> np.ndarray:
    vals = [doc["cases"][c]["predicted"].get(method) for c in ids]
    return np.array([[np.nan if x is None else x for x in (v or [None] * len(CLASS_NAMES))] for v in vals],
                    dtype=np.float64).reshape(len(ids), len(CLASS_NAMES))  # fmt: skip


def ensemble_alarm_table(out_dir: str | Path, *, alpha: float = 0.1, review_threshold: float = 0.5) -> list[dict]:
    """Combine the two training stages' predictions into the alarm table.

    Ensemble = mean of SynthCP and VAE-alarm Dice (the paper's "simple ensemble", the headline that carries the
    intervals and the review flag). Beside it, ``ensemble_weighted`` = ``w * SynthCP + (1 - w) * VAE alarm`` per
    class, ``w`` on a grid in [0, 1] fit out-of-fold (:func:`~synthcp3d.alarms.ensemble.fit_ensemble_weight`: a CV
    case's weight from the other folds' cases, test rows' and new images' from all CV cases; ``ensemble_weight``
    in ``alarm_models.json``); with ~20 cases one member is often far better than the other. Split-conformal intervals:
    a CV row's quantile uses the ensemble's out-of-fold residuals of the CV cases outside its fold; test rows
    use all CV residuals (coverage >= 1 - alpha for exchangeable cases, per class).

    Args:
        out_dir: the alarms folder holding ``comparator_predictions.json`` and ``vae_predictions.json``.
        alpha: conformal miscoverage (intervals cover with probability >= 1 - alpha).
        review_threshold: flag cases whose ensemble tumour Dice is below it.

    Returns:
        The rows, also written to ``<out_dir>/alarm_table.json``; ``alarm_models.json`` gets what inference on
        new images needs (regressor, conformal quantiles, crop settings, threshold).

    Raises:
        DataError: a stage's file is missing, or the two stages saw different cases or folds.
    """
    out = Path(out_dir)
    comp, vae = _read_stage(out, "comparator"), _read_stage(out, "vae")
    if set(comp["cases"]) != set(vae["cases"]):
        raise DataError(out, f"train_comparator and train_vae saw different cases: "
                             f"{sorted(set(comp['cases']) ^ set(vae['cases']))}; re-run both on one index")  # fmt: skip
    crop_keys = ("roi_size", "pixdim", "hu_window", "num_classes")
    if any(comp["settings"][k] != vae["settings"][k] for k in crop_keys):
        raise DataError(out, "train_comparator and train_vae used different crops: "
                             f"{[(k, comp['settings'][k], vae['settings'][k]) for k in crop_keys]}")  # fmt: skip
    ids = [c for c in comp["cases"] if comp["cases"][c]["split"] == "cv"]
    ids += [c for c in comp["cases"] if comp["cases"][c]["split"] != "cv"]
    group = np.array([-1 if comp["cases"][c]["group"] is None else comp["cases"][c]["group"] for c in ids])
    if any(comp["cases"][c]["group"] != vae["cases"][c]["group"] for c in ids):
        raise DataError(out, "train_comparator and train_vae used different folds — re-run both")
    preds = {"synthcp": _matrix(comp, ids, "synthcp"), "direct_prediction": _matrix(comp, ids, "direct_prediction"),
             "vae_alarm": _matrix(vae, ids, "vae_alarm")}  # fmt: skip
    is_cv = group >= 0
    true = np.array([[np.nan if v is None else v for v in comp["cases"][c]["true"]] for c in ids], dtype=np.float64)
    # the members' weight per class, chosen on out-of-fold predictions: for a CV case on the other folds' cases
    # only, for test and new images on all CV cases
    w_all = fit_ensemble_weight(preds["synthcp"][is_cv], preds["vae_alarm"][is_cv], true[is_cv])
    weights = np.tile(w_all, (len(ids), 1))
    for g in np.unique(group[is_cv]):
        other = is_cv & (group != g)
        weights[group == g] = fit_ensemble_weight(preds["synthcp"][other], preds["vae_alarm"][other], true[other])
    preds["ensemble"] = mean_ensemble(preds["synthcp"], preds["vae_alarm"])
    preds["ensemble_weighted"] = weighted_ensemble(preds["synthcp"], preds["vae_alarm"], weights)
    # MSP / entropy of the segmenter's own softmax: out-of-fold for CV cases, so fair here (unlike agreement)
    unc = [_saved_uncertainty(comp["cases"][c]["paths"]) for c in ids]
    for m in ("msp", "entropy"):
        preds[m] = np.array([u[m] for u in unc], dtype=np.float64).reshape(len(ids), len(CLASS_NAMES))
    residuals = np.abs(preds["ensemble"][is_cv] - true[is_cv])
    q_all = _quantiles(residuals, alpha)
    if not np.isfinite(q_all).all():
        logger.warning("%d CV cases are too few for conformal coverage %.2f: intervals are [0, 1]", is_cv.sum(),
                       1 - alpha)  # fmt: skip
    cv_group = group[is_cv]
    q = np.tile(q_all, (len(ids), 1))
    for i in np.flatnonzero(is_cv):
        q[i] = _quantiles(residuals[cv_group != group[i]], alpha)
    rows = rows_for({c: comp["cases"][c] for c in ids}, preds, q, out / "error_maps", alpha, review_threshold,
                    absent=() if comp["settings"]["direct"] else ("direct_prediction",),
                    undefined_ok=("msp", "entropy"))  # fmt: skip
    settings = {**{k: comp["settings"][k] for k in (*crop_keys, "pred_input")},
                "regressor": vae["settings"]["regressor"],
                "conformal_q": {n: _num(q_all[k]) for k, n in enumerate(CLASS_NAMES)}, "alpha": alpha,
                "ensemble_weight": {n: float(w_all[k]) for k, n in enumerate(CLASS_NAMES)},
                "review_threshold": review_threshold, "direct": comp["settings"]["direct"],
                "out_of_fold": comp["settings"]["out_of_fold"], "num_cv": int(is_cv.sum()),
                "crop_synthesis": bool(comp["settings"].get("crop_synthesis", False))}  # fmt: skip
    atomic_write_text(out / "alarm_models.json", json.dumps(settings, indent=1))
    atomic_write_text(out / "alarm_table.json", json.dumps(rows, indent=1))
    return rows
