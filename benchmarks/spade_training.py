"""Peak memory and step time of one 3D SPADE training step (G update + D update) under three settings.

Each setting runs in a fresh subprocess (so ``ru_maxrss`` is that setting's own peak); the parent prints one
table with ratios to plain fp32. The step is :func:`synthcp3d.engines.spade.spade_step`, i.e. exactly what
``train_spade`` runs per iteration.

    .venv/bin/python benchmarks/spade_training.py            # 96^3, ngf 16, num_up 4 (about 5-8 min on 2 cores)
    .venv/bin/python benchmarks/spade_training.py --size 48 --steps 2   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "fp32": {"amp": None, "channels_last": False, "checkpointing": False},
    "bf16+cl": {"amp": "bfloat16", "channels_last": True, "checkpointing": False},
    "bf16+cl+ckpt": {"amp": "bfloat16", "channels_last": True, "checkpointing": True},
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from synthcp3d.engines.inferers import to_channels_last
    from synthcp3d.engines.spade import spade_step
    from synthcp3d.networks import ConditionalDiscriminator, SPADEGenerator

    torch.set_num_threads(args.threads)
    cfg = SETTINGS[args.child]
    torch.manual_seed(0)
    g = SPADEGenerator(3, label_nc=3, ngf=args.ngf, num_up=args.num_up, hidden_channels=args.hidden,
                       checkpointing=cfg["checkpointing"])  # fmt: skip
    d = ConditionalDiscriminator(3, label_nc=3, channels=args.d_channels, num_d=2, num_layers_d=args.d_layers)
    opt_g = torch.optim.Adam(g.parameters(), 1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), 4e-4, betas=(0.0, 0.9))
    s = args.size
    lab = torch.zeros(1, s, s, s, dtype=torch.long)
    lab[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4, s // 3 : 2 * s // 3] = 1
    lab[:, s // 2 - s // 8 : s // 2, s // 2 - s // 8 : s // 2, s // 2 - s // 8 : s // 2] = 2
    seg = F.one_hot(lab, 3).movedim(-1, 1).float()
    real = torch.rand(1, 1, s, s, s) * 2 - 1
    if cfg["channels_last"]:
        seg, real = to_channels_last(seg), to_channels_last(real)
    base = _rss_mb()
    times, skipped = [], 0
    for i in range(args.steps + 1):  # the first step is a warm-up
        t = time.perf_counter()
        losses, _ = spade_step(g, d, opt_g, opt_d, seg, real, amp_dtype=cfg["amp"])
        if i:
            times.append(time.perf_counter() - t)
        skipped += int(losses["skipped_g"] + losses["skipped_d"])
    return {"setting": args.child, "step_s": statistics.median(times), "peak_mb": _rss_mb(), "base_mb": base,
            "loss_g": losses["loss_g"], "skipped": skipped,
            "g_params_m": sum(p.numel() for p in g.parameters()) / 1e6,
            "d_params_m": sum(p.numel() for p in d.parameters()) / 1e6}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96, help="cubic patch size")
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--num-up", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32, help="SPADE hidden channels")
    p.add_argument("--d-channels", type=int, default=64)
    p.add_argument("--d-layers", type=int, default=2, help="num_layers_d (3, the default, does not fit 96^3)")
    p.add_argument("--steps", type=int, default=2, help="timed steps (median), after one warm-up step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows = []
    for name in args.settings:
        cmd = [sys.executable, __file__, "--child", name] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "settings")
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {name}: {rows[-1]['step_s']:.2f} s, peak {rows[-1]['peak_mb']:.0f} MB", flush=True)
    print(f"load average after: {os.getloadavg()}")
    r0 = rows[0]
    print(f"\nSPADE step at {args.size}^3, batch 1: G ngf {args.ngf}, num_up {args.num_up}, hidden {args.hidden} "
          f"({r0['g_params_m']:.1f} M params); D channels {args.d_channels}, num_d 2, num_layers_d {args.d_layers} "
          f"({r0['d_params_m']:.1f} M params); {args.threads} threads, median of {args.steps} steps\n")  # fmt: skip
    print("| setting | step s | x fp32 time | peak RSS MB | x fp32 peak | peak - baseline MB | x fp32 | skipped |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d0, d = r0["peak_mb"] - r0["base_mb"], r["peak_mb"] - r["base_mb"]
        print(f"| {r['setting']} | {r['step_s']:.2f} | {r['step_s'] / r0['step_s']:.2f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] / r0['peak_mb']:.2f} | {d:.0f} | {d / d0:.2f} | {r['skipped']} |")  # fmt: skip


if __name__ == "__main__":
    main()
