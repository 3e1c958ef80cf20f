"""`dcvit cascade`: pick a saver for a big model, calibrate a cascade on held-out data, report and time it."""

from __future__ import annotations

import argparse

from ..data import CALIBRATION_SIZE
from ..outdir import check_out, input_paths, writing_out
from .common import Command, device_arguments, emit, model_args, model_source_arguments, seed_argument, start_run

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


def risk(text: str) -> float:
    """argparse type: delta, the chance the guarantee fails over the calibration draw, in (0, 0.5]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"{text!r} is not a risk in (0, 0.5] (0.05: the promise holds with 95%)")
    return value


COMMITTEE = {"auto": "auto", "on": True, "off": False}


def tolerance_arguments(p: argparse.ArgumentParser) -> None:
    """--max-acc-drop, --delta and --committee of `dcvit cascade` (and of tools/bench_cascade.py)."""
    p.add_argument(
        "--max-acc-drop",
        type=acc_drop,
        default=0.0,
        help="eps: tolerated top-1 drop vs the big model, as a fraction (0.001 = 0.1 point; default 0 = lossless)",
    )
    p.add_argument(
        "--delta",
        type=risk,
        default=0.05,
        help="the guarantee's risk: with probability >= 1 - delta over the draw of the calibration split, the "
        "cascade's top-1 on new data from the same distribution is >= the big model's - eps (fixed-sequence "
        "testing with exact binomial tests, docs/method.md §9; default 0.05). When nothing can be certified, "
        "every image goes to the big model",
    )
    p.add_argument(
        "--committee",
        choices=sorted(COMMITTEE),
        default="auto",
        help="committee exit: the big model answers with the mean of its and the saver's probabilities (zero "
        "extra MACs). auto (default): used where the calibration split certifies it; on / off: always / never",
    )


def _cascade_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--big", required=True, help="the big model: timm name or saved model directory")
    p.add_argument("--savers", nargs="+", required=True, help="candidate little models (names or directories)")
    model_source_arguments(p, which="--big")
    device_arguments(p)
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
    from ..studies.report import save_study_cascade, study_markdown, study_summary, write_study

    out = None  # --out is checked before recording and timing, not after
    if args.out is not None:  # '' too: it would write into the current folder
        out = check_out(args.out, "cascade", input_paths(args.data, [args.big, *args.savers]))
        cascade.files.check_replaceable(out / CASCADE_DIR)
    acc = start_run(args, "recording")
    names = [args.big] + [s for s in args.savers if s != args.big]
    models = {args.big: resolve_model(args.big, weights="pretrained", **model_args(args))}
    models |= {n: resolve_model(n, weights="pretrained") for n in names[1:]}
    models = {n: m.to(acc.device) for n, m in models.items()}  # recorded and timed there
    with acc.autocast():
        study = cascade_study(
            args.big,
            models,
            args.data,
            calibration_size=args.calibration_size,
            seed=args.seed,
            max_acc_drop=args.max_acc_drop,
            delta=args.delta,
            committee=COMMITTEE[args.committee],
            progress=not args.quiet,
        )
    models = {n: m.cpu() for n, m in models.items()}  # saved from the CPU, whatever device recorded them
    summary, text = study_summary(study), study_markdown(study)
    summary |= {"device": str(acc.device), "mixed_precision": acc.mixed_precision}
    if out is not None:
        with writing_out(out, "cascade"):  # a failed write (a full disk) leaves no folder it made behind
            write_study(study, out)
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
        "little-big cascade: a saver and thresholds certified on held-out data (top-1 >= the big model's - eps "
        "with probability >= 1 - delta), committee exit, measured speed-up",
        _cascade_arguments,
        run_cascade,
    ),
]
