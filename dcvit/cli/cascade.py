"""`dcvit cascade`: pick a saver for a big model, calibrate a cascade on held-out data, report and time it."""

from __future__ import annotations

import argparse

from ..data import CALIBRATION_SIZE
from ..outdir import check_out, claim_out, input_paths
from .common import Command, emit, seed_argument

CASCADE_DIR = "cascade"  # the sub-folder of --out the chosen cascade is written to


def acc_drop(text: str) -> float:
    """argparse type: a tolerated top-1 drop, a fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1) (0.01 = one accuracy point)")
    return value


def confidence_level(text: str) -> float | None:
    """argparse type: a one-sided confidence level in [0.5, 1), or 0 / none for measured accuracies."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value == 0:
        return None
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a confidence level in [0.5, 1) nor 0/none")
    return value


def tolerance_arguments(p: argparse.ArgumentParser) -> None:
    """--max-acc-drop and --confidence of `dcvit cascade` (and of tools/bench_cascade.py)."""
    p.add_argument(
        "--max-acc-drop",
        type=acc_drop,
        default=0.0,
        help="tolerated top-1 drop vs the big model, as a fraction (0.01 = 1 point; default 0 = lossless)",
    )
    p.add_argument(
        "--confidence",
        type=confidence_level,
        default=0.95,
        help="one-sided confidence that the cascade stays within --max-acc-drop on new data: the lower "
        "bound of the paired accuracy difference on the calibration split must meet it "
        "(default 0.95; 0 compares measured accuracies, which lands below the tolerance on new "
        "data about half of the time)",
    )


def _cascade_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--big", required=True, help="the big model: timm name or saved model directory")
    p.add_argument("--savers", nargs="+", required=True, help="candidate little models (names or directories)")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (calibration from train, report on test)")
    tolerance_arguments(p)
    p.add_argument(
        "--calibration-size",
        type=int,
        default=CALIBRATION_SIZE,
        help=f"held-out training images for calibration (default {CALIBRATION_SIZE})",
    )
    seed_argument(p)
    p.add_argument(
        "--out",
        help="folder for report.md, curves.png and the cascade itself in OUT/cascade "
        "(members + cascade.json; `dcvit eval --model OUT/cascade` evaluates it)",
    )
    p.add_argument("--json", action="store_true")


def run_cascade(args) -> None:
    import cascade

    from ..factory import resolve_model
    from ..studies.companions import cascade_study
    from ..studies.report import study_markdown, study_summary, write_study
    from ..studies.shipping import save_study_cascade

    out = None  # --out is checked before recording and timing, not after
    if args.out is not None:  # '' too: it would write into the current folder
        out = check_out(args.out, "cascade", input_paths(args.data, [args.big, *args.savers]))
        cascade.files.check_replaceable(out / CASCADE_DIR)
    names = [args.big] + [s for s in args.savers if s != args.big]
    models = {n: resolve_model(n, weights="pretrained") for n in names}
    study = cascade_study(
        args.big,
        models,
        args.data,
        calibration_size=args.calibration_size,
        seed=args.seed,
        max_acc_drop=args.max_acc_drop,
        confidence=args.confidence,
        progress=not args.quiet,
    )
    summary, text = study_summary(study), study_markdown(study)
    if out is not None:
        write_study(study, claim_out(out, "cascade"))
        shipped = save_study_cascade(
            study, models, out / CASCADE_DIR, data=args.data, calibration_size=args.calibration_size, seed=args.seed
        )
        summary["cascade_dir"] = str(shipped)
        text += (
            f"\nCascade written to {shipped} (evaluate it with `dcvit eval --model {shipped} --data {args.data}`).\n"
        )
    emit(args, summary, text)


COMMANDS = [
    Command(
        "cascade",
        "little-big cascade: saver selection by ΔC, held-out threshold calibration, measured speed-up",
        _cascade_arguments,
        run_cascade,
    ),
]
