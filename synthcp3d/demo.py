"""The one-command demo behind ``make demo`` / ``synthcp3d demo``.

Stage 1 (now): generate the phantom datasets in their real on-disk layouts and report what was written.
Later stages (segmenter cross-validation, SPADE, comparator, VAE alarm, report) are appended here as
the 3D pipeline lands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["run_demo"]


def _stage(name: str):
    print(f"[synthcp3d demo] {name} ...", flush=True)
    return time.perf_counter()


def run_demo(out: Path, seed: int = 0) -> int:
    """Run the demo into ``out``; returns an exit code."""
    from synthcp3d.data.msd import msd_datalist
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    out = Path(out)
    t0 = _stage("pancreas phantom (MSD Task07 layout)")
    root = make_pancreas_dataset(out / "data" / "Task07_Pancreas", num_cases=12, size=(96, 96, 48), seed=seed)
    cases = msd_datalist(root, "training", check="full")
    meta = json.loads((root / "phantom_meta.json").read_text())["cases"]
    tumour = sorted(meta[c["case_id"]]["tumour_ml"] for c in cases)
    print(f"  {len(cases)} training cases + {len(msd_datalist(root, 'test'))} test cases in {root} "
          f"({time.perf_counter() - t0:.1f} s); tumour volume {tumour[0]:.1f}-{tumour[-1]:.1f} ml")

    try:
        from synthcp3d.data.phantom_scenes import make_scene_dataset
    except ImportError:  # the 2D phantom lands separately
        return 0
    for style in ("cityscapes", "streethazards"):
        t0 = _stage(f"{style} scene phantom")
        scene_root = make_scene_dataset(out / "data" / style, style=style, num_images=8, size=(128, 256), seed=seed)
        print(f"  wrote {scene_root} ({time.perf_counter() - t0:.1f} s)")
    return 0
