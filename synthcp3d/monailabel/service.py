"""The pancreas alarm path behind a server: what the MONAI Label app's infer tasks call.

* :class:`AlarmService` — loads the bundle's networks from a ``models/`` folder once
  (:data:`~synthcp3d.alarms.inference.MODELS_LAYOUT`, the bundle's ``alarm_models`` config key) and runs
  :func:`~synthcp3d.alarms.inference.alarm_new_images` per image, keeping the last results so the segmentation
  and the error map of one image cost one run.
* :func:`alarm_summary` — the JSON a client sees next to the returned volume.
* :func:`error_levels` — the SynthCP error map as a label map (clients show label maps as segments).
* :func:`write_untrained_models` — a models folder of randomly initialised networks, for smoke tests.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from synthcp3d.alarms.inference import MODEL_FILES, alarm_new_images
from synthcp3d.data.io import DataError, atomic_write_text, read_json, write_nifti
from synthcp3d.data.msd import read_geometry
from synthcp3d.engines.precision import setup_process

__all__ = ["BUNDLE_ROOT", "ERROR_LEVELS", "LABELS", "AlarmService", "alarm_summary", "bundle_parser",
           "error_levels", "models_help", "write_untrained_models"]  # fmt: skip

BUNDLE_ROOT = Path(__file__).resolve().parents[2] / "bundles" / "pancreas_synthcp"
"""The repository's pancreas bundle (the package is installed editable from the repository)."""

LABELS: dict[str, int] = {"pancreas": 1, "tumour": 2}
"""Label values of the returned segmentation (MSD Task07: 1 pancreas, 2 tumour)."""

ERROR_EDGES = (0.25, 0.5, 0.75)
ERROR_LEVELS: dict[str, int] = {"error 0.25-0.5": 1, "error 0.5-0.75": 2, "error >= 0.75": 3}
"""Label values of :func:`error_levels` (SynthCP error probability binned at :data:`ERROR_EDGES`)."""

# role of alarm_new_images -> network definition in the bundle's common.json
_NETWORK_KEYS = {"segmenter": "network_def", "generator": "spade_def", "comparator": "comparator_def",
                 "direct": "direct_def", "vae": "vae_def"}  # fmt: skip


def models_help(models_dir: str | Path, bundle_root: str | Path | None = None) -> str:
    """Which commands produce a models folder (for the message of a server started without one)."""
    from synthcp3d.demo import DEMO_STAGES

    root = Path(bundle_root or BUNDLE_ROOT)
    stages = [c.removesuffix(".json") for _, c in DEMO_STAGES if c not in ("evaluate.json", "alarm.json")]
    return (
        f"no trained models in {models_dir}. Produce them with\n"
        f"  make demo      (tiny profile on a generated phantom; writes runs/demo/models)\n"
        f"or run the bundle configs {', '.join(stages)} in this order (see {root / 'docs' / 'README.md'}):\n"
        f"  cd {root} && python -m monai.bundle run --config_file \"['configs/common.json',"
        f"'configs/profiles/tiny.json','configs/<stage>.json']\" --models_dir {models_dir}"
    )


def bundle_parser(bundle_root: str | Path | None = None, profile: str = "tiny", **overrides):
    """The bundle's ``common.json`` + ``profiles/<profile>.json`` + ``alarm.json`` as a MONAI ``ConfigParser``.

    Raises:
        FileNotFoundError: no such bundle or profile (naming the profiles there are).
    """
    from monai.bundle import ConfigParser

    root = Path(bundle_root or BUNDLE_ROOT)
    configs = root / "configs"
    prof = configs / "profiles" / f"{profile}.json"
    if not (configs / "common.json").is_file():
        raise FileNotFoundError(f"no bundle at {root} (expected configs/common.json)")
    if not prof.is_file():
        known = sorted(p.stem for p in (configs / "profiles").glob("*.json"))
        raise FileNotFoundError(f"no profile {profile!r} in {configs / 'profiles'} (known: {', '.join(known)})")
    parser = ConfigParser()
    parser.read_config([str(configs / "common.json"), str(prof), str(configs / "alarm.json")])
    parser.update({"bundle_root": str(root), **overrides})
    return parser


def _profile_of(models_dir: Path) -> str | None:
    manifest = models_dir / "manifest.json"
    return read_json(manifest).get("profile") if manifest.is_file() else None


def error_levels(error_map: np.ndarray, edges: Sequence[float] = ERROR_EDGES) -> np.ndarray:
    """Bin an error-probability map into a uint8 label map: 0 below ``edges[0]``, k for ``edges[k-1] <= p <
    edges[k]``, ``len(edges)`` from the last edge on (values of :data:`ERROR_LEVELS`). Any shape in, same out."""
    return np.digitize(np.asarray(error_map, np.float32), np.asarray(edges, np.float32)).astype(np.uint8)


def alarm_summary(row: Mapping, review_threshold: float) -> dict:
    """The client's JSON for one alarm-table row (:mod:`~synthcp3d.alarms.pipeline`): predicted Dice per
    method and class, the ensemble's conformal interval, the review flag and a one-line message. Server-side
    file paths are left out.

    ``predicted`` holds every method of the row, the baselines included: ``ensemble_agreement`` (mean pairwise
    Dice of the final and the fold segmenters; null without fold models in the models folder), ``msp`` and
    ``entropy`` (confidences in [0, 1], not Dice; null for a client's label map or an empty predicted region).
    The message and the review flag rest on the SynthCP + VAE ensemble alone."""
    t = row["predicted"]["ensemble"]["tumour"]
    p = row["predicted"]["ensemble"]["pancreas"]
    lo, hi = row["interval"]["tumour"]
    span = "" if lo is None or hi is None else f" ({row['coverage']:.0%} interval {lo:.2f}-{hi:.2f})"
    verdict = f"REVIEW: below {review_threshold:.2f}" if row["review"] else "no review flag"
    pan = "n/a" if p is None else f"{p:.2f}"
    tum = "n/a" if t is None else f"{t:.2f}"
    return {
        "case_id": row["case_id"],
        "predicted": {m: dict(v) for m, v in row["predicted"].items()},
        "interval": {c: list(v) for c, v in row["interval"].items()},
        "coverage": row["coverage"],
        "review": row["review"],
        "review_threshold": review_threshold,
        "segmentation": "client label" if row.get("source_pred") else "segmenter",
        "status": row.get("status", "ok"),
        "failed_methods": list(row.get("failed_methods", [])),
        "message": (f"predicted tumour Dice {tum}{span}, pancreas {pan}; {verdict}" if t is not None else
                    f"no predicted tumour Dice (failed: {', '.join(row.get('failed_methods', [])) or 'unknown'}); "
                    "REVIEW"),
    }


class AlarmService:
    """The alarm path of one models folder, for a server.

    Networks are built from the bundle's definitions of ``profile`` (default: the profile named in
    ``<models_dir>/manifest.json``, else "tiny") and loaded once. :meth:`alarm` runs one image at a time (a
    lock serialises requests: the networks are shared) and caches the last ``cache_size`` results on disk,
    keyed by the image's path, size and modification time.

    Args:
        models_dir: the folder written by the bundle's ``export_models`` config.
        bundle_root: the ``pancreas_synthcp`` bundle (network definitions, sliding-window sizes).
        profile: bundle profile the networks were trained with.
        device: torch device; default the bundle's (first GPU if present, else CPU).
        cache_size: results kept.

    Raises:
        FileNotFoundError: a model file is missing (the message names the commands that produce them), or
            the bundle / profile is not found.
    """

    def __init__(
        self,
        models_dir: str | Path,
        *,
        bundle_root: str | Path | None = None,
        profile: str | None = None,
        device: str | torch.device | None = None,
        cache_size: int = 8,
    ):
        self.models_dir = Path(models_dir).resolve()
        self.bundle_root = Path(bundle_root or BUNDLE_ROOT).resolve()
        needed = [MODEL_FILES[r] for r in ("segmenter", "generator", "comparator", "vae")] + ["alarm_models.json"]
        missing = [f for f in needed if not (self.models_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"missing {', '.join(missing)}: " + models_help(self.models_dir, self.bundle_root))
        self.profile = profile or _profile_of(self.models_dir) or "tiny"
        parser = bundle_parser(self.bundle_root, self.profile, models_dir=str(self.models_dir))
        self.device = torch.device(device) if device is not None else parser.get_parsed_content("device")
        self.networks = parser.get_parsed_content("alarm_models")
        self.settings = read_json(self.models_dir / "alarm_models.json")
        self._kwargs = {"segment_roi_size": parser.get_parsed_content("roi_size"),
                        "synth_roi_size": parser.get_parsed_content("synth_roi_size"),
                        "amp_dtype": parser.get_parsed_content("amp_dtype"), "device": self.device}  # fmt: skip
        self.precision = setup_process(self._kwargs["amp_dtype"], self.device)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._work = Path(tempfile.mkdtemp(prefix="synthcp3d-alarm-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._work, True)  # also at interpreter exit

    def alarm(self, image: str | Path, output: str | None = None, dest: str | Path | None = None,
              label: str | Path | None = None) -> dict:  # fmt: skip
        """Run (or reuse) the alarm path on one NIfTI CT volume; with ``output``, also write that volume to
        ``dest`` (:func:`export_volume`; under the lock, so no other request evicts the result meanwhile).
        With ``label`` (a label map a client sent, or the datastore's), the alarm judges that segmentation
        instead of the segmenter's (its geometry and values checked by
        :func:`~synthcp3d.alarms.inference.check_alarm_input`).

        Returns:
            ``{"row": alarm-table row (split "new"), "summary": :func:`alarm_summary`, "seconds": run time,
            "cached": bool, "dir": its folder}``;
            ``row["pred"]`` is the uint8 label map and ``row["error_map"]`` the float32 error probability, both
            on the input's grid.

        Raises:
            DataError: the image is missing, unreadable or not 3D.
        """
        path = Path(image).resolve()
        size = read_geometry(path)["size"]  # DataError for a missing or unreadable file, before any work
        if len(size) != 3:
            raise DataError(path, f"a 3D CT volume is expected, got size {size}")
        key = _file_key(path)
        label = None if label is None else Path(label).resolve()
        if label is not None:
            key += _file_key(label)
        with self._lock:
            result = self._cache.get(key)
            cached = result is not None
            if not cached:
                result = self._run(path, label)
                self._cache[key] = result
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                shutil.rmtree(self._cache.popitem(last=False)[1]["dir"], ignore_errors=True)
            if output is not None:
                export_volume(result, output, dest)
            return {**result, "cached": cached}

    def _run(self, path: Path, label: Path | None) -> dict:
        out = Path(tempfile.mkdtemp(dir=self._work))
        t0 = time.perf_counter()
        try:
            rows = alarm_new_images([path], out, models_dir=self.models_dir, **self.networks, **self._kwargs,
                                    predictions=None if label is None else [label], progress=False)  # fmt: skip
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        summary = alarm_summary(rows[0], float(self.settings["review_threshold"]))
        return {"row": rows[0], "summary": summary, "seconds": time.perf_counter() - t0, "dir": out}

    def close(self) -> None:
        """Delete the cached results."""
        with self._lock:
            self._cache.clear()
            self._cleanup()


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def export_volume(result: Mapping, output: str, dest: str | Path) -> Path:
    """Write one volume of an :meth:`AlarmService.alarm` result to ``dest`` (NIfTI, the input's grid).

    Args:
        output: "segmentation" (uint8 :data:`LABELS`), "error_map" (float32 error probability in [0, 1]) or
            "error_levels" (uint8 :data:`ERROR_LEVELS`).
    """
    import nibabel as nib

    row, dest = result["row"], Path(dest)
    if output == "segmentation":
        shutil.copyfile(row["pred"], dest)
    elif output in ("error_map", "error_levels"):
        if row["error_map"] is None:
            raise DataError(None, f"case {row['case_id']!r}: no error map was written")
        if output == "error_map":
            shutil.copyfile(row["error_map"], dest)
        else:
            img = nib.load(row["error_map"])
            write_nifti(dest, error_levels(np.asarray(img.dataobj)), img.affine)
    else:
        raise ValueError(f"output must be segmentation, error_map or error_levels, got {output!r}")
    return dest


def write_untrained_models(
    models_dir: str | Path,
    *,
    bundle_root: str | Path | None = None,
    profile: str = "tiny",
    seed: int = 0,
) -> Path:
    """A models folder (:data:`~synthcp3d.alarms.inference.MODELS_LAYOUT`) of randomly initialised networks
    for smoke tests of servers and configs: the predicted numbers are meaningless. ``alarm_models.json`` takes
    its crop settings from the profile, a constant VAE regressor and fixed conformal quantiles; ``manifest.json``
    names ``profile`` (so :class:`AlarmService` builds the same networks).

    Returns:
        ``models_dir``.
    """
    from synthcp3d.alarms.vae import FEATURE_NAMES

    out = Path(models_dir)
    out.mkdir(parents=True, exist_ok=True)
    parser = bundle_parser(bundle_root, profile)
    torch.manual_seed(seed)
    files = {}
    for role, key in _NETWORK_KEYS.items():
        torch.save(parser.get_parsed_content(key).state_dict(), out / MODEL_FILES[role])
        files[MODEL_FILES[role]] = f"untrained {key}"
    get = parser.get_parsed_content
    settings = {"roi_size": list(get("alarms#roi_size")), "pixdim": list(get("pixdim")),
                "hu_window": list(get("hu_window")), "num_classes": int(get("num_classes")),
                "pred_input": get("alarms#pred_input"),
                "regressor": {"coef": [[0.0] * len(FEATURE_NAMES)] * 2, "intercept": [0.7, 0.4], "alpha": 0.1},
                "conformal_q": {"pancreas": 0.2, "tumour": 0.3}, "alpha": float(get("alarms#alpha")),
                "review_threshold": float(get("alarms#review_threshold")), "direct": True, "out_of_fold": False,
                "num_cv": 0}  # fmt: skip
    atomic_write_text(out / "alarm_models.json", json.dumps(settings, indent=1))
    manifest = {"profile": profile, "source": "untrained (random initialisation, smoke tests only)",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files}  # fmt: skip
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return out
