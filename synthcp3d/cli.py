"""Command line interface: ``synthcp3d`` (console script) and ``python -m synthcp3d``.

Every subcommand has ``--help``. Heavy imports (torch, MONAI) happen inside the handlers so that
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
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


def _int_in(lo: int, hi: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[lo, hi]`` (argparse prefixes the message with the option)."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}{why}, got {n}")
        if hi is not None and n > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}{why}, got {n}")
        return n

    return parse


_positive_int = _int_in(1)
_nonneg_int = _int_in(0)
# 32 bits: MONAI's set_determinism and NumPy's legacy seeding take no more, so a seed means the same everywhere
_seed = _int_in(0, 2**32 - 1)
# sample_case's minimum (phantom_pancreas.py); the scene generator has none, but below 8 pixels a scene is a blur
_voxels = _int_in(8)
# the study and the demo cross-validate the segmenter with the bundle's folds (4 in common.json, 3 in the tiny
# profile): fewer cases than folds fail deep inside the bundle after the phantom is written
_cv_cases = _int_in(4, why=" (a case per cross-validation fold)")


def _finite_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):  # float() accepts "nan" and "inf"
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return x


def _positive_float(value: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    x = _finite_float(value)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return x


def _unit_interval_float(value: str) -> float:
    """An argparse ``type``: a number in [0, 1] (a Dice threshold)."""
    x = _finite_float(value)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return x


def _out_dir(value: str) -> Path:
    """An argparse ``type``: an existing folder, or one that can be created (checked before anything is written)."""
    path = Path(value)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{value} exists and is not a folder")
    base = path
    while not os.path.exists(base):  # os.path: False instead of an error below a file or an unreadable folder
        base = base.parent
    if not os.path.isdir(base):
        raise argparse.ArgumentTypeError(f"cannot create {value}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write under {base}")
    return path


def _label_map(value: str) -> str:
    from synthcp3d.data.labels import parse_label_map

    try:
        parse_label_map(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _amp_dtype(value: str) -> str:
    from synthcp3d.engines.precision import parse_amp_dtype

    try:
        return parse_amp_dtype(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from synthcp3d.demo import run_demo

    return run_demo(Path(args.out), seed=args.seed, bundle=args.bundle, cases=args.cases, amp_dtype=args.amp_dtype)


def _nifti_files(paths: Sequence[Path], what: str) -> list[str]:
    """Files as given, a folder as its ``*.nii.gz`` / ``*.nii`` in name order."""
    from synthcp3d.data.io import DataError

    out: list[str] = []
    for p in paths:
        if p.is_dir():
            found = sorted([*p.glob("*.nii.gz"), *p.glob("*.nii")])
            if not found:
                raise DataError(p, f"no NIfTI {what} (*.nii.gz, *.nii) in this folder")
            out += [str(f) for f in found]
        else:
            out.append(str(p))
    return out


_ALARM_RESERVED = frozenset({"models_dir", "output_dir", "alarm_out", "alarm_images", "alarm_preds", "alarm_label_map",
                             "alarm_on_error", "amp_dtype"})  # fmt: skip


def _cmd_alarm(args: argparse.Namespace) -> int:
    import json

    from synthcp3d.data.io import DataError, read_json
    from synthcp3d.demo import default_bundle, run_bundle_config

    images = _nifti_files(args.images, "images")
    preds: list[str] | str | None = None
    if args.preds:  # one folder: paired by case id; files: in the images' order
        preds = str(args.preds[0]) if len(args.preds) == 1 and args.preds[0].is_dir() else [str(p) for p in args.preds]
    manifest = args.models / "manifest.json"
    if not manifest.is_file():
        raise DataError(manifest, "not found: --models must be a folder written by export_models or the demo")
    profile = args.profile or read_json(manifest).get("profile") or "tiny"
    out = args.out.resolve()
    run_bundle_config(Path(args.bundle or default_bundle()), ["alarm.json"], profile=profile,
                      models_dir=str(args.models.resolve()), output_dir=str(out), alarm_out=str(out),
                      alarm_images=images, alarm_preds=preds, alarm_label_map=args.label_map,
                      alarm_on_error=args.on_error, amp_dtype=args.amp_dtype, **dict(args.override))  # fmt: skip
    rows = json.loads((out / "alarm_table.json").read_text())
    print(f"{'case':<24} {'status':<7} {'tumour Dice (ensemble)':>22}  review")
    for r in rows:
        d = r["predicted"]["ensemble"]["tumour"]
        shown = "-" if d is None else f"{d:.2f}"
        print(f"{r['case_id']:<24} {r['status']:<7} {shown:>22}  {'REVIEW' if r['review'] else ''}")
    print(f"wrote {out / 'alarm_table.json'}; HTML: synthcp3d report --table {out / 'alarm_table.json'} --out DIR")
    return 1 if any(r["status"] != "ok" for r in rows) else 0


def _cmd_import_preds(args: argparse.Namespace) -> int:
    from synthcp3d.alarms.inference import import_predictions
    from synthcp3d.data.msd import msd_datalist

    items = msd_datalist(args.dataset, "training", check="header")
    index = import_predictions(items, str(args.preds), args.out, label_map=args.label_map, folds=args.splits,
                               num_folds=args.folds)  # fmt: skip
    folds = sorted({r["fold"] for r in index.values() if r["fold"] is not None})
    print(f"wrote {Path(args.out) / 'predictions' / 'index.json'}: {len(index)} cases, folds {folds}; train the "
          f"alarms with the bundle's synthesize, train_comparator, train_vae and ensemble configs and "
          f"--segmenter_dir {args.out}")  # fmt: skip
    return 0


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


def _study_settings(value: str) -> tuple[str, ...]:
    from synthcp3d.study import SETTINGS

    names = tuple(s.strip() for s in value.split(","))
    bad = [s for s in names if s not in SETTINGS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown setting(s) {bad or [value]}; choose from {', '.join(SETTINGS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"setting listed twice in {value!r}")
    return names


def _study_threshold(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value!r}") from None
    if not 0.0 < t < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value!r}")
    return t


def _study_profile(value: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value):
        raise argparse.ArgumentTypeError(f"a profile is a name under configs/profiles without .json, got {value!r}")
    return value


def _override(reserved: frozenset[str], by: str) -> Callable[[str], tuple[str, object]]:
    """An argparse ``type`` for a bundle setting ``KEY=VALUE`` (VALUE as JSON, else a string), ``reserved`` keys
    refused (``by`` sets them)."""

    def parse(value: str) -> tuple[str, object]:
        import json

        key, sep, raw = value.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. segmenter#max_epochs=4), got {value!r}")
        if key in reserved:
            raise argparse.ArgumentTypeError(f"{key} is set by {by}")
        try:
            return key, json.loads(raw)
        except ValueError:
            return key, raw  # a plain string

    return parse



def _cmd_study(args: argparse.Namespace) -> int:
    bundle = args.bundle
    if bundle is None:
        from synthcp3d.demo import default_bundle

        bundle = default_bundle()
    if not (Path(bundle) / "configs" / "common.json").is_file():
        args.study_parser.error(f"--bundle: no configs/common.json under {bundle}")
    if not (Path(bundle) / "configs" / "profiles" / f"{args.profile}.json").is_file():
        args.study_parser.error(f"--profile: no configs/profiles/{args.profile}.json in {bundle}")
    from synthcp3d.study import run_study

    return run_study(args.out, seeds=args.seeds, settings=args.settings, cases=args.cases, test_cases=args.test_cases,
                     amp_dtype=args.amp_dtype, profile=args.profile, bundle=bundle, overrides=dict(args.override),
                     threshold=args.threshold, rescore=args.rescore, threads=args.threads)  # fmt: skip


def _add_bundle_options(parser: argparse.ArgumentParser) -> None:
    """``--amp-dtype`` and ``--bundle``, shared by the commands that run the pancreas bundle."""
    parser.add_argument("--amp-dtype", default="auto", type=_amp_dtype,
                        help="precision: auto (bf16 only where computed natively), float32, bfloat16")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="the pancreas_synthcp bundle folder (default: bundles/pancreas_synthcp of this repo)")


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
    pan.add_argument("--out", type=_out_dir, required=True, help="output dataset folder")
    pan.add_argument("--cases", type=_positive_int, default=12, help="number of training cases (default 12)")
    pan.add_argument("--test-cases", type=_nonneg_int, default=None, help="number of test cases (default cases//4)")
    pan.add_argument("--size", type=_voxels, nargs=3, metavar=("X", "Y", "Z"), default=(96, 96, 48),
                     help="volume size in voxels, each >= 8 (default 96 96 48)")
    pan.add_argument("--fov", type=_positive_float, nargs=3, metavar=("FX", "FY", "FZ"), default=None,
                     help="field of view in mm (default: a whole abdomen, ~0.7-0.9 mm x 1.5-3 mm voxels at 512x512x90)")
    pan.add_argument("--roi-center", choices=("body", "pancreas"), default="body",
                     help="centre the grid on the body or on the pancreas (a coarse-stage region of interest)")
    pan.add_argument("--seed", type=_seed, default=0, help="random seed; equal seeds give equal files")
    pan.set_defaults(func=_cmd_phantom_pancreas)

    sc = psub.add_parser(
        "scenes",
        help="street-scene-like 2D images and label maps, Cityscapes or StreetHazards layout",
        description="Write a 2D street-scene phantom in the Cityscapes or StreetHazards on-disk layout.",
    )
    sc.add_argument("--style", choices=("cityscapes", "streethazards"), required=True)
    sc.add_argument("--out", type=_out_dir, required=True, help="output dataset folder")
    sc.add_argument("--images", type=_positive_int, default=16, help="number of images per split (default 16)")
    sc.add_argument("--size", type=_voxels, nargs=2, metavar=("H", "W"), default=(128, 256),
                    help="image size in pixels, each >= 8 (default 128 256)")
    sc.add_argument("--seed", type=_seed, default=0, help="random seed; equal seeds give equal files")
    sc.set_defaults(func=_cmd_phantom_scenes)

    demo = sub.add_parser(
        "demo",
        help="run the whole 3D pipeline on a generated phantom and end with a report",
        description="Generate a pancreas phantom and run every stage of the 3D pipeline on the tiny profile.",
    )
    demo.add_argument("--out", type=_out_dir, default="runs/demo", help="working folder (default runs/demo)")
    demo.add_argument("--seed", type=_seed, default=0)
    demo.add_argument("--cases", type=_cv_cases, default=32, help="phantom training cases, >= 4 (default 32)")
    _add_bundle_options(demo)
    demo.set_defaults(func=_cmd_demo)

    al = sub.add_parser(
        "alarm",
        help="judge segmentations of new CT volumes: the bundle's own, or label maps from any tool (--preds)",
        description="Run the pancreas_synthcp bundle's alarm config with trained models: segment each image (or "
                    "take its label map from --preds, e.g. nnU-Net or a MONAI bundle), synthesize, compare, and "
                    "write alarm_table.json with the predicted Dice, intervals and review flags. Exit 1 when a case "
                    "could not be judged (--on-error skip).",
    )  # fmt: skip
    al.add_argument("--images", type=Path, nargs="+", required=True, help="CT NIfTI files or a folder of them")
    al.add_argument("--preds", type=Path, nargs="+", default=None,
                    help="label maps: a folder of <case_id>.nii.gz (nnU-Net's _0000 image suffix is dropped), or "
                         "files in the images' order; default: the bundle's segmenter segments")  # fmt: skip
    al.add_argument("--label-map", default=None, type=_label_map,
                    help="send the label maps' values to the trained classes 0 background, 1 pancreas, 2 tumour, "
                         "e.g. 1:1,2:2,3:0")  # fmt: skip
    al.add_argument("--models", type=Path, required=True, help="models folder (export_models; the demo's DIR/models)")
    al.add_argument("--out", type=_out_dir, required=True, help="output folder (alarm_table.json, maps)")
    al.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                    help="a case that cannot be judged: fail (stop, naming the file; default) or skip (an error row "
                         "with no numbers, flagged for review)")  # fmt: skip
    al.add_argument("--profile", default=None, help="bundle profile (default: the one in the models' manifest)")
    al.add_argument("--override", type=_override(_ALARM_RESERVED, "synthcp3d alarm's options"), action="append",
                    default=[], metavar="KEY=VALUE",
                    help="bundle setting the models were trained with, VALUE as JSON (repeatable)")
    _add_bundle_options(al)
    al.set_defaults(func=_cmd_alarm)

    imp = sub.add_parser(
        "import-preds",
        help="train the alarms on another tool's errors: index its out-of-fold label maps of a labelled dataset",
        description="Check and index a segmentation tool's cross-validation predictions (e.g. nnU-Net's) of an "
                    "MSD dataset's training cases as <out>/predictions/index.json, the layout the bundle's alarm "
                    "configs train on (--segmenter_dir <out>).",
    )  # fmt: skip
    imp.add_argument("--dataset", type=Path, required=True, help="MSD task folder (dataset.json, imagesTr, labelsTr)")
    imp.add_argument("--preds", type=Path, required=True, help="folder of <case_id>.nii.gz out-of-fold label maps")
    imp.add_argument("--out", type=_out_dir, required=True, help="segmenter folder to write (predictions/index.json)")
    imp.add_argument("--label-map", default=None, type=_label_map, help="their values -> trained classes, e.g. 1:1,2:2")
    imp.add_argument("--splits", type=Path, default=None,
                     help="nnU-Net's splits_final.json (fold k = its val list); default: a seeded --folds split")
    imp.add_argument("--folds", type=_int_in(2), default=4, help="folds when --splits is not given (default 4)")
    imp.set_defaults(func=_cmd_import_preds)

    rep = sub.add_parser(
        "report",
        help="write the per-case HTML/CSV/JSON report and the Table-2 summary from an alarm table",
        description="Summarise predicted vs. true Dice (paper Table 2, Fig. 6) and write report.html "
                    "(self-contained), report.csv and report.json from alarm_table.json.",
    )
    rep.add_argument("--table", type=Path, required=True, help="alarm_table.json written by the alarm stage")
    rep.add_argument("--out", type=_out_dir, required=True, help="output folder for report.{html,csv,json}")
    rep.add_argument("--threshold", type=_unit_interval_float, default=0.5,
                     help="Dice below which a case is bad / flagged for review (default 0.5)")
    rep.add_argument("--split", choices=("cv", "test", "new", "all"), default="all",
                     help="which cases to report (default all)")
    rep.add_argument("--title", default=None, help="page title")
    rep.add_argument("--no-thumbnails", action="store_true", help="skip the per-case slice thumbnails (no NIfTI reads)")
    rep.set_defaults(func=_cmd_report)

    from synthcp3d.study import DEFAULT_CASES, DEFAULT_SETTINGS, DEFAULT_TEST_CASES, RESERVED_OVERRIDES

    st = sub.add_parser(
        "study",
        help="measure whether the alarms predict segmentation quality: phantom settings x seeds, CV and held-out",
        description="For every phantom setting and seed: generate a phantom (held-out labels hidden from the "
                    "pipeline), run the pancreas_synthcp bundle as the demo does, score SynthCP, Direct Prediction, "
                    "the VAE alarm, the ensemble and a constant baseline on the CV and held-out cases, and write "
                    "diagnostics; writes DIR/study.{json,md,csv}. Rerunning the command resumes it.",
    )
    st.add_argument("--out", type=_out_dir, required=True, help="study folder (DIR/<setting>/seed<k>/ per run)")
    st.add_argument("--seeds", type=_positive_int, default=3, help="seeds 0..N-1 per setting (default 3)")
    st.add_argument("--settings", type=_study_settings, default=DEFAULT_SETTINGS,
                    help=f"comma-separated phantom settings (default {','.join(DEFAULT_SETTINGS)}; "
                         "known: demo, adult, coarse, subtle, smoke)")  # fmt: skip
    st.add_argument("--cases", type=_cv_cases, default=DEFAULT_CASES,
                    help=f"training (cross-validation) cases per run, >= 4 (default {DEFAULT_CASES})")
    st.add_argument("--test-cases", type=_positive_int, default=DEFAULT_TEST_CASES,
                    help=f"held-out test cases per run (default {DEFAULT_TEST_CASES})")
    st.add_argument("--profile", type=_study_profile, default="tiny", help="bundle profile (default tiny)")
    _add_bundle_options(st)
    st.add_argument("--override", type=_override(RESERVED_OVERRIDES, "the study itself"), action="append", default=[],
                    metavar="KEY=VALUE",
                    help="bundle setting for every config, VALUE as JSON (repeatable; e.g. segmenter#max_epochs=4)")
    st.add_argument("--threshold", type=_study_threshold, default=0.5,
                    help="Dice below which a case is bad, for the triage accuracy (default 0.5)")
    st.add_argument("--rescore", action="store_true",
                    help="recompute the scores and diagnostics of finished runs (the bundle stages are still reused)")
    st.add_argument("--threads", type=_positive_int, default=None,
                    help="torch intra-op threads (default: torch's, one per core; 1 is faster on a busy machine)")
    st.set_defaults(func=_cmd_study, study_parser=st)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from synthcp3d.errors import user_error

    try:
        return int(args.func(args) or 0)
    except Exception as e:
        cause = user_error(e)  # also inside MONAI's "Failed to evaluate ConfigExpression" of a bundle stage
        if cause is None:
            raise
        print(f"synthcp3d: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
