"""The alarm path for unseen CT volumes: segment, synthesize, compare, VAE, ensemble — with the trained models
gathered in one ``models/`` folder (what the ``alarm`` bundle config and the MONAI Label app serve).

* :func:`export_models` — copy the final weights of a bundle run (:data:`MODELS_LAYOUT`).
* :func:`load_alarm_networks` — load them into the bundle's network definitions, with a clear error naming the
  command that produces a missing file.
* :func:`alarm_new_images` — one alarm-table row per image (``split`` "new"), plus the segmentation, the
  synthesized volume and the SynthCP error map as NIfTI on the input grid; with the fold segmenters in the models
  folder, also the ensemble-agreement baseline (the final and the fold models' pairwise Dice,
  :mod:`~synthcp3d.alarms.agreement`), and MSP / entropy from the segmenter's probabilities.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from synthcp3d.alarms.agreement import nifti_uncertainty, pairwise_dice_agreement
from synthcp3d.alarms.augment import synthesize_crops
from synthcp3d.alarms.comparator import predict_comparator
from synthcp3d.alarms.ensemble import mean_ensemble, weighted_ensemble
from synthcp3d.alarms.pipeline import error_row, rows_for
from synthcp3d.alarms.samples import CLASS_NAMES, build_samples, load_index
from synthcp3d.alarms.vae import predict_dice_regressor, vae_features
from synthcp3d.data.io import DataError, atomic_write_bytes, atomic_write_text, read_json, write_nifti
from synthcp3d.engines.checkpoints import load_weights
from synthcp3d.engines.precision import Precision, resolve_precision

__all__ = ["FOLD_MODEL_GLOB", "MODEL_FILES", "MODELS_LAYOUT", "ON_ERROR", "alarm_new_images", "check_alarm_input",
           "export_models", "fold_model_files", "import_predictions", "load_alarm_networks",
           "load_fold_segmenters", "pair_predictions"]  # fmt: skip

logger = logging.getLogger(__name__)

MODEL_FILES: dict[str, str] = {"segmenter": "segmenter.pt", "generator": "generator.pt", "comparator": "synthcp.pt",
                               "direct": "direct.pt", "vae": "vae.pt"}  # fmt: skip
"""Network role -> file name in the models folder (roles as the keyword arguments of :func:`alarm_new_images`)."""

# where each file comes from in a bundle run's output_dir (PREDICTION_LAYOUT, SPADE_LAYOUT, ALARM_LAYOUT)
_RUN_FILES: dict[str, str] = {"segmenter.pt": "segmenter/final/models/model.pt",
                              "generator.pt": "spade/models/generator.pt",
                              "synthcp.pt": "alarms/final/synthcp/models/model.pt",
                              "direct.pt": "alarms/final/direct/models/model.pt",
                              "vae.pt": "alarms/final/vae/models/model.pt",
                              "alarm_models.json": "alarms/alarm_models.json"}  # fmt: skip
FOLD_MODEL_GLOB = "segmenter_fold_*.pt"
"""The optional fold segmenters of the models folder, ``segmenter_fold_<k>.pt`` (from
``segmenter/fold_<k>/models/model.pt`` of the run)."""
_FOLD_FILE = re.compile(r"segmenter_fold_(\d+)\.pt")
_RUN_FOLD = re.compile(r"fold_(\d+)")
_PRODUCED_BY = {"segmenter.pt": "crossval", "generator.pt": "train_spade", "synthcp.pt": "train_comparator",
                "direct.pt": "train_comparator", "vae.pt": "train_vae", "alarm_models.json": "ensemble"}  # fmt: skip

MODELS_LAYOUT = """\
<models>/segmenter.pt        Segmenter state dict            (bundle key network_def)
<models>/segmenter_fold_<k>.pt  fold k's Segmenter, optional    (network_def; the ensemble_agreement baseline)
<models>/generator.pt        SPADEGenerator                  (spade_def)
<models>/synthcp.pt          SiameseComparator               (comparator_def)
<models>/direct.pt           DirectPredictor, optional       (direct_def)
<models>/vae.pt              ShapeVAE                        (vae_def)
<models>/alarm_models.json   VAE regressor, conformal quantiles, crop settings, review threshold
<models>/manifest.json       {"profile", "source", "created", "precision", "files", "fold_models",
                              "final_from_fold"}
"""


def _hint(name: str) -> str:
    return (
        f"produced by the bundle's {_PRODUCED_BY[name]} config, then export_models "
        "(or run `synthcp3d demo --out DIR`, which writes DIR/models)"
    )


def export_models(output_dir: str | Path, models_dir: str | Path, *, profile: str | None = None,
                  precision: Precision | str | None = "auto") -> dict:  # fmt: skip
    """Copy the final weights of a bundle run (its ``output_dir``) into ``models_dir`` (:data:`MODELS_LAYOUT`).

    Files are written atomically; the Direct Prediction model is optional, and so are the fold segmenters
    ``segmenter/fold_<k>/models/model.pt`` (copied to ``segmenter_fold_<k>.pt`` when present; absent ones are
    skipped; ``segmenter_fold_*.pt`` files of an earlier export that this run lacks are deleted, so the folder
    never mixes runs). ``precision`` (resolved for the CPU unless a
    :class:`~synthcp3d.engines.precision.Precision` is given) is recorded in the manifest, with the exported
    ``fold_models`` and the run's ``final_from_fold`` (``segmenter/folds.json``; null if absent or unset).

    Returns:
        The manifest, also written to ``<models_dir>/manifest.json``.

    Raises:
        DataError: a required file of the run is missing (naming the config that produces it).
    """
    src, dst = Path(output_dir), Path(models_dir)
    files = {}
    for name, rel in _RUN_FILES.items():
        path = src / rel
        if not path.is_file():
            if name == "direct.pt":
                continue
            raise DataError(path, f"missing: {_hint(name)}")
        atomic_write_bytes(dst / name, path.read_bytes())
        files[name] = rel
    folds = {}
    for path in (src / "segmenter").glob("fold_*/models/model.pt"):
        m = _RUN_FOLD.fullmatch(path.parent.parent.name)
        if m and path.is_file():
            folds[int(m.group(1))] = path
    for k in sorted(folds):
        name = f"segmenter_fold_{k}.pt"
        atomic_write_bytes(dst / name, folds[k].read_bytes())
        files[name] = str(folds[k].relative_to(src))
    for stale in fold_model_files(dst).values():
        if stale.name not in files:
            logger.info("deleting %s: a fold model of an earlier export that %s lacks", stale, src)
            stale.unlink()
    split = read_json(src / "segmenter" / "folds.json") if (src / "segmenter" / "folds.json").is_file() else {}
    manifest = {"profile": profile, "source": str(src.resolve()), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "precision": resolve_precision(precision).as_dict(), "files": files,
                "fold_models": [f"segmenter_fold_{k}.pt" for k in sorted(folds)],
                "final_from_fold": split.get("final_from_fold")}  # fmt: skip
    atomic_write_text(dst / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def load_alarm_networks(models_dir: str | Path, networks: Mapping[str, torch.nn.Module | None]) -> dict:
    """Load the weights of ``models_dir`` into ``networks`` (``{role: module}``, roles of :data:`MODEL_FILES`;
    a None ``direct`` stays None, a missing ``direct.pt`` too).

    Raises:
        FileNotFoundError: a weight file or ``alarm_models.json`` is missing (naming the command to run).
    """
    models_dir = Path(models_dir)
    if not (models_dir / "alarm_models.json").is_file():
        raise FileNotFoundError(f"{models_dir / 'alarm_models.json'} not found: the models folder is "
                                f"{_hint('alarm_models.json')}")  # fmt: skip
    out: dict[str, torch.nn.Module | None] = {}
    for role, net in networks.items():
        name = MODEL_FILES[role]
        if net is None or (role == "direct" and not (models_dir / name).is_file()):
            out[role] = None
            continue
        out[role] = load_weights(net, models_dir / name, hint=_hint(name))
    return out


def fold_model_files(models_dir: str | Path) -> dict[int, Path]:
    """``{k: <models_dir>/segmenter_fold_<k>.pt}`` of the fold segmenters present (:data:`FOLD_MODEL_GLOB`), by k."""
    found = {}
    for path in Path(models_dir).glob(FOLD_MODEL_GLOB):
        m = _FOLD_FILE.fullmatch(path.name)
        if m and path.is_file():
            found[int(m.group(1))] = path
    return dict(sorted(found.items()))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_fold_segmenters(models_dir: str | Path, segmenter: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """The fold segmenters of ``models_dir`` (:func:`fold_model_files`), each a ``copy.deepcopy`` of
    ``segmenter``'s architecture with that fold's weights; ``{}`` without fold models.

    A fold model whose file is byte-identical to ``segmenter.pt`` is left out: the run's final model is that fold's
    (``final_from_fold``), and a model paired with itself would agree perfectly.

    Raises:
        DataError: a fold's weights do not fit the segmenter's architecture (naming the file).
    """
    models_dir = Path(models_dir)
    final = models_dir / MODEL_FILES["segmenter"]
    final_digest = _digest(final) if final.is_file() else None
    nets = {}
    for k, path in fold_model_files(models_dir).items():
        if final_digest is not None and _digest(path) == final_digest:
            logger.info("%s is the final segmenter (final_from_fold): left out of the ensemble", path.name)
            continue
        try:
            nets[k] = load_weights(copy.deepcopy(segmenter), path)
        except RuntimeError as e:  # load_state_dict: missing / unexpected keys, shape mismatches
            raise DataError(path, f"does not fit the segmenter's architecture (network_def of the profile the "
                                  f"models were trained with?): {e}") from None  # fmt: skip
    return nets


OnError = Literal["fail", "skip"]
ON_ERROR: tuple[str, ...] = ("fail", "skip")
"""Policy for a case the alarm cannot judge (unreadable, NaN, not CT, bad prediction geometry, a crash):
``"fail"`` raises (before any case is computed when the input checks find it), ``"skip"`` writes an error row
(:func:`~synthcp3d.alarms.pipeline.error_row`: every prediction null, ``review`` True) and goes on."""

_MODALITY_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's image channel suffix: case_0000.nii.gz pairs with case.nii.gz


def pair_predictions(images: Sequence[str | Path | Mapping], predictions: Sequence[str | Path] | str | Path | None,
                     ) -> list[dict]:  # fmt: skip
    """``[{"image", "case_id", "pred"?}]``: the images, each with the label map a user brings.

    ``predictions`` is None (the bundle's segmenter will segment), a list of files in the images' order, or a
    folder holding ``<case_id>.nii.gz`` per image (nnU-Net's ``_0000`` channel suffix of an image name is
    dropped when pairing). Raises :class:`DataError`: no images, a missing or duplicated case, a count mismatch.
    """
    from synthcp3d.data.msd import case_id

    items = [dict(p) if isinstance(p, Mapping) else {"image": str(p)} for p in images]
    if not items:
        raise DataError(None, "no images to check: the image list is empty")
    items = [{**it, "image": str(it["image"]), "case_id": it.get("case_id") or case_id(it["image"])} for it in items]
    ids = [it["case_id"] for it in items]
    if len(set(ids)) != len(ids):
        raise DataError(None, f"duplicate case ids {sorted({c for c in ids if ids.count(c) > 1})}: rename the files")
    if predictions is None:
        return items
    if isinstance(predictions, (str, Path)) and Path(predictions).is_dir():
        folder = Path(predictions)
        for it in items:
            name = _MODALITY_SUFFIX.sub("", it["case_id"])
            found = [folder / f"{c}{ext}" for c in dict.fromkeys((it["case_id"], name)) for ext in (".nii.gz", ".nii")]
            hit = next((f for f in found if f.is_file()), None)
            if hit is None:
                raise DataError(folder, f"no prediction for case {it['case_id']!r} (looked for {found[0].name}"
                                        f"{' or ' + found[2].name if len(found) > 2 else ''})")  # fmt: skip
            it["pred"] = str(hit)
        return items
    preds = [predictions] if isinstance(predictions, (str, Path)) else list(predictions)
    if len(preds) != len(items):
        raise DataError(None, f"{len(items)} images but {len(preds)} predictions: give one label map per image "
                              "(same order) or a folder of <case_id>.nii.gz")  # fmt: skip
    return [{**it, "pred": str(pr)} for it, pr in zip(items, preds, strict=True)]


def check_alarm_input(item: Mapping, out_dir: str | Path, *, num_classes: int, hu_window: Sequence[float],
                      label_map: Mapping[int, int] | None = None) -> dict:  # fmt: skip
    """Check one case before the alarm judges it; returns the item, its ``"pred"`` (if any) rewritten as a clean
    label map on the image's grid at ``<out_dir>/<case_id>/pred.nii.gz``.

    The image must be a readable 3D CT in Hounsfield units (:func:`~synthcp3d.data.msd.check_ct_volume`). A
    prediction must share the image's shape, spacing, origin and direction (tolerance 1e-3 relative), hold
    integers and, after ``label_map``, only trained classes ``0..num_classes-1``
    (:func:`~synthcp3d.data.labels.remap_labels`).

    Raises:
        DataError: naming the file and the problem.
    """
    from synthcp3d.data.labels import remap_labels
    from synthcp3d.data.msd import check_pair, read_ct_image, read_volume

    read_ct_image(item["image"], hu_window=tuple(hu_window))
    if not item.get("pred"):
        return dict(item)
    check_pair(Path(item["image"]), Path(item["pred"]))
    label, affine = read_volume(item["pred"])
    label = remap_labels(np.squeeze(label), num_classes, label_map, item["pred"])
    dst = Path(out_dir) / item["case_id"] / "pred.nii.gz"
    write_nifti(dst, label.astype(np.uint8), affine)
    return {**item, "pred": str(dst), "source_pred": item["pred"]}


def alarm_new_images(
    images: Sequence[str | Path | Mapping],
    out_dir: str | Path,
    *,
    models_dir: str | Path,
    segmenter: torch.nn.Module | None,
    generator: torch.nn.Module,
    comparator: torch.nn.Module,
    vae: torch.nn.Module,
    direct: torch.nn.Module | None = None,
    predictions: Sequence[str | Path] | str | Path | None = None,
    label_map: str | Mapping[int, int] | None = None,
    on_error: OnError = "fail",
    fold_ensemble: bool = True,
    segment_roi_size: Sequence[int] = (48, 48, 32),
    synth_roi_size: Sequence[int] | None = None,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[dict]:
    """Alarm rows (``split`` "new") for unseen CT volumes, with trained networks (weights loaded, e.g. by
    :func:`load_alarm_networks`).

    Every case is checked first (:func:`check_alarm_input`). Then, case by case: the segmentation is the user's
    label map (``predictions``) or the segmenter's (:func:`~synthcp3d.engines.segmentation.predict_volumes`,
    into ``<out_dir>/predictions``); ``x̂ = G(ŷ)`` is synthesized
    (:func:`~synthcp3d.engines.spade.synthesize_volumes`, into ``<out_dir>/synth``); the comparator, Direct
    Prediction and the VAE alarm predict Dice; their ensemble gets the conformal intervals of all CV residuals.
    Crop, resampling, regressor and thresholds come from ``<models_dir>/alarm_models.json``. SynthCP error maps:
    ``<out_dir>/error_maps/<case_id>/error_map.nii.gz`` (float32 in [0, 1], the input's geometry).

    A row's ``status`` is "ok" or "error" (:data:`ON_ERROR`); ``failed_methods`` lists methods that gave no
    number, and the ensemble of a failed member is null with ``review`` True, never the other member alone.

    Baselines (:mod:`~synthcp3d.alarms.agreement`), for a case the segmenter segmented: "msp" and "entropy"
    (mean max-softmax probability / 1 - normalised entropy of its ``probs.nii.gz`` over the predicted pancreas
    and tumour; null where that region is predicted empty, which is not a failure) and, when ``models_dir``
    holds fold segmenters (``segmenter_fold_<k>.pt``, :func:`load_fold_segmenters`) and ``fold_ensemble``,
    "ensemble_agreement": the mean pairwise Dice of the final and the fold models' segmentations (each fold model
    segments the image too, into ``<out_dir>/predictions_folds/fold_<k>``: K fold models cost K more
    segmentations per image, logged). The held-out images never trained any of these models, so the ensemble is
    fair there (unlike on the CV cases, see :func:`~synthcp3d.alarms.pipeline.rows_for`). For a user's label map
    the three are null and absent (no probabilities, not our segmenters).

    Args:
        images: NIfTI CT volumes (case id = file name without extension) or datalist dicts ``{"image",
            "case_id"?}``.
        models_dir: folder with ``alarm_models.json`` (:data:`MODELS_LAYOUT`).
        segmenter, generator, comparator, vae, direct: trained networks; ``direct`` None gives null values;
            ``segmenter`` may be None when ``predictions`` are given.
        predictions: label maps from any tool, paired with the images by :func:`pair_predictions`.
        label_map: their values -> trained classes, ``"1:1,2:2,3:0"`` (:func:`~synthcp3d.data.labels.parse_label_map`).
        on_error: "fail" or "skip" (:data:`ON_ERROR`).
        fold_ensemble: run the fold segmenters of ``models_dir`` for "ensemble_agreement" (False: it is absent).
        segment_roi_size, synth_roi_size: sliding-window sizes of the segmenter and the generator (None: the
            generator synthesizes each volume in one pass).

    Returns:
        The rows, also written to ``<out_dir>/alarm_table.json``.

    Raises:
        DataError: (``on_error="fail"``) the first case that cannot be judged, naming its file; a fold model
            that does not fit the segmenter (any policy).
    """
    from tqdm.auto import tqdm

    from synthcp3d.data.labels import parse_label_map

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    out = Path(out_dir)
    settings_path = Path(models_dir) / "alarm_models.json"
    if not settings_path.is_file():
        raise FileNotFoundError(f"{settings_path} not found: the models folder is {_hint('alarm_models.json')}")
    cfg = read_json(settings_path)
    items = pair_predictions(images, predictions)
    if predictions is None and segmenter is None:
        raise ValueError("segmenter is None and no predictions were given: nothing would segment the images")
    mapping = parse_label_map(label_map)
    checked: list[dict | DataError] = []
    for it in items:  # every input is checked before any case is computed
        try:
            checked.append(check_alarm_input(it, out / "predictions", num_classes=int(cfg["num_classes"]),
                                             hu_window=cfg["hu_window"], label_map=mapping))  # fmt: skip
        except DataError as e:
            if on_error == "fail":
                raise
            checked.append(e)
    nets = {"segmenter": segmenter, "generator": generator, "comparator": comparator, "vae": vae, "direct": direct,
            "segmenter_folds": {}}  # fmt: skip
    segmented = [it["case_id"] for it, res in zip(items, checked, strict=True)
                 if not isinstance(res, DataError) and not res.get("pred")]  # fmt: skip
    if fold_ensemble and segmenter is not None and segmented:
        nets["segmenter_folds"] = load_fold_segmenters(models_dir, segmenter)
        if nets["segmenter_folds"]:
            logger.info("ensemble_agreement: %d fold segmenters (folds %s) segment each of %d images besides the final "
                        "model: %d segmentations per image instead of 1", len(nets["segmenter_folds"]),
                        sorted(nets["segmenter_folds"]), len(segmented), 1 + len(nets["segmenter_folds"]))  # fmt: skip
    run = {"amp_dtype": amp_dtype, "device": device}
    rows = []
    for it, res in tqdm(list(zip(items, checked, strict=True)), desc="alarm", unit="case", disable=not progress):
        try:
            if isinstance(res, DataError):
                raise res
            rows.append(_alarm_case(res, out, cfg, nets, segment_roi_size, synth_roi_size, run))
        except Exception as e:  # noqa: BLE001 - the policy decides; "skip" records any failure as an error row
            if on_error == "fail":
                raise
            logger.error("case %r could not be judged: %s", it["case_id"], e)
            rows.append(error_row(it["case_id"], it["image"], f"{type(e).__name__}: {e}", cfg["alpha"]))
    atomic_write_text(out / "alarm_table.json", json.dumps(rows, indent=1))
    failed = [r["case_id"] for r in rows if r["status"] != "ok" or r["failed_methods"]]
    if failed:
        logger.warning("%d of %d cases have no (complete) alarm and are flagged for review: %s", len(failed),
                       len(rows), failed)  # fmt: skip
    return rows


def _alarm_case(item: dict, out: Path, cfg: Mapping, nets: Mapping, segment_roi_size: Sequence[int],
                synth_roi_size: Sequence[int] | None, run: Mapping) -> dict:  # fmt: skip
    """The alarm row of one checked case (see :func:`alarm_new_images`)."""
    from synthcp3d.engines.segmentation import predict_volumes
    from synthcp3d.engines.spade import synthesize_volumes

    pixdim, hu, ncls = cfg["pixdim"], cfg["hu_window"], int(cfg["num_classes"])
    pred_input = cfg.get("pred_input", "probs")
    cid = item["case_id"]
    if item.get("pred"):
        if pred_input == "probs":  # a label map has no softmax: the comparator sees its one-hot instead
            logger.warning("case %r: the models were trained on softmax inputs; a label map gives one-hot", cid)
            pred_input = "onehot"
        rec = {"image": item["image"], "pred": item["pred"], "source_pred": item["source_pred"]}
    else:
        rec = predict_volumes(nets["segmenter"], [item], out / "predictions", roi_size=segment_roi_size,
                              pixdim=pixdim, hu_window=hu, progress=False, **run)[cid]  # fmt: skip
    index = {cid: {"split": "new", "fold": None, **rec}}
    synthesize_volumes(nets["generator"], index, out / "synth", roi_size=synth_roi_size, num_classes=ncls,
                       pixdim=pixdim, hu_window=hu, progress=False, **run)  # fmt: skip
    samples = build_samples(load_index(index, out / "synth", splits=("new",)), roi_size=cfg["roi_size"],
                            pixdim=pixdim, hu_window=hu, num_classes=ncls, pred_input=pred_input,
                            read_synth=not cfg.get("crop_synthesis"))  # fmt: skip
    if cfg.get("crop_synthesis"):  # the comparator was trained on x̂ = G(ŷ) of the crop: give it the same
        samples = synthesize_crops(samples, nets["generator"], num_classes=ncls, **run)
    nan = np.full((len(samples), len(CLASS_NAMES)), np.nan)
    direct = nets["direct"]
    preds = {
        "synthcp": predict_comparator(nets["comparator"], samples, error_map_dir=out / "error_maps", **run),
        "direct_prediction": nan if direct is None else predict_comparator(direct, samples, **run),
        "vae_alarm": predict_dice_regressor(cfg["regressor"], vae_features(nets["vae"],
                                                                           [s["pred_mask"] for s in samples], **run)),
    }  # fmt: skip
    preds["ensemble"] = mean_ensemble(preds["synthcp"], preds["vae_alarm"])
    w = cfg.get("ensemble_weight") or {}  # fit out-of-fold by ensemble_alarm_table; older models: the mean
    preds["ensemble_weighted"] = weighted_ensemble(preds["synthcp"], preds["vae_alarm"],
                                                   np.array([w.get(c, 0.5) for c in CLASS_NAMES]))  # fmt: skip
    undefined_ok: list[str] = []
    if not item.get("pred"):  # a user's label map has no probabilities and was not segmented by our models
        baselines, undefined_ok = _baselines(item, rec, out, nets, segment_roi_size, pixdim, hu, run)
        preds.update(baselines)
    q = np.array([np.inf if cfg["conformal_q"][c] is None else cfg["conformal_q"][c] for c in CLASS_NAMES])
    cases = {s["case_id"]: {"split": "new", "true": None, "paths": s["paths"]} for s in samples}
    row = rows_for(cases, preds, q[None], out / "error_maps", cfg["alpha"], cfg["review_threshold"],
                   absent=("direct_prediction",) if direct is None else (), undefined_ok=undefined_ok)[0]  # fmt: skip
    if item.get("source_pred"):
        row["source_pred"] = item["source_pred"]
    return row


def _baselines(item: Mapping, rec: Mapping, out: Path, nets: Mapping, segment_roi_size: Sequence[int],
               pixdim: Sequence[float], hu: Sequence[float], run: Mapping,
               ) -> tuple[dict[str, np.ndarray], list[str]]:  # fmt: skip
    """The baselines of a case the segmenter segmented (``rec``: its :func:`predict_volumes` record):
    ``({method: (1, 2)}, methods whose NaN is undefined, not failed)``. "ensemble_agreement" is left out (absent)
    without fold segmenters; a baseline that cannot be computed is NaN (a failed method) with a warning, the
    SynthCP alarm of the case stands."""
    from synthcp3d.data.msd import read_volume
    from synthcp3d.engines.segmentation import predict_volumes

    cid = item["case_id"]
    nan = np.full((1, len(CLASS_NAMES)), np.nan)
    preds: dict[str, np.ndarray] = {}
    undefined: list[str] = []
    pred = None
    try:
        pred = np.asarray(read_volume(rec["pred"])[0])
        unc = nifti_uncertainty(pred, rec["probs"])  # the segmentation read once, for agreement below too
        preds["msp"], preds["entropy"] = unc["msp"][None], unc["entropy"][None]
        undefined = ["msp", "entropy"]  # NaN = nothing predicted in the region
    except Exception as e:  # noqa: BLE001 - a baseline failing leaves the alarm of the case standing
        logger.warning("case %r: no MSP / entropy (%s: %s)", cid, type(e).__name__, e)
        preds["msp"], preds["entropy"] = nan, nan
    folds = nets.get("segmenter_folds") or {}
    if folds:
        t0 = time.perf_counter()
        try:
            if pred is None:
                raise ValueError("the final model's segmentation is unreadable")
            maps = [pred]
            for k, net in folds.items():
                fold_rec = predict_volumes(net, [dict(item)], out / "predictions_folds" / f"fold_{k}",
                                           roi_size=segment_roi_size, pixdim=pixdim, hu_window=hu, progress=False,
                                           **run)[cid]  # fmt: skip
                maps.append(np.asarray(read_volume(fold_rec["pred"])[0]))
            preds["ensemble_agreement"] = pairwise_dice_agreement(maps)[None]
            logger.info("case %r: ensemble_agreement of the final model and %d fold models (%.1f s)", cid,
                        len(folds), time.perf_counter() - t0)  # fmt: skip
        except Exception as e:  # noqa: BLE001
            logger.warning("case %r: no ensemble_agreement (%s: %s)", cid, type(e).__name__, e)
            preds["ensemble_agreement"] = nan
    return preds, undefined


def import_predictions(
    items: Sequence[Mapping],
    predictions: Sequence[str | Path] | str | Path,
    segmenter_dir: str | Path,
    *,
    num_classes: int = 3,
    hu_window: Sequence[float] = (-87.0, 199.0),
    label_map: str | Mapping[int, int] | None = None,
    folds: Sequence[Sequence[str]] | str | Path | None = None,
    num_folds: int = 4,
    seed: int = 0,
) -> dict[str, dict]:
    """Train the alarms on another tool's errors: write ``<segmenter_dir>/predictions/index.json`` (the layout
    :func:`~synthcp3d.engines.segmentation.cross_validate` writes) from images, their ground truth and that
    tool's out-of-fold label maps, so that the bundle's synthesize / train_comparator / train_vae / ensemble
    configs run on them (``segmenter_dir`` override).

    Args:
        items: datalist ``[{"image", "label"?, "case_id"?}]`` (e.g. :func:`~synthcp3d.data.msd.msd_datalist`);
            labelled cases become "cv" cases, unlabelled ones "test" cases.
        predictions: the tool's label maps, paired by :func:`pair_predictions`.
        label_map: their values -> trained classes (:func:`~synthcp3d.data.labels.parse_label_map`).
        folds: which fold predicted each labelled case: case-id lists per fold, or nnU-Net's
            ``splits_final.json`` (fold k = its ``"val"`` list); None: ``fold_split(num_folds, seed)`` (the
            alarm's out-of-fold protocol then follows these folds, not the tool's).

    Returns:
        The index (also written; label maps cleaned onto ``<segmenter_dir>/predictions/<case_id>/pred.nii.gz``).

    Raises:
        DataError: a file, its geometry or values, or a fold list that misses or repeats a labelled case.
    """
    from synthcp3d.data.labels import parse_label_map
    from synthcp3d.data.msd import check_pair
    from synthcp3d.engines.segmentation import fold_split

    paired = pair_predictions(items, predictions)
    mapping = parse_label_map(label_map)
    out = Path(segmenter_dir) / "predictions"
    labelled = [it["case_id"] for it in paired if it.get("label")]
    if isinstance(folds, (str, Path)):
        folds = [split["val"] for split in read_json(folds)]  # nnU-Net's splits_final.json
    fold_lists = [list(f) for f in folds] if folds is not None else fold_split(labelled, num_folds, seed)
    fold_of = {c: k for k, f in enumerate(fold_lists) for c in f}
    missing = sorted(set(labelled) - set(fold_of))
    repeated = sorted({c for f in fold_lists for c in f if sum(c in g for g in fold_lists) > 1})
    if missing or repeated:
        raise DataError(folds if isinstance(folds, (str, Path)) else None,
                        f"fold lists must hold every labelled case once: missing {missing[:5]}, "
                        f"repeated {repeated[:5]}")  # fmt: skip
    index = {}
    for it in paired:
        checked = check_alarm_input(it, out, num_classes=num_classes, hu_window=hu_window, label_map=mapping)
        if it.get("label"):
            check_pair(Path(it["image"]), Path(it["label"]))
        rec = {"split": "cv" if it.get("label") else "test", "fold": fold_of.get(it["case_id"]),
               "image": str(Path(it["image"]).resolve()), "pred": str(Path(checked["pred"]).resolve()),
               "source_pred": it["pred"]}  # fmt: skip
        if it.get("label"):
            rec["label"] = str(Path(it["label"]).resolve())
        index[it["case_id"]] = rec
    atomic_write_text(out / "index.json", json.dumps(index, indent=1))
    return index
