"""`dcvit cascade`: pick a saver for a big model, calibrate a cascade on held-out data, report and time it."""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import arguments, command, emit
from .data import CALIBRATION_SIZE


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
    """--max-acc-drop and --confidence, shared by `dcvit cascade` and recipes/saver_for_cascade.py."""
    p.add_argument("--max-acc-drop", type=acc_drop, default=0.0,
                   help="tolerated top-1 drop vs the big model, as a fraction (0.01 = 1 point; default 0 = lossless)")
    p.add_argument("--confidence", type=confidence_level, default=0.95,
                   help="one-sided confidence that the cascade stays within --max-acc-drop on new data: the lower "
                        "bound of the paired accuracy difference on the calibration split must meet it "
                        "(default 0.95; 0 compares measured accuracies, which lands below the tolerance on new "
                        "data about half of the time)")


def _cascade_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--big", required=True, help="the big model: timm name or saved model directory")
    p.add_argument("--savers", nargs="+", required=True, help="candidate little models (names or directories)")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (calibration from train, report on test)")
    tolerance_arguments(p)
    p.add_argument("--calibration-size", type=int, default=CALIBRATION_SIZE,
                   help=f"held-out training images for calibration (default {CALIBRATION_SIZE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for report.md and curves.png")
    p.add_argument("--json", action="store_true")


def study_summary(study) -> dict:
    best = study.calibrations[study.saver]
    return {"big": study.big, "saver": study.saver, "costs": study.costs, "accuracy": study.accuracy,
            "ranking": [{"saver": n, "delta_c": d, "r_match": r} for n, d, r in study.ranking],
            "test_ranking": [{"saver": n, "delta_c": d, "r_match": r} for n, d, r in study.test_ranking],
            "thresholds": list(best.thresholds), "confidence": best.confidence, "max_acc_drop": best.max_acc_drop,
            "calib_accuracy": best.calib_accuracy, "calib_big_accuracy": best.calib_big_accuracy,
            "calib_lower_bound": best.calib_lower_bound,
            "test_accuracy": best.test_accuracy, "test_big_accuracy": best.test_big_accuracy,
            "test_avg_macs": best.test_avg_cost, "test_macs_reduction": best.test_cost_reduction,
            "speed": study.speed, "tables": study.tables}


def _rule(cal) -> str:
    """How the thresholds were chosen, in words."""
    where = f"calibration split, top-1 within {100 * cal.max_acc_drop:g} points of the big model"
    if cal.confidence is None:
        return f"{where} as measured"
    return (f"{where} at {cal.confidence:.0%} one-sided confidence: calibration top-1 {100 * cal.calib_accuracy:.2f}% "
            f"vs {100 * cal.calib_big_accuracy:.2f}%, lower bound of the difference {100 * cal.calib_lower_bound:+.2f} points")


def study_markdown(study) -> str:
    import cascade
    s = study_summary(study)
    lines = [f"## Cascade for {study.big}", "",
             "| saver | MACs | test top-1 | ΔC (calib) | r_match (calib) | ΔC (test) |", "|---|---|---|---|---|---|"]
    test_dc = {n: d for n, d, _ in study.test_ranking}
    for n, d, r in study.ranking:
        lines.append(f"| {n} | {study.costs[n] / 1e6:.2f}M | {100 * study.accuracy[n]:.2f} | {d:.3f} | {r:.3f} | {test_dc[n]:.3f} |")
    lines += ["", f"Chosen saver (lowest ΔC on the calibration split): **{s['saver']}**; best on the test split: "
              f"{study.test_ranking[0][0]}.", "",
              f"Thresholds {['%.4f' % t for t in s['thresholds']]} ({_rule(study.calibrations[study.saver])}): "
              f"test top-1 {100 * s['test_accuracy']:.2f}% vs big {100 * s['test_big_accuracy']:.2f}%, "
              f"{s['test_avg_macs'] / 1e6:.2f}M MACs per image ({100 * s['test_macs_reduction']:.1f}% fewer).", ""]
    for key, v in study.speed.items():
        lines.append(f"- {key}: realised speed-up {v['realised_speedup']:.2f}x vs MACs-predicted "
                     f"{v['predicted_speedup']:.2f}x (ratio {v['realised_speedup'] / v['predicted_speedup']:.2f}); "
                     f"alone, the saver runs {v['saver_speed_ratio']:.1f}x faster than the big model "
                     f"(MACs ratio {v['macs_ratio']:.1f}x), medians of {v['repeats']} interleaved passes")
    for n, rows in study.tables.items():
        lines += ["", f"### {n} + {study.big} (TinySaver-style, thresholds picked on the test split itself: "
                  f"an oracle to compare savers, not a deployable choice)", "", cascade.format_table(rows)]
    return "\n".join(lines) + "\n"


def write_study(study, out: Path) -> None:
    """report.md (atomically) and curves.png of a cascade study in `out`."""
    import cascade
    from .fileio import atomic_path
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(study_markdown(study))
    cascade.plot_curves(study.curves, study.accuracy[study.big], study.costs[study.big], out / "curves.png")


@command("cascade", "little-big cascade: saver selection by ΔC, held-out threshold calibration, measured speed-up")
@arguments(_cascade_arguments)
def run_cascade(args) -> None:
    from .companions import cascade_study
    from .io import resolve_model
    names = [args.big] + [s for s in args.savers if s != args.big]
    models = {n: resolve_model(n, weights="pretrained") for n in names}
    study = cascade_study(args.big, models, args.data, calibration_size=args.calibration_size, seed=args.seed,
                          max_acc_drop=args.max_acc_drop, confidence=args.confidence)
    if args.out:
        write_study(study, Path(args.out))
    emit(args, study_summary(study), study_markdown(study))
