"""Time and peak memory of every synthcp3d network: fp32 contiguous vs fp32 channels-last vs ``auto`` precision.

Modes (the same model and inputs, side by side in one run):

- ``fp32``: fp32, contiguous inputs and weights;
- ``fp32+CL``: fp32, ``channels_last``/``channels_last_3d`` inputs and weights;
- ``auto``: whatever :func:`synthcp3d.engines.precision.resolve_precision` gives for ``"auto"`` on this CPU (bf16
  autocast only with native bf16, i.e. AVX512-BF16 or AMX, else fp32), with its channels-last setting.

Every table is captioned with the CPU capability (``torch.backends.cpu.get_cpu_capability()``, the CPU model and
its bf16 support) and the resolved ``auto`` precision, and its ``auto`` columns name the resolved dtype.

Each (network, size, mode, repetition) runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own:
one warm-up step, then one forward in eval mode under ``no_grad`` and one forward+backward in train mode on the
mean of the outputs. The modes alternate (fp32, fp32+CL, auto, fp32, ...) ``--reps`` times, so a change of machine
load hits all three alike; times are the best (minimum) over the repetitions, the least disturbed by other
processes on a shared CPU, and peak RSS the largest. The load average is printed with every row.

``--official`` instead compares the paper-size 2D generator (256x512, 19 labels, ngf 64, 128 hidden) with a
FLOP-equal plain-PyTorch reference of the NVlabs SPADE generator (:class:`RefSPADEGenerator`), both in one
process with their repetitions interleaved, and reports GFLOP per forward (``FlopCounterMode``) and GFLOP/s.

Profiles (widths) -- "tiny": what trains in minutes on a CPU; "paper": the paper's networks where a CPU
can still run them (AHNet as in MONAI, full-width ResNet-18, SPADE at ngf 16 / 64 hidden in 3D; the 2D
generator at the NVlabs ngf 64 / 128 hidden).

    python benchmarks/networks.py --sizes 64 --reps 2  # tiny, 64^3
    python benchmarks/networks.py --profile paper --sizes 64 --reps 2
    python benchmarks/networks.py --official --reps 3  # ours vs the NVlabs-architecture reference, 256x512
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
        # one_hot(...).movedim is channels-last in memory: make it contiguous, or "fp32" would not be
        return torch.nn.functional.one_hot(lab, n).movedim(-1, 1).float().contiguous()

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


MODES = ("fp32", "fp32_cl", "auto")
LABEL = {"fp32": "fp32", "fp32_cl": "fp32+CL", "auto": "auto"}


def mode_settings(mode: str):
    """(autocast dtype or None, channels_last) of a mode; ``auto`` as resolve_precision('auto', 'cpu') gives."""
    import torch

    from synthcp3d.engines.precision import resolve_precision

    if mode == "fp32":
        return None, False
    if mode == "fp32_cl":
        return None, True
    p = resolve_precision("auto", "cpu")
    return (getattr(torch, p.dtype) if p.dtype else None), p.channels_last


def machine_caption() -> str:
    """CPU capability, CPU model and what ``auto`` resolves to, for the caption of every table."""
    from synthcp3d.engines.precision import cpu_description, resolve_precision

    return f"CPU (torch capability, model): {cpu_description()}; auto -> {resolve_precision('auto', 'cpu').describe()}"


def auto_name() -> str:
    """Short name of the resolved ``auto`` mode for column headers, e.g. ``bfloat16+CL``."""
    from synthcp3d.engines.precision import resolve_precision

    p = resolve_precision("auto", "cpu")
    return p.name + ("+CL" if p.channels_last else "")


def _layout(model, inputs, channels_last: bool):
    import torch

    if not channels_last:
        return model, inputs
    fmt = torch.channels_last_3d if inputs[0].ndim == 5 else torch.channels_last
    return model.to(memory_format=fmt), tuple(t.contiguous(memory_format=fmt) for t in inputs)


def worker(net: str, profile: str, size: int, mode: str, reps: int) -> dict:
    import torch

    torch.manual_seed(0)
    model, inputs = build(net, profile, size)
    amp, cl = mode_settings(mode)
    model, inputs = _layout(model, inputs, cl)

    def run(train: bool) -> float:
        model.train(train)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None), torch.set_grad_enabled(
            train
        ):
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


# ---------------------------------------------------------------------------------------------------------------
# FLOP-equal reference: the NVlabs label-only SPADE generator ("normal", 5 upsamplings, norm_G
# "spectralspadesyncbatch3x3" with a plain affine-free BatchNorm2d standing in for the synchronized one on a single
# device), re-implemented here in plain PyTorch from the paper's / repository's description.


def _ref_classes():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class RefSPADE(nn.Module):
        """Affine-free batch norm, then a per-pixel scale and shift from a 2-layer conv net on the label map."""

        def __init__(self, channels: int, label_nc: int, hidden: int = 128, k: int = 3) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(channels, affine=False)
            self.shared = nn.Conv2d(label_nc, hidden, k, padding=k // 2)
            self.to_gamma = nn.Conv2d(hidden, channels, k, padding=k // 2)
            self.to_beta = nn.Conv2d(hidden, channels, k, padding=k // 2)

        def forward(self, x, seg):
            h = F.relu(self.shared(F.interpolate(seg, size=x.shape[2:], mode="nearest")))
            return self.norm(x) * (1 + self.to_gamma(h)) + self.to_beta(h)

    class RefBlock(nn.Module):
        """norm -> leaky(0.2) -> conv, twice; a norm -> 1x1 conv (no bias) shortcut when the width changes."""

        def __init__(self, cin: int, cout: int, label_nc: int, hidden: int) -> None:
            super().__init__()
            sn = nn.utils.spectral_norm  # the hook-based spectral norm, as NVlabs uses
            cmid = min(cin, cout)
            self.n0, self.c0 = RefSPADE(cin, label_nc, hidden), sn(nn.Conv2d(cin, cmid, 3, padding=1))
            self.n1, self.c1 = RefSPADE(cmid, label_nc, hidden), sn(nn.Conv2d(cmid, cout, 3, padding=1))
            self.shortcut = None
            if cin != cout:
                self.ns, self.shortcut = RefSPADE(cin, label_nc, hidden), sn(nn.Conv2d(cin, cout, 1, bias=False))

        def forward(self, x, seg):
            skip = x if self.shortcut is None else self.shortcut(self.ns(x, seg))
            h = self.c0(F.leaky_relu(self.n0(x, seg), 0.2))
            return skip + self.c1(F.leaky_relu(self.n1(h, seg), 0.2))

    class RefSPADEGenerator(nn.Module):
        """conv on the label map at 1/32 -> head, 2 middle, 4 up blocks (16,16,16 -> 8,4,2,1 x ngf) -> conv -> tanh."""

        def __init__(self, label_nc: int = 19, out_channels: int = 3, ngf: int = 64, hidden: int = 128) -> None:
            super().__init__()
            w = [16 * ngf] * 4 + [8 * ngf, 4 * ngf, 2 * ngf, ngf]
            self.first = nn.Conv2d(label_nc, w[0], 3, padding=1)
            self.blocks = nn.ModuleList(RefBlock(w[i], w[i + 1], label_nc, hidden) for i in range(7))
            self.last = nn.Conv2d(ngf, out_channels, 3, padding=1)

        def forward(self, seg):
            seed = [s // 32 for s in seg.shape[2:]]
            x = self.first(F.interpolate(seg, size=seed, mode="nearest"))
            for i, blk in enumerate(self.blocks):  # 2x nearest upsampling before every block but the 1st and 3rd
                if i not in (0, 2):
                    x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                x = blk(x, seg)
            return torch.tanh(self.last(F.leaky_relu(x, 0.2)))

    return RefSPADEGenerator


def official(reps: int, modes=MODES) -> list[dict]:
    """Ours vs the reference at 256x512 / 19 labels / ngf 64: forward (eval, no_grad), interleaved repetitions."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from synthcp3d.networks import SPADEGenerator

    torch.manual_seed(0)
    lab = torch.randint(0, LABELS_2D, (1, 256, 512), generator=torch.Generator().manual_seed(0))
    seg = torch.nn.functional.one_hot(lab, LABELS_2D).movedim(-1, 1).float().contiguous()
    base = {
        "reference (NVlabs architecture)": _ref_classes()(LABELS_2D, 3, ngf=64, hidden=128).eval(),
        "synthcp3d SPADEGenerator": SPADEGenerator(2, LABELS_2D, 3, num_up=5, ngf=64, hidden_channels=128).eval(),
    }
    info = {}
    with torch.no_grad():
        for name, m in base.items():
            counter = FlopCounterMode(display=False)
            with counter:
                m(seg)
            info[name] = {"params_m": sum(p.numel() for p in m.parameters()) / 1e6,
                          "gflop": counter.get_total_flops() / 1e9}  # fmt: skip
    rows = []
    for mode in modes:
        amp, cl = mode_settings(mode)
        models = {}
        for name, m in base.items():
            models[name], (x,) = _layout(copy.deepcopy(m), (seg,), cl)
        best = dict.fromkeys(models, float("inf"))
        with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            for m in models.values():
                m(x)  # warm-up
            for _ in range(reps):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    best[name] = min(best[name], time.perf_counter() - t0)
        ref = next(iter(best.values()))
        for name, sec in best.items():
            rows.append({"model": name, "mode": mode, "fwd": sec, "speed_vs_ref": ref / sec, **info[name],
                         "gflops": info[name]["gflop"] / sec, "load": os.getloadavg()[0]})  # fmt: skip
        del models
    return rows


def print_official(rows: list[dict]) -> None:
    names = {"fp32": "fp32 contiguous", "fp32_cl": "fp32 channels-last", "auto": f"auto = {auto_name()}"}
    print(f"# {machine_caption()}")
    header = ("| model | mode | params (M) | GFLOP / forward | fwd (s) | GFLOP/s | speed vs reference "
              "| loadavg (1 min) |")  # fmt: skip
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for r in rows:
        print(f"| {r['model']} | {names[r['mode']]} | {r['params_m']:.2f} | {r['gflop']:.1f} | {r['fwd']:.2f} | "
              f"{r['gflops']:.0f} | {r['speed_vs_ref']:.2f}× | {r['load']:.2f} |", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="3D cube edge lengths")
    p.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's, = cores)")
    p.add_argument("--official", action="store_true",
                   help="only compare the 2D generator with the NVlabs-architecture reference (256x512, ngf 64)")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        net, profile, size, mode, reps = args.worker
        print(json.dumps(worker(net, profile, int(size), mode, int(reps))))
        return

    start = time.time()
    threads = torch.get_num_threads()
    print(f"# torch={torch.__version__} threads={threads} reps={args.reps}"
          + ("" if args.official else f" profile={args.profile}"))  # fmt: skip
    print(f"# loadavg at start: {os.getloadavg()}")
    if args.official:
        print_official(official(args.reps))
        print(f"# loadavg at end: {os.getloadavg()}; total {time.time() - start:.0f} s")
        return
    auto = auto_name()
    print(f"# {machine_caption()}")
    cols = ("fp32", "fp32+CL", f"auto={auto}")
    header = (
        "| network | size | params (M) | "
        + " | ".join(f"fwd {c} (s)" for c in cols)
        + " | fwd ×CL | fwd ×auto | "
        + " | ".join(f"fwd+bwd {c} (s)" for c in cols)
        + " | fwd+bwd ×CL | fwd+bwd ×auto | peak RSS fp32 / CL / auto (GB) | loadavg (1 min) |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for net in args.nets:
        sizes = ["256x512"] if net == "generator_2d" else args.sizes
        for size in sizes:
            edge = 0 if net == "generator_2d" else size
            best: dict[str, dict] = {}
            errors = []
            for _ in range(args.reps):  # modes alternate, so a change of machine load hits all of them alike
                for mode in MODES:
                    r = measure(net, args.profile, edge, mode, 1, args.threads)
                    if "error" in r:
                        errors.append(r["error"])
                        continue
                    b = best.setdefault(mode, r)
                    b.update(fwd=min(b["fwd"], r["fwd"]), fwd_bwd=min(b["fwd_bwd"], r["fwd_bwd"]),
                             rss_gb=max(b["rss_gb"], r["rss_gb"]))  # fmt: skip
            load = os.getloadavg()[0]
            shape = size if isinstance(size, str) else f"{size}³"
            if errors or len(best) < len(MODES):
                print(f"| {net} | {shape} | failed: {errors[0] if errors else 'no result'} |")
                continue
            a, b, c = (best[m] for m in MODES)
            print(
                f"| {net} | {shape} | {a['params_m']:.2f} | {a['fwd']:.3f} | {b['fwd']:.3f} | {c['fwd']:.3f} | "
                f"{a['fwd'] / b['fwd']:.2f}× | {a['fwd'] / c['fwd']:.2f}× | "
                f"{a['fwd_bwd']:.3f} | {b['fwd_bwd']:.3f} | {c['fwd_bwd']:.3f} | "
                f"{a['fwd_bwd'] / b['fwd_bwd']:.2f}× | {a['fwd_bwd'] / c['fwd_bwd']:.2f}× | "
                f"{a['rss_gb']:.2f} / {b['rss_gb']:.2f} / {c['rss_gb']:.2f} | {load:.2f} |",
                flush=True,
            )
    print(f"# loadavg at end: {os.getloadavg()}; total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
