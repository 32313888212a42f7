"""Time and peak memory of every synthcp3d network: fp32 contiguous vs bf16 autocast + channels_last(_3d).

Each (network, size, mode) runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own. Forward is
timed in eval mode under ``no_grad``; forward+backward in train mode on the mean of the outputs. Times are
the best (minimum) of ``--reps`` after one warm-up step: the CPU is shared, and the minimum is the least
disturbed by other processes. The two modes of one network and size run back to back, so
their ratio is measured under the same machine load (printed, since the CPU may be shared).

Profiles (widths) -- "tiny": what trains in minutes on a CPU; "paper": the paper's networks where a CPU
can still run them (AHNet as in MONAI, full-width ResNet-18, SPADE at ngf 16 / 64 hidden in 3D; the 2D
generator at the NVlabs ngf 64 / 128 hidden).

    python benchmarks/networks.py                      # tiny, 64^3 and 96^3, 3 reps (< 10 min on 2 cores)
    python benchmarks/networks.py --profile paper --sizes 64 --reps 2
    python benchmarks/networks.py --threads 1          # steadier when other processes share the cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

NETS = ("generator", "discriminator", "segmenter", "comparator", "shape_vae", "generator_2d")
PROFILES = {
    "tiny": {
        "generator": {"ngf": 8, "hidden_channels": 32},
        "generator_2d": {"ngf": 16, "hidden_channels": 64},
        "discriminator": {"channels": 16, "num_layers_d": 2},
        "segmenter": {"backbone": "unet", "unet_channels": (16, 32, 64, 128), "feature_channels": 16},
        "comparator": {"widen_factor": 0.25, "fuse_channels": 16, "hidden": 64},
        "shape_vae": {"channels": (8, 16, 32, 64), "latent_size": 32},
    },
    "paper": {
        "generator": {"ngf": 16, "hidden_channels": 64},
        "generator_2d": {"ngf": 64, "hidden_channels": 128},
        "discriminator": {"channels": 64, "num_layers_d": 2},
        "segmenter": {"backbone": "ahnet", "psp_block_num": 2, "feature_channels": 32},
        "comparator": {"widen_factor": 1.0},
        "shape_vae": {"channels": (16, 32, 64, 128), "latent_size": 64},
    },
}
LABELS_3D, LABELS_2D = 3, 19


def build(net: str, profile: str, size: int):
    """(model, inputs) for one network at ``size``^3 (the 2D generator: 256x512, 19 labels, RGB)."""
    import torch

    from synthcp3d.networks import (
        ConditionalDiscriminator,
        Segmenter,
        ShapeVAE,
        SiameseComparator,
        SPADEGenerator,
    )

    kw = PROFILES[profile][net]
    g = torch.Generator().manual_seed(0)
    s3 = (size,) * 3

    def onehot(n: int, shape) -> torch.Tensor:
        lab = torch.randint(0, n, (1, *shape), generator=g)
        return torch.nn.functional.one_hot(lab, n).movedim(-1, 1).float()

    if net == "generator":
        return SPADEGenerator(3, LABELS_3D, 1, num_up=5, **kw), (onehot(LABELS_3D, s3),)
    if net == "generator_2d":
        return SPADEGenerator(2, LABELS_2D, 3, num_up=5, **kw), (onehot(LABELS_2D, (256, 512)),)
    if net == "discriminator":
        model = ConditionalDiscriminator(3, LABELS_3D, 1, num_d=2, **kw)
        return model, (onehot(LABELS_3D, s3), torch.rand(1, 1, *s3, generator=g))
    if net == "segmenter":
        return Segmenter(3, 1, LABELS_3D, **kw), (torch.rand(2, 1, *s3, generator=g),)
    if net == "comparator":
        model = SiameseComparator(3, 1, LABELS_3D, shared_weights=False, **kw)
        x = torch.rand(1, 1, *s3, generator=g)
        return model, (x, torch.rand(1, 1, *s3, generator=g), onehot(LABELS_3D, s3))
    if net == "shape_vae":
        return ShapeVAE(3, s3, 2, **kw), (onehot(2, s3),)
    raise ValueError(net)


def _scalar(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out.float().mean()
    values = out.values() if isinstance(out, dict) else out
    return sum(_scalar(v) for v in values)


def worker(net: str, profile: str, size: int, mode: str, reps: int) -> dict:
    import torch

    torch.manual_seed(0)
    model, inputs = build(net, profile, size)
    bf16 = mode == "bf16_cl"
    if bf16:
        fmt = torch.channels_last_3d if inputs[0].ndim == 5 else torch.channels_last
        model = model.to(memory_format=fmt)
        inputs = tuple(t.contiguous(memory_format=fmt) for t in inputs)

    def run(train: bool) -> float:
        model.train(train)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(train):
            out = model(*inputs)
            loss = _scalar(out)
        if train:
            loss.backward()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    run(True)  # warm-up
    fwd = min(run(False) for _ in range(reps))
    fwd_bwd = min(run(True) for _ in range(reps))
    return {
        "fwd": fwd,
        "fwd_bwd": fwd_bwd,
        "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def measure(net: str, profile: str, size: int, mode: str, reps: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", net, profile, str(size), mode, str(reps)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="3D cube edge lengths")
    p.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's, = cores)")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        net, profile, size, mode, reps = args.worker
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(worker(net, profile, int(size), mode, int(reps))))
        return

    import torch

    start = time.time()
    threads = args.threads or torch.get_num_threads()
    print(f"# profile={args.profile} reps={args.reps} torch={torch.__version__} threads={threads}")
    print(f"# loadavg at start: {os.getloadavg()}")
    header = (
        "| network | size | params (M) | fwd fp32 (s) | fwd bf16+CL (s) | fwd ratio | fwd+bwd fp32 (s) "
        "| fwd+bwd bf16+CL (s) | fwd+bwd ratio | peak RSS fp32 / bf16 (GB) | loadavg (1 min) |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for net in args.nets:
        sizes = ["256x512"] if net == "generator_2d" else args.sizes
        for size in sizes:
            edge = 0 if net == "generator_2d" else size
            a = measure(net, args.profile, edge, "fp32", args.reps, args.threads)
            b = measure(net, args.profile, edge, "bf16_cl", args.reps, args.threads)
            load = os.getloadavg()[0]
            shape = size if isinstance(size, str) else f"{size}³"
            if "error" in a or "error" in b:
                print(f"| {net} | {shape} | failed: {a.get('error') or b.get('error')} |")
                continue
            print(
                f"| {net} | {shape} | {a['params_m']:.2f} | {a['fwd']:.3f} | {b['fwd']:.3f} | "
                f"{a['fwd'] / b['fwd']:.2f}× | {a['fwd_bwd']:.3f} | {b['fwd_bwd']:.3f} | "
                f"{a['fwd_bwd'] / b['fwd_bwd']:.2f}× | {a['rss_gb']:.2f} / {b['rss_gb']:.2f} | {load:.2f} |",
                flush=True,
            )
    print(f"# loadavg at end: {os.getloadavg()}; total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
