"""Command line interface: ``synthcp3d`` (console script) and ``python -m synthcp3d``.

Every subcommand has ``--help``. Heavy imports (torch, MONAI) happen inside the handlers so that
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_phantom_pancreas(args: argparse.Namespace) -> int:
    from synthcp3d.data.phantom_pancreas import make_pancreas_dataset

    root = make_pancreas_dataset(
        args.out, num_cases=args.cases, size=tuple(args.size), seed=args.seed, num_test=args.test_cases,
        field_of_view_mm=None if args.fov is None else tuple(args.fov), roi_center=args.roi_center,
    )
    print(f"wrote MSD Task07-style pancreas phantom: {root / 'dataset.json'}")
    return 0


def _cmd_phantom_scenes(args: argparse.Namespace) -> int:
    from synthcp3d.data.phantom_scenes import make_scene_dataset

    root = make_scene_dataset(
        args.out, style=args.style, num_images=args.images, size=tuple(args.size), seed=args.seed
    )
    print(f"wrote {args.style} scene phantom under {root}")
    return 0


def _amp_dtype(value: str) -> str:
    from synthcp3d.engines.precision import parse_amp_dtype

    try:
        return parse_amp_dtype(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from synthcp3d.demo import run_demo

    return run_demo(Path(args.out), seed=args.seed, bundle=args.bundle, cases=args.cases, amp_dtype=args.amp_dtype)


def _cmd_report(args: argparse.Namespace) -> int:
    from synthcp3d.reports.table2 import format_summary, summarize
    from synthcp3d.reports.writer import load_alarm_table, write_report

    rows = load_alarm_table(args.table, split=args.split)
    if not rows:
        print(f"synthcp3d: error: no {args.split} cases in {args.table}", file=sys.stderr)
        return 2
    title = args.title or f"SynthCP report: {args.table.parent.name or args.table.name} ({args.split})"
    paths = write_report(rows, args.out, title=title, threshold=args.threshold, thumbnails=not args.no_thumbnails)
    print(format_summary(summarize(rows, threshold=args.threshold)))
    print(f"wrote {paths['html']} (+ report.csv, report.json)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``synthcp3d`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="synthcp3d",
        description="SynthCP failure and anomaly detection for segmentation (3D medical and 2D scenes).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    phantom = sub.add_parser("phantom", help="generate procedural phantom datasets in real on-disk layouts")
    psub = phantom.add_subparsers(dest="kind", metavar="KIND", required=True)

    pan = psub.add_parser(
        "pancreas",
        help="CT-like abdominal volumes with pancreas and tumour labels, MSD Task07 layout",
        description="Write an MSD Task07 Pancreas-style dataset (dataset.json, imagesTr, labelsTr, imagesTs).",
    )
    pan.add_argument("--out", type=Path, required=True, help="output dataset folder")
    pan.add_argument("--cases", type=int, default=12, help="number of training cases (default 12)")
    pan.add_argument("--test-cases", type=int, default=None, help="number of test cases (default cases//4)")
    pan.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), default=(96, 96, 48),
                     help="volume size in voxels (default 96 96 48)")
    pan.add_argument("--fov", type=float, nargs=3, metavar=("FX", "FY", "FZ"), default=None,
                     help="field of view in mm (default: a whole abdomen, ~0.7-0.9 mm x 1.5-3 mm voxels at 512x512x90)")
    pan.add_argument("--roi-center", choices=("body", "pancreas"), default="body",
                     help="centre the grid on the body or on the pancreas (a coarse-stage region of interest)")
    pan.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give equal files")
    pan.set_defaults(func=_cmd_phantom_pancreas)

    sc = psub.add_parser(
        "scenes",
        help="street-scene-like 2D images and label maps, Cityscapes or StreetHazards layout",
        description="Write a 2D street-scene phantom in the Cityscapes or StreetHazards on-disk layout.",
    )
    sc.add_argument("--style", choices=("cityscapes", "streethazards"), required=True)
    sc.add_argument("--out", type=Path, required=True, help="output dataset folder")
    sc.add_argument("--images", type=int, default=16, help="number of images per split (default 16)")
    sc.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(128, 256),
                    help="image size in pixels (default 128 256)")
    sc.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give equal files")
    sc.set_defaults(func=_cmd_phantom_scenes)

    demo = sub.add_parser(
        "demo",
        help="run the whole 3D pipeline on a generated phantom and end with a report",
        description="Generate a pancreas phantom and run every stage of the 3D pipeline on the tiny profile.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="working folder (default runs/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--amp-dtype", default="auto", type=_amp_dtype,
                      help="precision: auto (bf16 only where computed natively), float32, bfloat16")  # fmt: skip
    demo.add_argument("--cases", type=int, default=32, help="phantom training cases (default 32)")
    demo.add_argument("--bundle", type=Path, default=None,
                      help="the pancreas_synthcp bundle folder (default: bundles/pancreas_synthcp of this repository)")
    demo.set_defaults(func=_cmd_demo)

    rep = sub.add_parser(
        "report",
        help="write the per-case HTML/CSV/JSON report and the Table-2 summary from an alarm table",
        description="Summarise predicted vs. true Dice (paper Table 2, Fig. 6) and write report.html "
                    "(self-contained), report.csv and report.json from alarm_table.json.",
    )
    rep.add_argument("--table", type=Path, required=True, help="alarm_table.json written by the alarm stage")
    rep.add_argument("--out", type=Path, required=True, help="output folder for report.{html,csv,json}")
    rep.add_argument("--threshold", type=float, default=0.5,
                     help="Dice below which a case is bad / flagged for review (default 0.5)")
    rep.add_argument("--split", choices=("cv", "test", "new", "all"), default="all",
                     help="which cases to report (default all)")
    rep.add_argument("--title", default=None, help="page title")
    rep.add_argument("--no-thumbnails", action="store_true", help="skip the per-case slice thumbnails (no NIfTI reads)")
    rep.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from synthcp3d.data.io import DataError

    try:
        return int(args.func(args) or 0)
    except DataError as e:
        print(f"synthcp3d: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
