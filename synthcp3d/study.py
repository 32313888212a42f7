"""Does SynthCP's alarm predict segmentation quality? A rerunnable study on pancreas phantoms (issue #13).

``synthcp3d study --out DIR --seeds 3 [--settings demo,adult] [--cases 20] [--test-cases 8]`` (``make study``):

1. For every phantom SETTING (:data:`SETTINGS`, a registry: add an entry to add a setting) and SEED ``0..seeds-1``
   it writes a phantom with :func:`~synthcp3d.data.phantom_pancreas.make_pancreas_dataset` (the seed is the
   phantom's seed) whose held-out test labels go to ``labelsTs_hidden/``, a folder ``dataset.json`` does not
   name, so the pipeline never sees them.
2. It runs the ``pancreas_synthcp`` bundle config by config exactly as the demo does
   (:func:`synthcp3d.demo.run_bundle_config` over :data:`synthcp3d.demo.DEMO_STAGES`) into
   ``DIR/<setting>/seed<k>/runs``, exports the models to ``.../models`` and runs the ``alarm`` config on the
   held-out test images into ``.../alarm_heldout``.
3. It scores every method of the alarm table (SynthCP, Direct Prediction, VAE alarm, ensemble) and a CONSTANT
   baseline (every case gets the CV cases' mean true Dice, so a low MAE on a narrow Dice spread cannot pass for
   skill) on (i) the out-of-fold CV cases of ``runs/alarms/alarm_table.json`` and (ii) the held-out cases of the
   alarm config, whose true Dice the study computes from the alarm's own segmentation and the hidden labels.
   Per class: MAE, STD of the absolute error, Pearson and Spearman correlation (all x100, paper Table 2, from
   :func:`synthcp3d.metrics.image_level`) and triage accuracy (percent of cases where "predicted Dice < 0.5"
   agrees with "true Dice < 0.5"), plus the spread of the true Dice.
4. Diagnostics on the CV cases, on the input grid: (a) generator fidelity ``|x - G(y)|`` (HU) with the run's
   generator applied to the GROUND-TRUTH label, per class (background within 10 mm of the organ, pancreas,
   tumour) next to the phantom's noise level; (b) the residual ``|x - G(ŷ)|`` of the pipeline's synthesis on
   tumour TP / FP / FN voxels and on correctly labelled pancreas (median over cases); (c) the Pearson and
   Spearman correlation across cases of simple residual statistics with the true Dice. ``x`` is clipped to the
   bundle's HU window, the range the generator can produce.
5. ``DIR/study.json`` (everything, per run), ``DIR/study.md`` (tables), ``DIR/study.csv`` (one row per setting x
   seed x split x method x class), rewritten atomically after every run.

Runs are independent: a run that fails is recorded with its error and the study goes on; a finished run (its
alarm table and held-out alarm table present) is reused, and an unfinished one resumes after its last finished
stage (``DIR/<setting>/seed<k>/stages.json``), so running the same command again completes a study.

Budget: the default study (settings ``demo,adult``, 3 seeds, 20 training + 8 held-out cases, ``tiny`` profile,
fp32, 2 idle CPU cores) is 6 runs of ~8-9 min, ~50 min in all. That is an estimate from the demo's idle stage
times (32 cases: CV 294 s, SPADE 69 s, synthesis 19 s, comparator 179 s, VAE 20 s, the rest ~10 s): the segmenter
cross-validation scales with the training cases (4 x 15 + 20 vs 4 x 24 + 32 case-epochs: ~185 s), the GAN and the
alarm training hardly do; ``adult`` adds ~40 s of phantom rendering and larger NIfTIs. On a machine other jobs
share, torch's 2 intra-op threads can be 10-20x slower than 1 thread (measured here: a run's CV took 2225 s and
SPADE 880 s with 2 threads under load ~5); pass ``--threads 1`` there. More settings, seeds or cases are options
(``--settings demo,adult,coarse,subtle``), at ~8 min per extra run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BASELINE",
    "CLASSES",
    "CONFIDENCE_METHODS",
    "DEFAULT_CASES",
    "DEFAULT_SETTINGS",
    "DEFAULT_TEST_CASES",
    "HIDDEN_LABELS",
    "METHODS",
    "RESERVED_OVERRIDES",
    "SETTINGS",
    "RunPaths",
    "constant_baseline",
    "dice_spread",
    "fidelity_means",
    "near_organ_mask",
    "residual_region_means",
    "residual_statistics",
    "run_one",
    "run_study",
    "score",
    "score_split",
    "spearman_pearson_table",
]

# phantom settings: name -> make_pancreas_dataset keyword arguments (besides num_cases, num_test, seed)
SETTINGS: dict[str, dict] = {
    # what synthcp3d.demo uses: pancreas-centred 128 x 128 x 80 mm at 2 x 2 x 2.5 mm
    "demo": {"size": (64, 64, 32), "field_of_view_mm": (128.0, 128.0, 80.0), "roi_center": "pancreas"},
    # adult-scale pancreas-centred field of view at scanner resolution: 0.8 x 0.8 x 2 mm voxels
    "adult": {"size": (160, 160, 48), "field_of_view_mm": (128.0, 128.0, 96.0), "roi_center": "pancreas"},
    # coarse voxels over a wider field: 3 x 3 x 3.75 mm
    "coarse": {"size": (48, 48, 24), "field_of_view_mm": (144.0, 144.0, 90.0), "roi_center": "pancreas"},
    # demo geometry, smaller and fainter tumours
    "subtle": {"size": (64, 64, 32), "field_of_view_mm": (128.0, 128.0, 80.0), "roi_center": "pancreas",
               "tumour_radius_mm": (3.0, 12.0), "contrast_scale": 0.5},  # fmt: skip
    # plumbing checks only (tests, smoke runs): 32 x 32 x 16 voxels at 2 x 2 x 2.5 mm, the organ partly outside
    "smoke": {"size": (32, 32, 16), "field_of_view_mm": (64.0, 64.0, 40.0), "roi_center": "pancreas"},
}
DEFAULT_SETTINGS: tuple[str, ...] = ("demo", "adult")
DEFAULT_CASES = 20
DEFAULT_TEST_CASES = 8
# the alarms, then the label-free baselines (synthcp3d.alarms.agreement; Zenk et al., MedIA 2025): the mean pairwise
# Dice of the final and the fold segmenters (a Dice estimate) and MSP / entropy (confidences, CONFIDENCE_METHODS).
# The alarm config computes the baselines for the held-out images only: the CV rows carry them as null ("–"), since
# the fold models are no fair ensemble on the out-of-fold cases (each but the case's own fold trained on it).
METHODS: tuple[str, ...] = ("synthcp", "direct_prediction", "vae_alarm", "ensemble", "ensemble_weighted",
                            "ensemble_agreement", "msp", "entropy")  # fmt: skip
CONFIDENCE_METHODS: tuple[str, ...] = ("msp", "entropy")
"""Methods whose number is a confidence in [0, 1], not a Dice estimate: scored by ranking only (Pearson, Spearman,
AURC, e-AURC); their MAE, STD and triage accuracy against the true Dice are NaN (undefined, "–")."""
BASELINE = "constant"
CLASSES: tuple[str, ...] = ("pancreas", "tumour")
_IMAGE_LEVEL: tuple[str, ...] = ("mae", "std", "pearson", "spearman", "triage_accuracy")  # metrics.image_level
_RISK_COVERAGE: tuple[str, ...] = ("aurc", "eaurc")  # ranking by predicted Dice, risk 1 - Dice (Zenk et al. 2025)
METRICS: tuple[str, ...] = (*_IMAGE_LEVEL, *_RISK_COVERAGE)
_METRIC_LABELS = {"mae": "MAE", "std": "STD", "pearson": "P.C.", "spearman": "S.C.", "triage_accuracy": "triage",
                  "aurc": "AURC", "eaurc": "e-AURC"}  # fmt: skip
HIDDEN_LABELS = "labelsTs_hidden"
SPLITS: tuple[str, ...] = ("cv", "heldout")
# set by the study for every config; a user override of them would break the run layout
RESERVED_OVERRIDES = frozenset({"dataset_dir", "output_dir", "models_dir", "alarm_images", "alarm_out", "amp_dtype",
                                "bundle_root"})  # fmt: skip
NEAR_ORGAN_MM = 10.0
SHELL_VOXELS = 2
_GAUSS_MEAN_ABS = math.sqrt(2.0 / math.pi)  # E|N(0, s)| = 0.798 s: the floor of |x - G(y)| for a perfect G


# ----------------------------------------------------------------------------------------------- metrics
def score(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Per-class MAE, STD, Pearson, Spearman, triage accuracy, AURC and e-AURC (all x100) of predicted vs true
    Dice.

    ``pred`` and ``true`` are (cases, 2) [pancreas, tumour]; entries where either is NaN are left out (``n``
    counts the rest). Correlations of a constant predictor are NaN (undefined). Computed by
    :func:`synthcp3d.metrics.image_level`; triage: a case is "bad" when its Dice is below ``threshold``.
    AURC / e-AURC (:func:`synthcp3d.metrics.aurc`, :func:`~synthcp3d.metrics.excess_aurc`): cases ranked by
    the predicted Dice, risk 1 - true Dice, lower is better; a constant predictor ties every case, the random
    ranking, so its AURC is the mean risk (100 - mean true Dice x100).
    """
    from synthcp3d.metrics import aurc, excess_aurc, image_level

    p = np.asarray(pred, np.float64).reshape(-1, len(CLASSES))
    t = np.asarray(true, np.float64).reshape(-1, len(CLASSES))
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have one shape, got {p.shape} and {t.shape}")
    valid = np.isfinite(p) & np.isfinite(t)
    out = {c: {**{m: float("nan") for m in METRICS}, "n": int(valid[:, k].sum())} for k, c in enumerate(CLASSES)}
    if not valid.any():
        return out
    res = image_level(np.where(valid, p, 0.0), np.where(valid, t, np.nan), valid=valid, threshold=threshold)
    for k, c in enumerate(CLASSES):
        out[c].update({m: float(res["per_class"][m][k]) for m in _IMAGE_LEVEL})
        pk, tk = p[valid[:, k], k], t[valid[:, k], k]
        out[c].update(aurc=100 * aurc(pk, 1.0 - tk), eaurc=100 * excess_aurc(pk, 1.0 - tk))
        if pk.size and (np.ptp(pk) == 0 or np.ptp(tk) == 0):
            # undefined; image_level's centred sums of a constant are rounding noise (e.g. 20 x 0.1), not zero
            out[c]["pearson"] = out[c]["spearman"] = float("nan")
    return out


def constant_baseline(train_true: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) predictions that give every case the training cases' mean true Dice per class (NaN ignored)."""
    t = np.asarray(train_true, np.float64).reshape(-1, len(CLASSES))
    with np.errstate(all="ignore"):
        mean = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in t.T])
    return np.tile(mean, (int(n), 1))


def dice_spread(true: np.ndarray) -> dict[str, dict[str, float]]:
    """Per class: ``n``, ``min``, ``median``, ``max`` of the finite true Dice, and ``frac_below_0.1`` /
    ``frac_above_0.6`` (fractions of those cases)."""
    t = np.asarray(true, np.float64).reshape(-1, len(CLASSES))
    out = {}
    for k, c in enumerate(CLASSES):
        v = t[np.isfinite(t[:, k]), k]
        nan = float("nan")
        out[c] = {"n": int(v.size), "min": float(v.min()) if v.size else nan,
                  "median": float(np.median(v)) if v.size else nan, "max": float(v.max()) if v.size else nan,
                  "frac_below_0.1": float(np.mean(v < 0.1)) if v.size else nan,
                  "frac_above_0.6": float(np.mean(v > 0.6)) if v.size else nan}  # fmt: skip
    return out


def _matrix(rows: Sequence[Mapping], method: str | None) -> np.ndarray:
    """(len(rows), 2) Dice of ``method`` (None: the true Dice) from alarm-table rows; missing -> NaN."""
    out = np.full((len(rows), len(CLASSES)), np.nan)
    for i, r in enumerate(rows):
        d = r.get("true") if method is None else (r.get("predicted") or {}).get(method)
        for k, c in enumerate(CLASSES):
            v = (d or {}).get(c)
            out[i, k] = np.nan if v is None else float(v)
    return out


def score_split(rows: Sequence[Mapping], true: np.ndarray, train_true: np.ndarray, threshold: float = 0.5) -> dict:
    """``{method: per-class score}`` for every method in the rows (known methods first) and the constant
    baseline (the mean of ``train_true``), against ``true`` (len(rows), 2).

    A method that is null in every row (the baselines on CV rows) scores NaN with ``n`` 0. The confidences of
    :data:`CONFIDENCE_METHODS` (MSP, entropy) are on no Dice scale: only their ranking metrics are kept."""
    found = [m for m in METHODS if any(m in (r.get("predicted") or {}) for r in rows)]
    found += sorted({m for r in rows for m in (r.get("predicted") or {})} - set(found))
    out = {m: score(_matrix(rows, m), true, threshold) for m in found}
    for m in set(found) & set(CONFIDENCE_METHODS):
        for per in out[m].values():
            per.update(mae=float("nan"), std=float("nan"), triage_accuracy=float("nan"))
    out[BASELINE] = score(constant_baseline(train_true, len(rows)), true, threshold)
    return out


# ------------------------------------------------------------------------------------------- diagnostics
def near_organ_mask(label: np.ndarray, spacing: Sequence[float], mm: float = NEAR_ORGAN_MM) -> np.ndarray:
    """Background voxels (label 0) within ``mm`` millimetres of the organ (label > 0), spacing-aware."""
    from scipy import ndimage

    organ = np.asarray(label) > 0
    if not organ.any():
        return np.zeros(organ.shape, bool)
    dist = ndimage.distance_transform_edt(~organ, sampling=[float(s) for s in spacing])
    return (~organ) & (dist <= mm)


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def fidelity_means(x: np.ndarray, gy: np.ndarray, label: np.ndarray, spacing: Sequence[float],
                   near_mm: float = NEAR_ORGAN_MM) -> dict[str, float]:  # fmt: skip
    """Mean ``|x - G(y)|`` per ground-truth class: ``background_near`` (within ``near_mm`` of the organ),
    ``pancreas`` (label 1), ``tumour`` (label 2); NaN for an empty class."""
    err = np.abs(np.asarray(x, np.float64) - np.asarray(gy, np.float64))
    label = np.asarray(label)
    return {"background_near": _mean(err, near_organ_mask(label, spacing, near_mm)),
            "pancreas": _mean(err, label == 1), "tumour": _mean(err, label == 2)}  # fmt: skip


def residual_region_means(residual: np.ndarray, label: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Mean residual on tumour true-positive / false-positive / false-negative voxels and on correctly labelled
    pancreas (pred = label = 1); NaN for an empty region."""
    r, y, p = np.asarray(residual, np.float64), np.asarray(label), np.asarray(pred)
    return {"tumour_tp": _mean(r, (p == 2) & (y == 2)), "tumour_fp": _mean(r, (p == 2) & (y != 2)),
            "tumour_fn": _mean(r, (p != 2) & (y == 2)), "pancreas_correct": _mean(r, (p == 1) & (y == 1))}  # fmt: skip


def residual_statistics(residual: np.ndarray, pred: np.ndarray, shell: int = SHELL_VOXELS) -> dict[str, float]:
    """Label-free statistics a comparator could use: mean residual in the predicted tumour, in the predicted
    pancreas, and in a ``shell``-voxel shell around the predicted tumour (6-connected dilation minus the tumour)."""
    from scipy import ndimage

    r, p = np.asarray(residual, np.float64), np.asarray(pred)
    tum = p == 2
    ring = ndimage.binary_dilation(tum, ndimage.generate_binary_structure(p.ndim, 1), iterations=shell) & ~tum
    return {"pred_tumour": _mean(r, tum), "pred_pancreas": _mean(r, p == 1), "tumour_shell": _mean(r, ring)}


def spearman_pearson_table(stats: Sequence[Mapping[str, float]], dice: np.ndarray) -> dict:
    """``{statistic: {"tumour"|"pancreas": {"pearson", "spearman", "n"}}}`` across cases (x1, not x100), over the
    cases where both the statistic and the Dice are finite; NaN below 3 cases or for constant input."""
    from scipy.stats import pearsonr, spearmanr

    dice = np.asarray(dice, np.float64).reshape(-1, len(CLASSES))
    out: dict = {}
    for key in (stats[0].keys() if stats else ()):
        s = np.array([st[key] for st in stats], np.float64)
        out[key] = {}
        for k, c in enumerate(CLASSES):
            ok = np.isfinite(s) & np.isfinite(dice[:, k])
            a, b = s[ok], dice[ok, k]
            if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
                out[key][c] = {"pearson": float("nan"), "spearman": float("nan"), "n": int(a.size)}
            else:
                out[key][c] = {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0]),
                               "n": int(a.size)}  # fmt: skip
    return out


def _nan_stat(values: Sequence[float], fn: Callable) -> tuple[float, int]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return (float(fn(v)) if v.size else float("nan")), int(v.size)


# -------------------------------------------------------------------------------------------- run layout
class RunPaths:
    """The files of one study run ``DIR/<setting>/seed<k>`` (the bundle's own files it reads are the documented
    stage outputs: the prediction index, the synthesized volumes, the alarm tables)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.data = self.root / "data" / "Task07_Pancreas"
        self.runs = self.root / "runs"
        self.models = self.root / "models"
        self.alarm_heldout = self.root / "alarm_heldout"
        self.diagnostics = self.root / "diagnostics"
        self.run_config = self.root / "run.json"
        self.stages = self.root / "stages.json"
        self.result = self.root / "study_run.json"
        self.index = self.runs / "segmenter" / "predictions" / "index.json"
        self.alarm_table = self.runs / "alarms" / "alarm_table.json"
        self.heldout_table = self.alarm_heldout / "alarm_table.json"

    def synth(self, case_id: str) -> Path:
        return self.runs / "synth" / case_id / "synth.nii.gz"

    def hidden_label(self, case_id: str) -> Path:
        return self.data / HIDDEN_LABELS / f"{case_id}.nii.gz"

    def finished(self) -> bool:
        """True when the bundle part is complete: the alarm table and the held-out alarm table exist."""
        return self.alarm_table.is_file() and self.heldout_table.is_file()


def _read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def _json_safe(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _dump(path: Path, obj) -> None:
    from synthcp3d.data.io import atomic_write_text

    atomic_write_text(path, json.dumps(_json_safe(obj), indent=1, allow_nan=False) + "\n")


def _resolve(path: str, base: Path) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return base / p


def _load(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(array, voxel spacing) of a NIfTI."""
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.header.get_zooms()[:3], np.float64)


# ---------------------------------------------------------------------------------------- bundle stages
def _stage_list() -> list[tuple[str, str | None]]:
    from synthcp3d.demo import DEMO_STAGES

    return [("pancreas phantom", None), *DEMO_STAGES]


def _stage_key(config: str | None) -> str:
    """The stage's key in ``stages.json`` and ``stage_seconds``: the config's stem (``crossval``) or ``phantom``."""
    return "phantom" if config is None else Path(config).stem


def heldout_images(paths: RunPaths) -> list[str]:
    """The held-out test images of a run's phantom (from its ``dataset.json``), absolute paths."""
    ds = json.loads((paths.data / "dataset.json").read_text())
    return [str((paths.data / p).resolve()) for p in ds["test"]]


def load_generator(bundle: Path, profile: str, weights: Path, overrides: Mapping | None = None,
                   amp_dtype: str = "auto"):  # fmt: skip
    """The bundle's ``spade_def`` with ``weights`` loaded, the ``spade_synthesize_kwargs`` and ``hu_window`` of
    common.json + the profile (+ ``overrides``), through a ``monai.bundle.ConfigParser`` as the configs do."""
    from monai.bundle import ConfigParser

    from synthcp3d.engines.checkpoints import load_weights

    parser = ConfigParser()
    configs = bundle / "configs"
    parser.read_config([str(configs / "common.json"), str(configs / "profiles" / f"{profile}.json")])
    parser["bundle_root"] = str(bundle)
    for k, v in (overrides or {}).items():
        parser[k] = v
    parser["amp_dtype"] = amp_dtype
    generator = load_weights(parser.get_parsed_content("spade_def", instantiate=True), weights,
                             hint="run the train_spade and export_models configs first")  # fmt: skip
    kwargs = dict(parser.get_parsed_content("spade_synthesize_kwargs"))
    return generator, kwargs, tuple(float(v) for v in parser.get_parsed_content("hu_window"))


def synthesize_ground_truth(paths: RunPaths, index: Mapping[str, Mapping], case_ids: Sequence[str], bundle: Path,
                            profile: str, overrides: Mapping | None, amp_dtype: str) -> tuple[dict, tuple]:  # fmt: skip
    """``G(y)``: the run's exported generator on the ground-truth labels of ``case_ids`` through the pipeline's
    :func:`~synthcp3d.engines.spade.synthesize_volumes`; returns ``({case_id: path}, hu_window)``."""
    from synthcp3d.engines.spade import synthesize_volumes

    generator, kwargs, hu = load_generator(bundle, profile, paths.models / "generator.pt", overrides, amp_dtype)
    gt_index = {c: {"pred": str(_resolve(index[c]["label"], paths.index.parent)),
                    "image": str(_resolve(index[c]["image"], paths.index.parent))} for c in case_ids}  # fmt: skip
    out = synthesize_volumes(generator, gt_index, paths.diagnostics / "gt_synth", device="cpu", progress=False,
                             **kwargs)  # fmt: skip
    return out, hu


def diagnostics(paths: RunPaths, cv_rows: Sequence[Mapping], bundle: Path, profile: str, overrides: Mapping | None,
                amp_dtype: str, near_mm: float = NEAR_ORGAN_MM) -> dict:  # fmt: skip
    """Generator fidelity, residual on TP/FP/FN/pancreas voxels and residual-statistic correlations on the CV cases."""
    from synthcp3d.alarms.samples import case_dice

    index = json.loads(paths.index.read_text())
    ids = [r["case_id"] for r in cv_rows if r["case_id"] in index and index[r["case_id"]].get("label")]
    gt_synth, hu = synthesize_ground_truth(paths, index, ids, bundle, profile, overrides, amp_dtype)
    meta = (_read_json(paths.data / "phantom_meta.json", {}) or {}).get("cases", {})
    true_by_id = {r["case_id"]: _matrix([r], None)[0] for r in cv_rows}
    fid, region, stats, noise, dice, dice_gap = [], [], [], [], [], []
    for cid in ids:
        rec = index[cid]
        x, spacing = _load(_resolve(rec["image"], paths.index.parent))
        y, _ = _load(_resolve(rec["label"], paths.index.parent))
        p, _ = _load(_resolve(rec["pred"], paths.index.parent))
        gyh, _ = _load(paths.synth(cid))
        gy, _ = _load(gt_synth[cid])
        for name, a in (("label", y), ("pred", p), ("synth", gyh), ("G(y)", gy)):
            if a.shape != x.shape:
                raise ValueError(f"case {cid}: {name} shape {a.shape} != image shape {x.shape}")
        x = np.clip(x.astype(np.float64), hu[0], hu[1])
        fid.append(fidelity_means(x, gy, y, spacing, near_mm))
        residual = np.abs(x - gyh.astype(np.float64))
        region.append(residual_region_means(residual, y, p))
        stats.append(residual_statistics(residual, p))
        noise.append(float(((meta.get(cid) or {}).get("params") or {}).get("noise_hu", np.nan)))
        d = case_dice(p.astype(np.int64), y.astype(np.int64))
        dice.append(d)
        dice_gap.append(float(np.nanmax(np.abs(d - true_by_id[cid]))) if np.isfinite(d - true_by_id[cid]).any()
                        else 0.0)  # fmt: skip
    dice = np.asarray(dice, np.float64).reshape(-1, len(CLASSES))
    noise_mean, _ = _nan_stat(noise, np.mean)
    fidelity = {}
    for key in ("background_near", "pancreas", "tumour"):
        m, n = _nan_stat([f[key] for f in fid], np.mean)
        fidelity[key] = {"mean_abs_hu": m, "n": n, "ratio_to_noise": m / noise_mean if noise_mean else float("nan")}
    residual_tab = {}
    for key in ("tumour_tp", "tumour_fp", "tumour_fn", "pancreas_correct"):
        m, n = _nan_stat([r[key] for r in region], np.median)
        residual_tab[key] = {"median_abs_hu": m, "n": n}
    return {
        "cases": len(ids), "hu_window": list(hu), "near_organ_mm": near_mm,
        "noise_hu_mean": noise_mean, "noise_floor_hu": noise_mean * _GAUSS_MEAN_ABS if noise else float("nan"),
        "generator_fidelity": fidelity, "residual_regions": residual_tab,
        "residual_correlations": spearman_pearson_table(stats, dice),
        "max_dice_gap_vs_table": float(max(dice_gap)) if dice_gap else float("nan"),
        "per_case": {cid: {"fidelity": fid[i], "residual_regions": region[i], "statistics": stats[i],
                           "noise_hu": noise[i], "dice": dice[i].tolist()} for i, cid in enumerate(ids)},
    }  # fmt: skip


def score_run(paths: RunPaths, threshold: float = 0.5) -> dict:
    """Scores (CV and held-out) and true-Dice spreads of a finished run."""
    from synthcp3d.alarms.samples import case_dice
    from synthcp3d.reports.writer import load_alarm_table

    cv = load_alarm_table(paths.alarm_table, split="cv")
    if not cv:
        raise ValueError(f"{paths.alarm_table} has no 'cv' rows")
    held = load_alarm_table(paths.heldout_table)
    if not held:
        raise ValueError(f"{paths.heldout_table} has no rows")
    cv_true = _matrix(cv, None)
    held_true = []
    for r in held:
        lab_path = paths.hidden_label(r["case_id"])
        if not lab_path.is_file():
            raise FileNotFoundError(f"no hidden label for held-out case {r['case_id']!r} at {lab_path}")
        pred, _ = _load(r["pred"])
        lab, _ = _load(lab_path)
        if pred.shape != lab.shape:
            raise ValueError(f"held-out case {r['case_id']}: segmentation {pred.shape} vs label {lab.shape}")
        held_true.append(case_dice(pred.astype(np.int64), lab.astype(np.int64)))
    held_true = np.asarray(held_true, np.float64).reshape(-1, len(CLASSES))
    return {
        "cases": {"cv": [r["case_id"] for r in cv], "heldout": [r["case_id"] for r in held]},
        "heldout_true": {r["case_id"]: held_true[i].tolist() for i, r in enumerate(held)},
        "spread": {"cv": dice_spread(cv_true), "heldout": dice_spread(held_true)},
        "scores": {"cv": score_split(cv, cv_true, cv_true, threshold),
                   "heldout": score_split(held, held_true, cv_true, threshold)},
        "cv_rows": cv,
    }  # fmt: skip


def run_one(root: str | Path, setting: str, seed: int, *, cases: int, test_cases: int, bundle: Path,
            profile: str = "tiny", amp_dtype: str = "auto", overrides: Mapping | None = None,
            threshold: float = 0.5, rescore: bool = False, log: Callable[[str], None] = print,
            t_start: float | None = None) -> dict:  # fmt: skip
    """One setting x seed: phantom, bundle stages (skipping finished ones), scores and diagnostics.

    Never raises for a failing run: the record has ``status`` "failed", the ``error`` and the ``traceback``.
    A run whose result file exists and whose alarm tables are present is returned as it is (``reused``).
    """
    paths = RunPaths(root)
    t_start = time.perf_counter() if t_start is None else t_start
    overrides = dict(overrides or {})
    config = {"setting": setting, "phantom": SETTINGS[setting], "seed": int(seed), "cases": int(cases),
              "test_cases": int(test_cases), "profile": profile, "overrides": overrides}  # fmt: skip
    record: dict = {"setting": setting, "seed": int(seed), "dir": str(paths.root), "status": "running",
                    "reused": False, "amp_dtype": amp_dtype, "stage_seconds": {}}  # fmt: skip
    tag = f"{setting}/seed{seed}"
    current = "setup"
    try:
        old = _read_json(paths.run_config)
        if old is not None and _json_safe(old.get("config")) != _json_safe(config):
            raise ValueError(f"{paths.root} holds a run with other settings ({paths.run_config}); "
                             "use another --out or delete that folder")  # fmt: skip
        if old is None:
            _dump(paths.run_config, {"config": config})
        cached = _read_json(paths.result)
        if cached and cached.get("status") == "ok" and paths.finished() and not rescore:
            log(f"[synthcp3d study {tag}] finished run reused ({time.perf_counter() - t_start:.0f} s elapsed)")
            return {**cached, "reused": True}
        stages = _read_json(paths.stages, {}) or {}
        finished = paths.finished()
        stage_list = _stage_list()
        n = len(stage_list) + 2
        common = {"dataset_dir": str(paths.data), "output_dir": str(paths.runs), "models_dir": str(paths.models),
                  "amp_dtype": amp_dtype}  # fmt: skip
        skipped = [_stage_key(c) for _, c in stage_list if finished or _stage_key(c) in stages]
        if skipped:
            log(f"[synthcp3d study {tag}] reusing finished stages: {', '.join(skipped)} "
                f"({time.perf_counter() - t_start:.0f} s elapsed)")  # fmt: skip
        for i, (name, cfg) in enumerate(stage_list, start=1):
            key = current = _stage_key(cfg)
            if finished or key in stages:
                record["stage_seconds"][key] = (stages.get(key) or {}).get("seconds")
                continue
            log(f"[synthcp3d study {tag} {i}/{n}] {name} ... ({time.perf_counter() - t_start:.0f} s elapsed)")
            t0 = time.perf_counter()
            if cfg is None:
                from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

                make_pancreas_dataset(paths.data, num_cases=cases, num_test=test_cases, seed=int(seed), progress=False,
                                      hidden_test_labels=HIDDEN_LABELS, **SETTINGS[setting])  # fmt: skip
            else:
                from synthcp3d.demo import run_bundle_config

                extra = {}
                if cfg == "alarm.json":
                    extra = {"alarm_images": heldout_images(paths), "alarm_out": str(paths.alarm_heldout)}
                run_bundle_config(bundle, [cfg], profile, **overrides, **common, **extra)
            sec = time.perf_counter() - t0
            stages[key] = {"seconds": round(sec, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            record["stage_seconds"][key] = round(sec, 1)
            _dump(paths.stages, stages)
            log(f"    done ({sec:.0f} s)")
        current = "scoring"
        log(f"[synthcp3d study {tag} {n - 1}/{n}] scoring CV and held-out cases ... "
            f"({time.perf_counter() - t_start:.0f} s elapsed)")  # fmt: skip
        t0 = time.perf_counter()
        scored = score_run(paths, threshold)
        cv_rows = scored.pop("cv_rows")
        record.update(scored)
        record["stage_seconds"]["scoring"] = round(time.perf_counter() - t0, 1)
        current = "diagnostics"
        log(f"[synthcp3d study {tag} {n}/{n}] diagnostics (G(y), residuals) ... "
            f"({time.perf_counter() - t_start:.0f} s elapsed)")  # fmt: skip
        t0 = time.perf_counter()
        record["diagnostics"] = diagnostics(paths, cv_rows, bundle, profile, overrides, amp_dtype)
        record["stage_seconds"]["diagnostics"] = round(time.perf_counter() - t0, 1)
        record["status"] = "ok"
    except Exception as e:  # a failing run is recorded, the study goes on
        record.update(status="failed", failed_stage=current, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc()[-4000:])  # fmt: skip
        log(f"[synthcp3d study {tag}] FAILED in {current}: {record['error']}")
    record["wall_s"] = round(sum(v for v in record["stage_seconds"].values() if v), 1)
    if record["status"] == "ok":
        _dump(paths.result, record)
    return record


# --------------------------------------------------------------------------------------------- summary
def _agg(values: Sequence[float]) -> dict:
    v = np.asarray([x for x in values if _finite(x)], np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "n": int(v.size)}  # fmt: skip


def summarize(records: Sequence[Mapping]) -> dict:
    """Mean and sample SD over seeds per setting, and over all runs ("pooled"), of every score."""
    ok = [r for r in records if r.get("status") == "ok"]
    groups = {s: [r for r in ok if r["setting"] == s] for s in dict.fromkeys(r["setting"] for r in ok)}
    if ok:
        groups["pooled"] = ok
    out = {}
    for g, runs in groups.items():
        out[g] = {}
        for split in SPLITS:
            methods = list(dict.fromkeys(m for r in runs for m in r["scores"][split]))
            out[g][split] = {m: {c: {k: _agg([r["scores"][split].get(m, {}).get(c, {}).get(k, float("nan"))
                                              for r in runs]) for k in (*METRICS, "n")}
                                 for c in CLASSES} for m in methods}  # fmt: skip
    return out


def _fmt(x, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "–"


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _pm(a: Mapping) -> str:
    if not a.get("n") or not _finite(a.get("mean")):
        return "–"
    return _fmt(a["mean"]) + (f" ± {_fmt(a['sd'])}" if _finite(a.get("sd")) else "")


def render_markdown(study: Mapping) -> str:
    """The ``study.md`` page."""
    lines = ["# SynthCP alarm study (3D pancreas phantom)", "",
             f"- command: `{study['command']}`", f"- CPU capability: {study['cpu_capability']}",
             f"- {study['precision']}; {study.get('torch_threads')} torch threads",
             f"- profile: {study['options']['profile']}; settings: "
             + ", ".join(f"`{s}` {SETTINGS.get(s, {})}" for s in study["options"]["settings"]),
             f"- {study['options']['cases']} training (CV) + {study['options']['test_cases']} held-out cases per "
             f"run, {study['options']['seeds']} seeds; triage threshold {study['options']['threshold']}",
             f"- runs: {sum(r['status'] == 'ok' for r in study['runs'])} ok, "
             f"{sum(r['status'] == 'failed' for r in study['runs'])} failed; study wall time "
             f"{_fmt(study.get('wall_s'), 0)} s", "",
             "All scores x100 (paper Table 2): MAE and STD of |predicted - true Dice|, Pearson (P.C.) and Spearman "
             "(S.C.) correlation, triage = % of cases where predicted Dice < threshold agrees with true Dice < "
             "threshold. Second table: ranking the cases by predicted Dice with risk 1 - true Dice (Zenk et al., "
             "MedIA 2025): AURC = mean selective risk over the coverages, e-AURC = AURC minus that of the optimal "
             "ranking (0 = perfect), both lower is better. Mean ± sample SD over seeds (pooled: over all runs). "
             "`constant` predicts the CV cases' mean true Dice for every case (its correlations are undefined; it "
             "ties every case, a random ranking, so its AURC is the mean risk). CV = out-of-fold cross-validation "
             "cases; held-out = the alarm config on test images whose labels the pipeline never saw.", ""]  # fmt: skip
    tables = []
    for keys in (_IMAGE_LEVEL, _RISK_COVERAGE):
        head = "| method | " + " | ".join(f"{c} {_METRIC_LABELS[k]}" for c in CLASSES for k in keys) + " |"
        tables.append((keys, head, "|---|" + "---:|" * (len(CLASSES) * len(keys))))
    for split, title in (("cv", "cross-validation (out-of-fold)"), ("heldout", "held-out test cases")):
        for g, res in study["summary"].items():
            if split not in res:
                continue
            lines += [f"## {title}: {g}", ""]
            for i, (keys, head, sep) in enumerate(tables):
                lines += ([""] if i else []) + [head, sep]
                for m, per in res[split].items():
                    lines.append(f"| {m} | " + " | ".join(_pm(per[c].get(k, {})) for c in CLASSES for k in keys)
                                 + " |")  # fmt: skip
            ns = {c: res[split][BASELINE][c]["n"]["mean"] if BASELINE in res[split] else float("nan")
                  for c in CLASSES}
            lines += ["", "cases per run: " + ", ".join(f"{c} {_fmt(ns[c], 1)}" for c in CLASSES), ""]
    ok = [r for r in study["runs"] if r["status"] == "ok"]
    lines += ["## true Dice spread", "", "| setting | seed | split | pancreas min / median / max | "
              "tumour min / median / max | tumour < 0.1 | tumour > 0.6 | n |", "|---|---:|---|---|---|---:|---:|---:|"]
    for r in ok:
        for split in SPLITS:
            s = r["spread"][split]
            p, t = s["pancreas"], s["tumour"]
            lines.append(f"| {r['setting']} | {r['seed']} | {split} | {_fmt(p['min'], 2)} / {_fmt(p['median'], 2)} / "
                         f"{_fmt(p['max'], 2)} | {_fmt(t['min'], 2)} / {_fmt(t['median'], 2)} / {_fmt(t['max'], 2)} | "
                         f"{_fmt(t['frac_below_0.1'], 2)} | {_fmt(t['frac_above_0.6'], 2)} | {t['n']} |")  # fmt: skip
    lines += ["", "## diagnostics (CV cases, input grid, x clipped to the HU window)", "",
              "(a) generator fidelity: mean |x - G(y)| in HU with G applied to the ground-truth label, per true class; "
              "noise = mean phantom noise σ, floor = 0.80 σ (E|N(0, σ)|, what a perfect noise-free G would leave).",
              "", "| setting | seed | noise σ | floor | background ≤ 10 mm | pancreas | tumour | tumour / σ |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in ok:
        d = r["diagnostics"]
        f = d["generator_fidelity"]
        lines.append(f"| {r['setting']} | {r['seed']} | {_fmt(d['noise_hu_mean'])} | {_fmt(d['noise_floor_hu'])} | "
                     f"{_fmt(f['background_near']['mean_abs_hu'])} | {_fmt(f['pancreas']['mean_abs_hu'])} | "
                     f"{_fmt(f['tumour']['mean_abs_hu'])} | {_fmt(f['tumour']['ratio_to_noise'], 2)} |")  # fmt: skip
    lines += ["", "(b) residual |x - G(ŷ)| of the pipeline's synthesis (HU), median over cases of the per-case mean "
              "(cases with a non-empty region in brackets).", "",
              "| setting | seed | tumour TP | tumour FP | tumour FN | pancreas correct |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in ok:
        g = r["diagnostics"]["residual_regions"]
        lines.append(f"| {r['setting']} | {r['seed']} | " + " | ".join(
            f"{_fmt(g[k]['median_abs_hu'])} ({g[k]['n']})" for k in ("tumour_tp", "tumour_fp", "tumour_fn",
                                                                   "pancreas_correct")) + " |")  # fmt: skip
    stats = ("pred_tumour", "pred_pancreas", "tumour_shell")
    lines += ["", "(c) Pearson correlation across CV cases of label-free residual statistics (mean |x - G(ŷ)| in the "
              f"predicted tumour, predicted pancreas, a {SHELL_VOXELS}-voxel shell around the predicted tumour) with "
              "the true Dice (Spearman in study.json).", "",
              "| setting | seed | " + " | ".join(f"{s} vs {c}" for s in stats for c in ("tumour", "pancreas")) + " |",
              "|---|---:|" + "---:|" * (2 * len(stats))]  # fmt: skip
    for r in ok:
        cc = r["diagnostics"]["residual_correlations"]
        lines.append(f"| {r['setting']} | {r['seed']} | " + " | ".join(
            _fmt((cc.get(s, {}).get(c) or {}).get("pearson"), 2) for s in stats for c in ("tumour", "pancreas"))
            + " |")  # fmt: skip
    lines += ["", "## runs", "", "| setting | seed | status | reused | wall s | stages (s) |",
              "|---|---:|---|---|---:|---|"]
    for r in study["runs"]:
        st = ", ".join(f"{k} {_fmt(v, 0)}" for k, v in r.get("stage_seconds", {}).items() if v is not None)
        lines.append(f"| {r['setting']} | {r['seed']} | {r['status']} | {r.get('reused', False)} | "
                     f"{_fmt(r.get('wall_s'), 0)} | {st} |")  # fmt: skip
    failed = [r for r in study["runs"] if r["status"] == "failed"]
    if failed:
        lines += ["", "## failures", ""]
        lines += [f"- {r['setting']}/seed{r['seed']} in {r.get('failed_stage')}: `{r.get('error')}` "
                  f"(traceback in study.json)" for r in failed]  # fmt: skip
    return "\n".join(lines) + "\n"


def render_csv(records: Sequence[Mapping]) -> str:
    """``study.csv``: one row per setting x seed x split x method x class of the finished runs."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["setting", "seed", "split", "method", "class", "n", *METRICS])
    for r in records:
        if r.get("status") != "ok":
            continue
        for split in SPLITS:
            for m, per in r["scores"][split].items():
                for c in CLASSES:
                    s = per[c]
                    w.writerow([r["setting"], r["seed"], split, m, c, s["n"],
                                *(f"{s[k]:.4f}" if _finite(s.get(k)) else "" for k in METRICS)])
    return buf.getvalue()


def write_outputs(out: Path, study: dict) -> None:
    """Write ``study.json``, ``study.md`` and ``study.csv`` atomically."""
    from synthcp3d.data.io import atomic_write_text

    study["summary"] = summarize(study["runs"])
    safe = _json_safe(study)
    atomic_write_text(out / "study.json", json.dumps(safe, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "study.md", render_markdown(safe))
    atomic_write_text(out / "study.csv", render_csv(safe["runs"]))


def study_command(out: Path, *, seeds: int, settings: Sequence[str], cases: int, test_cases: int, amp_dtype: str,
                  profile: str, bundle: Path, overrides: Mapping | None, threshold: float,
                  threads: int | None = None) -> str:
    """The ``synthcp3d study`` command line that reruns (resumes) this study."""
    args = ["synthcp3d", "study", "--out", str(out), "--seeds", str(seeds), "--settings", ",".join(settings),
            "--cases", str(cases), "--test-cases", str(test_cases), "--amp-dtype", amp_dtype, "--profile", profile,
            "--bundle", str(bundle), "--threshold", str(threshold)]  # fmt: skip
    if threads is not None:
        args += ["--threads", str(threads)]
    for k, v in (overrides or {}).items():
        args += ["--override", f"{k}={json.dumps(v)}"]
    return " ".join(shlex.quote(a) for a in args)


def run_study(out: str | Path, *, seeds: int = 3, settings: Sequence[str] = DEFAULT_SETTINGS,
              cases: int = DEFAULT_CASES, test_cases: int = DEFAULT_TEST_CASES, amp_dtype: str = "auto",
              profile: str = "tiny", bundle: str | Path | None = None, overrides: Mapping | None = None,
              threshold: float = 0.5, rescore: bool = False, threads: int | None = None) -> int:  # fmt: skip
    """Run the study into ``out``; returns 0 when every run finished, 1 when some failed (all recorded).

    ``threads``: ``torch.set_num_threads`` for the whole study (None: torch's default, one per core). On a machine
    that other jobs share, 1 can be much faster: with 2 intra-op threads on 2 busy cores a SPADE step measured
    10-20x slower than with 1 thread (the threads wait for each other at every op)."""
    import torch

    from synthcp3d.demo import default_bundle
    from synthcp3d.engines.precision import parse_amp_dtype, resolve_precision, set_flush_denormals

    amp_dtype = parse_amp_dtype(amp_dtype)
    if threads is not None:
        torch.set_num_threads(int(threads))
    set_flush_denormals(True)  # before the first torch op, as the demo does
    bundle = Path(bundle or default_bundle()).resolve()
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    reserved = sorted(set(overrides or {}) & RESERVED_OVERRIDES)
    if reserved:
        raise ValueError(f"overrides {reserved} are set by the study itself")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(amp_dtype).describe()
    command = study_command(out, seeds=seeds, settings=settings, cases=cases, test_cases=test_cases,
                            amp_dtype=amp_dtype, profile=profile, bundle=bundle, overrides=overrides,
                            threshold=threshold, threads=threads)  # fmt: skip
    print(f"[synthcp3d study] {precision}; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"{torch.get_num_threads()} torch threads", flush=True)  # fmt: skip
    study = {"command": command, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "precision": precision,
             "torch_threads": torch.get_num_threads(), "bundle": str(bundle),
             "options": {"seeds": seeds, "settings": list(settings), "cases": cases, "test_cases": test_cases,
                         "amp_dtype": amp_dtype, "profile": profile, "overrides": dict(overrides or {}),
                         "threshold": threshold},
             "settings": {s: SETTINGS[s] for s in settings}, "runs": []}  # fmt: skip
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    for setting in settings:
        for seed in range(seeds):
            rec = run_one(out / setting / f"seed{seed}", setting, seed, cases=cases, test_cases=test_cases,
                          bundle=bundle, profile=profile, amp_dtype=amp_dtype, overrides=overrides,
                          threshold=threshold, rescore=rescore, log=log, t_start=t_start)  # fmt: skip
            study["runs"].append(rec)
            study["wall_s"] = time.perf_counter() - t_start
            write_outputs(out, study)
    n_failed = sum(r["status"] != "ok" for r in study["runs"])
    print(f"[synthcp3d study] finished in {time.perf_counter() - t_start:.0f} s: {len(study['runs']) - n_failed} "
          f"runs ok, {n_failed} failed; {out / 'study.md'}", flush=True)  # fmt: skip
    return 1 if n_failed else 0
