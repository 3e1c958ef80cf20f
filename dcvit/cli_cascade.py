"""`dcvit cascade`: pick a saver for a big model, calibrate a cascade on held-out data, report and time it."""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import arguments, command, emit


def _cascade_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--big", required=True, help="the big model: timm name or saved model directory")
    p.add_argument("--savers", nargs="+", required=True, help="candidate little models (names or directories)")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (calibration from train, report on test)")
    p.add_argument("--max-acc-drop", type=float, default=0.0,
                   help="tolerated top-1 drop vs the big model, as a fraction (0.01 = 1 point; default 0 = lossless)")
    p.add_argument("--calibration-size", type=int, default=5000, help="held-out training images for calibration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for report.md and curves.png")
    p.add_argument("--json", action="store_true")


def study_summary(study) -> dict:
    best = study.calibrations[study.saver]
    return {"big": study.big, "saver": study.saver, "costs": study.costs, "accuracy": study.accuracy,
            "ranking": [{"saver": n, "delta_c": d, "r_match": r} for n, d, r in study.ranking],
            "test_ranking": [{"saver": n, "delta_c": d, "r_match": r} for n, d, r in study.test_ranking],
            "thresholds": list(best.thresholds), "calib_accuracy": best.calib_accuracy,
            "test_accuracy": best.test_accuracy, "test_big_accuracy": best.test_big_accuracy,
            "test_avg_macs": best.test_avg_cost, "test_macs_reduction": best.test_cost_reduction,
            "speed": study.speed, "tables": study.tables}


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
              f"Thresholds {['%.4f' % t for t in s['thresholds']]} (calibration split): test top-1 "
              f"{100 * s['test_accuracy']:.2f}% vs big {100 * s['test_big_accuracy']:.2f}%, "
              f"{s['test_avg_macs'] / 1e6:.2f}M MACs per image ({100 * s['test_macs_reduction']:.1f}% fewer).", ""]
    for key, v in study.speed.items():
        lines.append(f"- {key}: realised speed-up {v['realised_speedup']:.2f}x vs MACs-predicted "
                     f"{v['predicted_speedup']:.2f}x (ratio {v['realised_speedup'] / v['predicted_speedup']:.2f})")
    for n, rows in study.tables.items():
        lines += ["", f"### {n} + {study.big} (test split, TinySaver-style)", "", cascade.format_table(rows)]
    return "\n".join(lines) + "\n"


@command("cascade", "little-big cascade: saver selection by ΔC, held-out threshold calibration, measured speed-up")
@arguments(_cascade_arguments)
def run_cascade(args) -> None:
    import cascade
    from .companions import cascade_study
    from .fileio import atomic_path
    from .io import resolve_model
    if not 0 <= args.max_acc_drop < 1:
        raise ValueError(f"--max-acc-drop must be a fraction in [0, 1); got {args.max_acc_drop}")
    names = [args.big] + [s for s in args.savers if s != args.big]
    models = {n: resolve_model(n, weights="pretrained") for n in names}
    study = cascade_study(args.big, models, args.data, calibration_size=args.calibration_size, seed=args.seed,
                          max_acc_drop=args.max_acc_drop)
    text = study_markdown(study)
    if args.out:
        out = Path(args.out)
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(text)
        cascade.plot_curves(study.curves, study.accuracy[args.big], study.costs[args.big], out / "curves.png")
    emit(args, study_summary(study), text)
