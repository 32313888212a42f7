"""Pooled pixel failure-detection metrics: synthcp3d (hist / exact) vs scikit-learn, time and memory.

    .venv/bin/python benchmarks/metrics.py --sizes 1e7 1e8 --streamed 1e9 --out benchmarks/metrics.md

Every measurement runs in a fresh subprocess that generates the same synthetic pixels (10% errors,
continuous confidences in (0, 1)), records its peak RSS after imports and data (the baseline), runs
one method, and reports time and peak RSS minus baseline. Each method computes AUPR-Error, AUROC and
FPR95 (errors positive, scored by -confidence); synthcp3d also computes AUPR-Success and FPR95 of the
success class in the same pass. The streamed run feeds the pixels image by image (2**21 = 1024 x 2048
pixels, a full-size Cityscapes frame) as an evaluation loop would; its time counts only the metric
calls, data generation is reported apart. torchmetrics' binned curves are measured if installed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from synthcp3d.metrics import PixelFailureMetrics  # noqa: E402

IMAGE = 1 << 21  # pixels per streamed image (1024 x 2048)
ERROR_RATE = 0.1


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_chunk(gen: torch.Generator, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k pixels: correct ~ Bernoulli(0.9), confidence = sigmoid(N(0, 1) + 2 * correct) as float32."""
    correct = torch.rand(k, generator=gen) >= ERROR_RATE
    z = torch.randn(k, generator=gen)
    z += 2.0 * correct
    return torch.sigmoid_(z), correct


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n pixels generated image by image into preallocated tensors (no temporaries of size n)."""
    gen = torch.Generator().manual_seed(seed)
    conf, correct = torch.empty(n), torch.empty(n, dtype=torch.bool)
    for s in range(0, n, IMAGE):
        c, y = make_chunk(gen, min(IMAGE, n - s))
        conf[s : s + c.numel()], correct[s : s + c.numel()] = c, y
    return conf, correct


def run_sklearn(conf: torch.Tensor, correct: torch.Tensor) -> dict:
    from sklearn.metrics import auc, average_precision_score, roc_curve

    err, score = ~correct.numpy(), -conf.numpy()
    ap = average_precision_score(err, score)
    fpr, tpr, _ = roc_curve(err, score, drop_intermediate=False)
    return {"aupr_error": 100 * ap, "auroc": 100 * auc(fpr, tpr),
            "fpr95": 100 * fpr[np.searchsorted(tpr, 0.95, side="left")]}


def run_ours(conf: torch.Tensor, correct: torch.Tensor, mode: str, bins: int) -> dict:
    m = PixelFailureMetrics(mode=mode, bins=bins)
    m.update(conf, correct)
    return m.compute()


def run_torchmetrics(conf: torch.Tensor, correct: torch.Tensor, bins: int) -> dict:
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryROC

    err, score = (~correct).long(), 1.0 - conf  # binned metrics want scores in [0, 1]
    ap = BinaryAveragePrecision(thresholds=bins)(score, err)
    auroc = BinaryAUROC(thresholds=bins)(score, err)
    fpr, tpr, _ = BinaryROC(thresholds=bins)(score, err)
    order = torch.argsort(tpr, stable=True)
    fpr, tpr = fpr[order], tpr[order]
    i = int(torch.searchsorted(tpr.double(), torch.tensor([0.95], dtype=torch.float64)))
    return {"aupr_error": 100 * float(ap), "auroc": 100 * float(auroc), "fpr95": 100 * float(fpr[i])}


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads[0])
    n = int(float(args.n))
    if args.worker == "stream":
        m = PixelFailureMetrics(mode="hist", bins=args.bins)
        gen = torch.Generator().manual_seed(args.seed)
        warm = PixelFailureMetrics(mode="hist", bins=args.bins)  # warm-up: one image's buffers in the baseline
        warm.update(*make_chunk(gen, IMAGE))
        warm.compute()
        del warm
        gen.manual_seed(args.seed)
        base, t_gen, t_metric = rss_mb(), 0.0, 0.0
        for s in range(0, n, IMAGE):
            t0 = time.perf_counter()
            c, y = make_chunk(gen, min(IMAGE, n - s))
            t1 = time.perf_counter()
            m.update(c, y)
            t_metric += time.perf_counter() - t1
            t_gen += t1 - t0
        t1 = time.perf_counter()
        res = m.compute()
        t_metric += time.perf_counter() - t1
        res.update(seconds=t_metric, gen_seconds=t_gen, images=-(-n // IMAGE))
    else:
        conf, correct = make_data(n, args.seed)
        if args.worker == "hist":  # warm-up on a slice: first-call allocator and kernel set-up
            run_ours(conf[:IMAGE], correct[:IMAGE], "hist", args.bins)
        base = rss_mb()
        t0 = time.perf_counter()
        if args.worker == "sklearn":
            res = run_sklearn(conf, correct)
        elif args.worker == "torchmetrics":
            res = run_torchmetrics(conf, correct, args.bins)
        else:
            res = run_ours(conf, correct, args.worker, args.bins)
        res["seconds"] = time.perf_counter() - t0
    res["extra_mb"] = rss_mb() - base
    print(json.dumps({k: v for k, v in res.items() if isinstance(v, int | float | str)}))


def measure(method: str, n: float, args: argparse.Namespace, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--n", str(n),
           "--seed", str(args.seed), "--bins", str(args.bins), "--threads", str(threads)]
    print(f"# running {method} at {n:.0e} pixels, {threads} thread(s) ...", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_row(method: str, n: float, r: dict, ref: dict | None) -> str:
    if "error" in r:
        return f"| {n:.0e} | {method} | failed: {r['error']} | | | | | | |"
    keys = ("aupr_error", "auroc", "fpr95")
    vals = " | ".join(f"{r[k]:.4f}" for k in keys)
    if ref and "error" not in ref and method != "scikit-learn":
        dmax = max(abs(r[k] - ref[k]) for k in keys) / 100
        diff, speed = f"{dmax:.1e}", f"{ref['seconds'] / r['seconds']:.0f}x"
    else:
        diff, speed = "-", "-"
    return f"| {n:.0e} | {method} | {r['seconds']:.2f} | {speed} | {r['extra_mb']:.0f} | {vals} | {diff} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="*", type=float, default=[1e7, 1e8], help="pixel counts, in-memory runs")
    p.add_argument("--streamed", nargs="*", type=float, default=[1e9], help="pixel counts, streamed hist runs")
    p.add_argument("--bins", type=int, default=1 << 16, help="histogram bins (hist mode, torchmetrics)")
    p.add_argument("--exact-max", type=float, default=1e8, help="largest size for exact mode")
    p.add_argument("--sklearn-max", type=float, default=1e8, help="largest size for scikit-learn")
    p.add_argument("--threads", nargs="*", type=int, default=[os.cpu_count() or 1],
                   help="torch thread counts to measure synthcp3d with (scikit-learn runs once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the report (markdown) to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    load0 = os.getloadavg()
    have_tm = importlib.util.find_spec("torchmetrics") is not None
    rows, results = [], {}
    for n in args.sizes:
        ref = measure("sklearn", n, args, 1) if n <= args.sklearn_max else None
        if ref is not None:
            rows.append(fmt_row("scikit-learn", n, ref, None))
        for t in args.threads:
            methods = [("hist", f"synthcp3d hist ({args.bins} bins), {t} thr")]
            if n <= args.exact_max:
                methods.append(("exact", f"synthcp3d exact, {t} thr"))
            if have_tm:
                methods.append(("torchmetrics", f"torchmetrics binned ({args.bins}), {t} thr"))
            for key, name in methods:
                r = measure(key, n, args, t)
                results[(key, n, t)] = (r, ref)
                rows.append(fmt_row(name, n, r, ref))
        if not have_tm:
            rows.append(f"| {n:.0e} | torchmetrics binned | not installed, skipped | | | | | | |")
    for n in args.streamed:
        for t in args.threads:
            r = measure("stream", n, args, t)
            results[("stream", n, t)] = (r, None)
            if "error" in r:
                rows.append(f"| {n:.0e} | synthcp3d hist, streamed | failed: {r['error']} | | | | | | |")
            else:
                rows.append(fmt_row(f"synthcp3d hist, streamed, {t} thr ({r['images']} images of 2^21 px; "
                                    f"+{r['gen_seconds']:.1f} s generating them)", n, r, None))
    load1 = os.getloadavg()

    lines = [
        "# Benchmark: pooled pixel failure-detection metrics",
        "",
        "Command (from the repository root):",
        "",
        "    " + " ".join([".venv/bin/python", "benchmarks/metrics.py"] + sys.argv[1:]),
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
        f"torch {torch.__version__}, numpy {np.__version__}; thr = torch threads",
        f"- load average (1, 5, 15 min) at start: {load0[0]:.2f}, {load0[1]:.2f}, {load0[2]:.2f}; "
        f"at end: {load1[0]:.2f}, {load1[1]:.2f}, {load1[2]:.2f} (the machine is shared with other jobs)",
        "- data: synthetic, 10% errors, confidence = sigmoid(N(0,1) + 2 * correct) in float32",
        "- time: seconds for update + compute (scikit-learn: average_precision_score + roc_curve); "
        "memory: peak RSS of the measuring subprocess minus its RSS after imports and data",
        "- max abs diff: largest absolute difference to scikit-learn over the three metrics, as a fraction",
        "- thr: torch threads of the synthcp3d run (scikit-learn is single-threaded). With other jobs on the "
        "same cores, OpenMP threads wait for each other at every tensor operation, so compare thread counts "
        "against the load average",
        "",
        "| pixels | method | time (s) | speed-up vs sklearn | extra peak memory (MB) "
        "| AUPR-Error (%) | AUROC (%) | FPR95 (%) | max abs diff vs sklearn |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Targets",
        "",
        *targets(results, args),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


def targets(results: dict, args: argparse.Namespace) -> list[str]:
    out = []
    keys = ("aupr_error", "auroc", "fpr95")
    for t in args.threads:
        r, ref = results.get(("hist", 1e8, t), (None, None))
        if r and ref and "error" not in r and "error" not in ref:
            speed = ref["seconds"] / r["seconds"]
            verdict = "met" if speed >= 40 else f"missed ({speed:.0f}x is {40 / speed:.1f}x short)"
            out.append(f"- >= 40x faster than scikit-learn at 1e8 pixels, {t} thr: {speed:.0f}x, {verdict}.")
            diff = max(abs(r[k] - ref[k]) for k in keys) / 100
            verdict = "met" if diff <= 1e-4 else "missed"
            out.append(f"- hist mode within 1e-4 of scikit-learn at 1e8, {t} thr: {diff:.1e}, {verdict}.")
        mems = sorted((n, r["extra_mb"]) for (k, n, tt), (r, _) in results.items()
                      if tt == t and k in ("hist", "stream") and "error" not in r)
        if mems:
            listing = ", ".join(f"{m:.0f} MB at {n:.0e}" for n, m in mems)
            spread = max(m for _, m in mems) - min(m for _, m in mems)
            out.append(f"- memory independent of the pixel count (hist), {t} thr: {listing}; spread {spread:.0f} MB.")
        for (k, n, tt), (r, _) in results.items():
            if k == "stream" and tt == t and "error" not in r:
                verdict = "met" if r["seconds"] <= 15 else f"missed by {r['seconds'] - 15:.1f} s"
                out.append(f"- {n:.0e} pixels streamed in <= 15 s, {t} thr: {r['seconds']:.1f} s of metric time "
                           f"(+{r['gen_seconds']:.1f} s generating the data), {verdict}.")
    return out


if __name__ == "__main__":
    main()
