"""Per-case time of the alarm path, fp32 contiguous vs bf16 autocast + channels-last, side by side.

The path for one new CT volume: segment it (sliding window, inverted onto the input grid), synthesize
x_hat = G(y_hat) (sliding window, inverted), then the SynthCP comparator, Direct Prediction and the shape
VAE on the pancreas crop, with the SynthCP error map pasted back onto the input grid. Networks have the
bundle's tiny-profile widths with random weights (timing does not depend on training). Each setting runs in a
fresh subprocess, which also reports its peak RSS and the time of each stage.

    .venv/bin/python benchmarks/alarm_path.py --size 256 256 96 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(root: Path, amp: str | None, reps: int) -> dict:
    import copy

    import torch

    # as the bundle's alarm config and the demo do, before the first torch op (every intra-op thread inherits it)
    torch.set_flush_denormal(True)
    from synthcp3d.alarms.comparator import predict_comparator
    from synthcp3d.alarms.samples import build_samples, load_index
    from synthcp3d.alarms.vae import vae_features
    from synthcp3d.data.msd import msd_datalist
    from synthcp3d.engines.segmentation import predict_volumes
    from synthcp3d.engines.spade import synthesize_volumes
    from synthcp3d.networks import DirectPredictor, Segmenter, ShapeVAE, SiameseComparator, SPADEGenerator

    torch.manual_seed(0)
    seg = Segmenter(3, 1, 3, backbone="unet", unet_channels=(16, 32, 64, 128), unet_res_units=1, feature_channels=8)
    gen = SPADEGenerator(3, 3, 1, ngf=8, num_up=3, hidden_channels=32)
    comp = SiameseComparator(3, 1, 3, widen_factor=0.25)
    direct = DirectPredictor(3, 1, 3, widen_factor=0.25)
    vae = ShapeVAE(3, in_shape=(32, 32, 32), in_channels=2, include_background=True, latent_size=16,
                   channels=(8, 16, 32))  # fmt: skip
    items = msd_datalist(root, "test", check="none")
    best: dict[str, float] = {}
    for r in range(reps):
        out = Path(tempfile.mkdtemp(prefix=f"alarm_{amp}_{r}_"))
        t = {}
        t0 = time.perf_counter()
        index = predict_volumes(seg, items, out / "pred", roi_size=(32, 32, 32), amp_dtype=amp, progress=False)
        t["segment"] = time.perf_counter()
        synthesize_volumes(gen, index, out / "synth", roi_size=(32, 32, 32), amp_dtype=amp, progress=False)
        t["synthesize"] = time.perf_counter()
        cases = load_index({k: {**v, "split": "test", "fold": None} for k, v in index.items()}, out / "synth",
                           splits=("test",))  # fmt: skip
        samples = build_samples(cases, roi_size=(32, 32, 32), pixdim=(2.0, 2.0, 2.5), hu_window=(-87.0, 199.0),
                                pred_input="onehot")  # fmt: skip
        t["crops"] = time.perf_counter()
        predict_comparator(comp, samples, amp_dtype=amp, error_map_dir=out / "error_maps")
        t["synthcp + error map"] = time.perf_counter()
        predict_comparator(direct, samples, amp_dtype=amp)
        vae_features(copy.deepcopy(vae), [s["pred_mask"] for s in samples], amp_dtype=amp)
        t["direct + vae"] = time.perf_counter()
        stages, prev = {}, t0
        for name, stamp in t.items():
            stages[name] = (stamp - prev) / len(items)
            prev = stamp
        stages["total"] = (prev - t0) / len(items)
        if not best or stages["total"] < best["total"]:
            best = stages
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"amp": amp, "seconds_per_case": best["total"], "stages": best, "peak_rss_mb": peak_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=(256, 256, 96))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("ROOT", "AMP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        root, amp = args.worker
        print(json.dumps(_worker(Path(root), None if amp == "fp32" else amp, args.reps)))
        return
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = make_pancreas_dataset(tmp, num_cases=1, size=tuple(args.size), seed=0, num_test=1, progress=False)
        load0 = os.getloadavg()
        rows = []
        for amp in ("fp32", "bfloat16"):
            r = subprocess.run([sys.executable, __file__, "--worker", str(root), amp, "--reps", str(args.reps)],
                               capture_output=True, text=True, check=True)  # fmt: skip
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = rows[0]["seconds_per_case"]
    load1 = os.getloadavg()
    print(f"alarm path, one {tuple(args.size)} CT volume, tiny-profile widths; load average {load0} -> {load1}")
    print("| setting | s / case | speed-up vs fp32 | peak RSS MB |")
    print("|---|---|---|---|")
    for r in rows:
        name = "fp32 contiguous" if r["amp"] is None else "bf16 autocast + channels-last"
        sec = r["seconds_per_case"]
        print(f"| {name} | {sec:.2f} | {base / sec:.2f}x | {r['peak_rss_mb']:.0f} |")
    print()
    print("Per stage, s / case (best repetition by total):")
    print("| stage | fp32 | bf16 + CL | speed-up |")
    print("|---|---|---|---|")
    for stage in rows[0]["stages"]:
        a, b = rows[0]["stages"][stage], rows[1]["stages"][stage]
        print(f"| {stage} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
