"""The alarm path for unseen CT volumes: segment, synthesize, compare, VAE, ensemble — with the trained models
gathered in one ``models/`` folder (what the ``alarm`` bundle config and the MONAI Label app serve).

* :func:`export_models` — copy the final weights of a bundle run (:data:`MODELS_LAYOUT`).
* :func:`load_alarm_networks` — load them into the bundle's network definitions, with a clear error naming the
  command that produces a missing file.
* :func:`alarm_new_images` — one alarm-table row per image (``split`` "new"), plus the segmentation, the
  synthesized volume and the SynthCP error map as NIfTI on the input grid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from synthcp3d.alarms.augment import synthesize_crops
from synthcp3d.alarms.comparator import predict_comparator
from synthcp3d.alarms.ensemble import mean_ensemble
from synthcp3d.alarms.pipeline import rows_for
from synthcp3d.alarms.samples import CLASS_NAMES, build_samples, load_index
from synthcp3d.alarms.vae import predict_dice_regressor, vae_features
from synthcp3d.data.io import DataError, atomic_write_bytes, atomic_write_text, read_json
from synthcp3d.engines.checkpoints import load_weights
from synthcp3d.engines.precision import Precision, resolve_precision

__all__ = ["MODEL_FILES", "MODELS_LAYOUT", "alarm_new_images", "export_models", "load_alarm_networks"]

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
_PRODUCED_BY = {"segmenter.pt": "crossval", "generator.pt": "train_spade", "synthcp.pt": "train_comparator",
                "direct.pt": "train_comparator", "vae.pt": "train_vae", "alarm_models.json": "ensemble"}  # fmt: skip

MODELS_LAYOUT = """\
<models>/segmenter.pt        Segmenter state dict            (bundle key network_def)
<models>/generator.pt        SPADEGenerator                  (spade_def)
<models>/synthcp.pt          SiameseComparator               (comparator_def)
<models>/direct.pt           DirectPredictor, optional       (direct_def)
<models>/vae.pt              ShapeVAE                        (vae_def)
<models>/alarm_models.json   VAE regressor, conformal quantiles, crop settings, review threshold
<models>/manifest.json       {"profile", "source", "created", "files"}
"""


def _hint(name: str) -> str:
    return (
        f"produced by the bundle's {_PRODUCED_BY[name]} config, then export_models "
        "(or run `synthcp3d demo --out DIR`, which writes DIR/models)"
    )


def export_models(output_dir: str | Path, models_dir: str | Path, *, profile: str | None = None,
                  precision: Precision | str | None = "auto") -> dict:  # fmt: skip
    """Copy the final weights of a bundle run (its ``output_dir``) into ``models_dir`` (:data:`MODELS_LAYOUT`).

    Files are written atomically; the Direct Prediction model is optional. ``precision`` (resolved for the CPU
    unless a :class:`~synthcp3d.engines.precision.Precision` is given) is recorded in the manifest.

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
    manifest = {"profile": profile, "source": str(src.resolve()), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "precision": resolve_precision(precision).as_dict(), "files": files}  # fmt: skip
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


def alarm_new_images(
    images: Sequence[str | Path | Mapping],
    out_dir: str | Path,
    *,
    models_dir: str | Path,
    segmenter: torch.nn.Module,
    generator: torch.nn.Module,
    comparator: torch.nn.Module,
    vae: torch.nn.Module,
    direct: torch.nn.Module | None = None,
    segment_roi_size: Sequence[int] = (48, 48, 32),
    synth_roi_size: Sequence[int] | None = None,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[dict]:
    """Alarm rows (``split`` "new") for unseen CT volumes, with trained networks (weights loaded, e.g. by
    :func:`load_alarm_networks`).

    Segments each image (:func:`~synthcp3d.engines.segmentation.predict_volumes`, into
    ``<out_dir>/predictions``), synthesizes ``x̂ = G(ŷ)`` (:func:`~synthcp3d.engines.spade.synthesize_volumes`,
    into ``<out_dir>/synth``), predicts Dice with the comparator, Direct Prediction and the VAE alarm, ensembles
    them and adds the conformal intervals of all CV residuals. Crop, resampling, regressor and thresholds come
    from ``<models_dir>/alarm_models.json``. Everything runs under ``amp_dtype`` autocast with channels-last
    inputs. SynthCP error maps: ``<out_dir>/error_maps/<case_id>/error_map.nii.gz`` (float32 in [0, 1], the
    input's geometry).

    Args:
        images: NIfTI CT volumes (case id = file name without extension) or datalist dicts ``{"image",
            "case_id"?}``.
        models_dir: folder with ``alarm_models.json`` (:data:`MODELS_LAYOUT`).
        segmenter, generator, comparator, vae, direct: trained networks; ``direct`` None gives null values.
        segment_roi_size, synth_roi_size: sliding-window sizes of the segmenter and the generator (None: the
            generator synthesizes each volume in one pass).

    Returns:
        The rows, also written to ``<out_dir>/alarm_table.json``.
    """
    from synthcp3d.data.msd import case_id
    from synthcp3d.engines.segmentation import predict_volumes
    from synthcp3d.engines.spade import synthesize_volumes

    out = Path(out_dir)
    settings_path = Path(models_dir) / "alarm_models.json"
    if not settings_path.is_file():
        raise FileNotFoundError(f"{settings_path} not found: the models folder is {_hint('alarm_models.json')}")
    cfg = read_json(settings_path)
    pixdim, hu, ncls = cfg["pixdim"], cfg["hu_window"], int(cfg["num_classes"])
    items = [dict(p) if isinstance(p, Mapping) else {"image": str(p)} for p in images]
    items = [{"image": str(it["image"]), "case_id": it.get("case_id") or case_id(it["image"])} for it in items]
    for it in items:
        if not Path(it["image"]).is_file():
            raise DataError(it["image"], f"case {it['case_id']!r}: image not found")
    index = predict_volumes(segmenter, items, out / "predictions", roi_size=segment_roi_size, pixdim=pixdim,
                            hu_window=hu, amp_dtype=amp_dtype, device=device, progress=progress)  # fmt: skip
    index = {cid: {"split": "new", "fold": None, **rec} for cid, rec in index.items()}
    synthesize_volumes(generator, index, out / "synth", roi_size=synth_roi_size, num_classes=ncls, pixdim=pixdim,
                       hu_window=hu, amp_dtype=amp_dtype, device=device, progress=progress)  # fmt: skip
    samples = build_samples(load_index(index, out / "synth", splits=("new",)), roi_size=cfg["roi_size"],
                            pixdim=pixdim, hu_window=hu, num_classes=ncls,
                            pred_input=cfg.get("pred_input", "probs"),
                            read_synth=not cfg.get("crop_synthesis"))  # fmt: skip
    run = {"amp_dtype": amp_dtype, "device": device}
    if cfg.get("crop_synthesis"):  # the comparator was trained on x̂ = G(ŷ) of the crop: give it the same
        samples = synthesize_crops(samples, generator, num_classes=ncls, **run)
    nan = np.full((len(samples), len(CLASS_NAMES)), np.nan)
    preds = {
        "synthcp": predict_comparator(comparator, samples, error_map_dir=out / "error_maps", **run),
        "direct_prediction": nan if direct is None else predict_comparator(direct, samples, **run),
        "vae_alarm": predict_dice_regressor(cfg["regressor"], vae_features(vae, [s["pred_mask"] for s in samples],
                                                                           **run)),
    }  # fmt: skip
    preds["ensemble"] = mean_ensemble(preds["synthcp"], preds["vae_alarm"])
    q = np.array([np.inf if cfg["conformal_q"][c] is None else cfg["conformal_q"][c] for c in CLASS_NAMES])
    cases = {s["case_id"]: {"split": "new", "true": None, "paths": s["paths"]} for s in samples}
    rows = rows_for(cases, preds, np.tile(q, (len(samples), 1)), out / "error_maps", cfg["alpha"],
                    cfg["review_threshold"])  # fmt: skip
    atomic_write_text(out / "alarm_table.json", json.dumps(rows, indent=1))
    return rows
