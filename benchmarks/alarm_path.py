"""Per-case time of the alarm path, fp32 contiguous vs the ``auto`` precision, side by side in one run.

The path for one new CT volume: segment it (sliding window, inverted onto the input grid), synthesize
x_hat = G(y_hat) (sliding window, inverted), then the SynthCP comparator, Direct Prediction and the shape
VAE on the pancreas crop, with the SynthCP error map pasted back onto the input grid. Networks have the
bundle's tiny-profile widths with random weights (timing does not depend on training). Each setting runs in a
fresh subprocess, which also reports its peak RSS and the time of each stage.

Settings:

- ``fp32``: ``amp_dtype="float32"`` with contiguous tensors. The engines convert every network input to
  channels-last whatever the precision, so this worker replaces their ``to_channels_last`` with
  ``.contiguous()`` (which also undoes inputs that are channels-last by construction, e.g. ``one_hot().movedim``);
  a forward pre-hook records the memory format the networks actually receive (the "layout" column);
- ``auto``: ``amp_dtype="auto"`` as the bundles run it: whatever
  :func:`synthcp3d.engines.precision.resolve_precision` gives on this CPU (bf16 autocast only with native bf16,
  AVX512-BF16 or AMX; else fp32), with channels-last inputs.

Every row states the CPU capability (``torch.backends.cpu.get_cpu_capability()`` and the CPU model) and the
resolved precision (``Precision.describe()``).

    .venv/bin/python benchmarks/alarm_path.py --size 256 256 96 --reps 2
    .venv/bin/python benchmarks/alarm_path.py --size 128 128 48 --reps 1 --threads 1   # on a shared CPU
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

SETTINGS = {"fp32": "float32", "auto": "auto"}


def _contiguous_only() -> None:
    """Make every ``to_channels_last`` the engines imported return contiguous tensors (the fp32-contiguous setting)."""
    import synthcp3d.alarms.augment  # noqa: F401  (import every user before patching their copies)
    import synthcp3d.alarms.comparator  # noqa: F401
    import synthcp3d.alarms.vae  # noqa: F401
    import synthcp3d.engines.inferers  # noqa: F401
    import synthcp3d.engines.segmentation  # noqa: F401
    import synthcp3d.engines.spade  # noqa: F401

    for name, mod in list(sys.modules.items()):
        if name.startswith("synthcp3d.") and hasattr(mod, "to_channels_last"):
            mod.to_channels_last = lambda x: x.contiguous()  # also for inputs built channels-last (one_hot().movedim)


def _worker(root: Path, setting: str, reps: int) -> dict:
    import copy
    import dataclasses

    import torch

    # as the bundle's alarm config and the demo do, before the first torch op (every intra-op thread inherits it)
    torch.set_flush_denormal(True)
    if setting == "fp32":
        _contiguous_only()
    from synthcp3d.alarms.comparator import predict_comparator
    from synthcp3d.alarms.samples import build_samples, load_index
    from synthcp3d.alarms.vae import vae_features
    from synthcp3d.data.msd import msd_datalist
    from synthcp3d.engines.precision import cpu_description, resolve_precision
    from synthcp3d.engines.segmentation import predict_volumes
    from synthcp3d.engines.spade import synthesize_volumes
    from synthcp3d.networks import DirectPredictor, Segmenter, ShapeVAE, SiameseComparator, SPADEGenerator

    amp = SETTINGS[setting]
    precision = resolve_precision(amp, "cpu")
    if setting == "fp32":  # what this worker runs: the engines' channels-last conversion is disabled above
        precision = dataclasses.replace(precision, channels_last=False)
    torch.manual_seed(0)
    seg = Segmenter(3, 1, 3, backbone="unet", unet_channels=(16, 32, 64, 128), unet_res_units=1, feature_channels=8)
    gen = SPADEGenerator(3, 3, 1, ngf=8, num_up=3, hidden_channels=32)
    comp = SiameseComparator(3, 1, 3, widen_factor=0.25)
    direct = DirectPredictor(3, 1, 3, widen_factor=0.25)
    vae = ShapeVAE(3, in_shape=(32, 32, 32), in_channels=2, include_background=True, latent_size=16,
                   channels=(8, 16, 32))  # fmt: skip
    layouts: dict[str, set[str]] = {}

    def watch(name: str):
        def hook(_module, args):
            # a 1-channel tensor is both layouts at once: judge by the multi-channel inputs
            for x in (a for a in args if isinstance(a, torch.Tensor) and a.ndim == 5):
                if x.shape[1] == 1:
                    kind = "1-channel"
                elif x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
                    kind = "channels-last"
                else:
                    kind = "contiguous"
                layouts.setdefault(name, set()).add(kind)

        return hook

    for name, net in (("segmenter", seg), ("generator", gen), ("comparator", comp), ("direct", direct),
                      ("vae", vae)):  # fmt: skip
        net.register_forward_pre_hook(watch(name))
    items = msd_datalist(root, "test", check="none")
    best: dict[str, float] = {}
    for r in range(reps):
        out = Path(tempfile.mkdtemp(prefix=f"alarm_{setting}_{r}_"))
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
    def kinds(vs: set[str]) -> str:
        vs = vs - {"1-channel"} or vs  # a 1-channel tensor says nothing when a multi-channel one is there
        return "+".join(sorted(vs))

    layout = ", ".join(f"{k}: {kinds(vs)}" for k, vs in layouts.items()) or "?"
    return {"setting": setting, "seconds_per_case": best["total"], "stages": best, "peak_rss_mb": peak_mb,
            "cpu": cpu_description(), "precision": precision.describe().removeprefix("precision: "),
            "name": precision.name, "layout": layout, "threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=(256, 256, 96))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's, = cores)")
    ap.add_argument("--worker", nargs=2, metavar=("ROOT", "SETTING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        root, setting = args.worker
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(_worker(Path(root), setting, args.reps)))
        return
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_pancreas_dataset(tmp, num_cases=1, size=tuple(args.size), seed=0, num_test=1, progress=False)
        load0 = os.getloadavg()
        rows = []
        for setting in SETTINGS:
            cmd = [sys.executable, __file__, "--worker", str(root), setting, "--reps", str(args.reps)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = rows[0]["seconds_per_case"]
    load1 = os.getloadavg()
    print(f"alarm path, one {tuple(args.size)} CT volume, tiny-profile widths, {rows[0]['threads']} threads; "
          f"load average {load0} -> {load1}; {time.time() - start:.0f} s")  # fmt: skip
    print()
    print("| setting | CPU capability | resolved precision | layout seen by the networks | s / case "
          "| speed-up vs fp32 | peak RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        name = "fp32 contiguous" if r["setting"] == "fp32" else "auto"
        sec = r["seconds_per_case"]
        print(f"| {name} | {r['cpu']} | {r['precision']} | {r['layout']} | {sec:.2f} | {base / sec:.2f}x "
              f"| {r['peak_rss_mb']:.0f} |")  # fmt: skip
    print()
    print(f"Per stage, s / case (best repetition by total); CPU capability {rows[0]['cpu']}; "
          f"fp32 = {rows[0]['precision']}, run contiguous; auto = {rows[1]['precision']}:")  # fmt: skip
    print()
    print(f"| stage | fp32 contiguous | auto ({rows[1]['name']}) | speed-up |")
    print("|---|---|---|---|")
    for stage in rows[0]["stages"]:
        a, b = rows[0]["stages"][stage], rows[1]["stages"][stage]
        print(f"| {stage} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
