"""The one-command demo behind ``make demo`` / ``synthcp3d demo``.

Generates a pancreas phantom in the MSD Task07 layout and runs every config of the
``pancreas_synthcp`` bundle in order on the ``tiny`` profile through MONAI's bundle runner (the same
``python -m monai.bundle run`` a user types), printing one progress line per stage, and ends with the
Table-2 summary of the cross-validation cases and the path of the HTML report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEMO_STAGES", "default_bundle", "run_bundle_config", "run_demo"]

# (stage name, bundle config) in pipeline order
DEMO_STAGES: tuple[tuple[str, str], ...] = (
    ("segmenter cross-validation", "crossval.json"),
    ("3D SPADE training", "train_spade.json"),
    ("synthesis x_hat = G(y_hat)", "synthesize.json"),
    ("SynthCP comparator + Direct Prediction (out-of-fold)", "train_comparator.json"),
    ("VAE alarm (out-of-fold)", "train_vae.json"),
    ("ensemble + conformal intervals", "ensemble.json"),
    ("report", "evaluate.json"),
    ("export the trained models", "export_models.json"),
    ("alarm on the test images (the new-image path)", "alarm.json"),
)


def default_bundle() -> Path:
    """The repository's ``bundles/pancreas_synthcp`` (the package is installed editable from the repo)."""
    return Path(__file__).resolve().parents[1] / "bundles" / "pancreas_synthcp"


def run_bundle_config(bundle: Path, configs: Sequence[str], profile: str = "tiny", **overrides) -> None:
    """Run ``configs`` of ``bundle`` after ``common.json`` and the profile, as ``monai.bundle run`` does."""
    from monai.bundle import run

    files = [str(bundle / "configs" / c) for c in ("common.json", f"profiles/{profile}.json", *configs)]
    run(config_file=files, meta_file=str(bundle / "configs/metadata.json"),
        logging_file=str(bundle / "configs/logging.conf"), bundle_root=str(bundle), **overrides)  # fmt: skip


def _dice_spread(index: dict) -> str:
    """One line with the spread of the cross-validation Dice (what the alarms must learn to predict)."""
    import nibabel as nib
    import numpy as np

    from synthcp3d.alarms.samples import case_dice

    dice = np.array([case_dice(np.asarray(nib.load(r["pred"]).dataobj), np.asarray(nib.load(r["label"]).dataobj))
                     for r in index.values() if r.get("label")])  # fmt: skip
    p, t = dice[:, 0], dice[:, 1]
    return (f"CV tumour Dice min {np.nanmin(t):.2f} / median {np.nanmedian(t):.2f} / max {np.nanmax(t):.2f} "
            f"over {len(t)} cases; pancreas Dice median {np.nanmedian(p):.2f}")


def run_demo(out: Path, seed: int = 0, bundle: Path | None = None, cases: int = 32, amp_dtype: str = "auto") -> int:
    """Run the demo into ``out`` with precision ``amp_dtype`` (see ``engines.precision``); returns an exit code."""
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset
    from synthcp3d.engines.precision import parse_amp_dtype, resolve_precision, set_flush_denormals

    amp_dtype = parse_amp_dtype(amp_dtype)
    # before the first torch op, so that every intra-op thread inherits it: SPADE's activations go denormal, and
    # the CPU computes denormals in microcode (a 3D GAN step measured 14.4 -> 2.2 CPU s, engines.precision)
    set_flush_denormals(True)
    print(f"[synthcp3d demo] {resolve_precision(amp_dtype).describe()}", flush=True)
    out = Path(out).resolve()
    bundle = Path(bundle or default_bundle())
    if not (bundle / "configs" / "common.json").is_file():
        raise FileNotFoundError(f"bundle not found at {bundle}: pass --bundle bundles/pancreas_synthcp")
    t_start = time.perf_counter()

    def stage(i: int, n: int, name: str) -> float:
        print(f"[synthcp3d demo {i}/{n}] {name} ... ({time.perf_counter() - t_start:.0f} s elapsed)", flush=True)
        return time.perf_counter()

    n = len(DEMO_STAGES) + 1
    t0 = stage(1, n, "pancreas phantom (MSD Task07 layout, pancreas-centred 64x64x32 regions)")
    data = make_pancreas_dataset(out / "data" / "Task07_Pancreas", num_cases=cases, size=(64, 64, 32), seed=seed,
                                 num_test=4, field_of_view_mm=(128, 128, 80), roi_center="pancreas")  # fmt: skip
    print(f"    wrote {data} ({time.perf_counter() - t0:.0f} s)", flush=True)
    runs = out / "runs"
    for i, (name, config) in enumerate(DEMO_STAGES, start=2):
        t0 = stage(i, n, name)
        run_bundle_config(bundle, [config], dataset_dir=str(data), output_dir=str(runs), models_dir=str(out / "models"),
                          amp_dtype=amp_dtype)  # fmt: skip
        print(f"    done ({time.perf_counter() - t0:.0f} s)", flush=True)
        if config == "crossval.json":
            index = json.loads((runs / "segmenter/predictions/index.json").read_text())
            print("    " + _dice_spread(index), flush=True)
    from synthcp3d.reports.table2 import format_summary, summarize
    from synthcp3d.reports.writer import load_alarm_table

    rows = load_alarm_table(runs / "alarms" / "alarm_table.json")
    print(format_summary(summarize([r for r in rows if r["split"] == "cv"])), flush=True)
    print(f"[synthcp3d demo] finished in {time.perf_counter() - t_start:.0f} s; outputs under {runs}", flush=True)
    print(f"models for new images (alarm config, MONAI Label app): {out / 'models'}", flush=True)
    print(f"report: {runs / 'report' / 'report.html'}", flush=True)
    return 0
