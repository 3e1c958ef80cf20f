"""A cascade study in words and numbers: the summary dict, report.md and the curves PNG."""

from __future__ import annotations

from pathlib import Path

import cascade

from ..storage import atomic_path


def study_summary(study) -> dict:
    best = study.calibrations[study.saver]
    return {
        "big": study.big,
        "saver": study.saver,
        "costs": study.costs,
        "accuracy": study.accuracy,
        "ranking": [{"saver": n, "delta_c": d, "r_match": r} for n, d, r in study.ranking],
        "test_ranking": [{"saver": n, "delta_c": d, "r_match": r} for n, d, r in study.test_ranking],
        "thresholds": list(best.thresholds),
        "confidence": best.confidence,
        "max_acc_drop": best.max_acc_drop,
        "calib_accuracy": best.calib_accuracy,
        "calib_big_accuracy": best.calib_big_accuracy,
        "calib_lower_bound": best.calib_lower_bound,
        "test_accuracy": best.test_accuracy,
        "test_big_accuracy": best.test_big_accuracy,
        "test_avg_macs": best.test_avg_cost,
        "test_macs_reduction": best.test_cost_reduction,
        "speed": study.speed,
        "tables": study.tables,
    }


def _rule(cal) -> str:
    """How the thresholds were chosen, in words."""
    where = f"calibration split, top-1 within {100 * cal.max_acc_drop:g} points of the big model"
    if cal.confidence is None:
        return f"{where} as measured"
    return (
        f"{where} at {cal.confidence:.0%} one-sided confidence: calibration top-1 {100 * cal.calib_accuracy:.2f}% "
        f"vs {100 * cal.calib_big_accuracy:.2f}%, lower bound of the difference {100 * cal.calib_lower_bound:+.2f} points"
    )


def study_markdown(study) -> str:
    s = study_summary(study)
    lines = [
        f"## Cascade for {study.big}",
        "",
        "| saver | MACs | test top-1 | ΔC (calib) | r_match (calib) | ΔC (test) |",
        "|---|---|---|---|---|---|",
    ]
    test_dc = {n: d for n, d, _ in study.test_ranking}
    for n, d, r in study.ranking:
        lines.append(
            f"| {n} | {study.costs[n] / 1e6:.2f}M | {100 * study.accuracy[n]:.2f} | {d:.3f} | {r:.3f} | {test_dc[n]:.3f} |"
        )
    lines += [
        "",
        f"Chosen saver (lowest ΔC on the calibration split): **{s['saver']}**; best on the test split: "
        f"{study.test_ranking[0][0]}.",
        "",
        f"Thresholds {', '.join(f'{t:.4f}' for t in s['thresholds'])} ({_rule(study.calibrations[study.saver])}): "
        f"test top-1 {100 * s['test_accuracy']:.2f}% vs big {100 * s['test_big_accuracy']:.2f}%, "
        f"{s['test_avg_macs'] / 1e6:.2f}M MACs per image ({100 * s['test_macs_reduction']:.1f}% fewer).",
        "",
    ]
    for key, v in study.speed.items():
        lines.append(
            f"- {key}: realised speed-up {v['realised_speedup']:.2f}x vs MACs-predicted "
            f"{v['predicted_speedup']:.2f}x (ratio {v['realised_speedup'] / v['predicted_speedup']:.2f}); "
            f"alone, the saver runs {v['saver_speed_ratio']:.1f}x faster than the big model "
            f"(MACs ratio {v['macs_ratio']:.1f}x), medians of {v['repeats']} interleaved passes"
        )
    for n, rows in study.tables.items():
        lines += [
            "",
            f"### {n} + {study.big} (TinySaver-style, thresholds picked on the test split itself: "
            f"an oracle to compare savers, not a deployable choice)",
            "",
            cascade.format_table(rows),
        ]
    return "\n".join(lines) + "\n"


def write_study(study, out: Path) -> None:
    """report.md (atomically) and curves.png of a cascade study in `out`."""
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(study_markdown(study))
    cascade.plot_curves(study.curves, study.accuracy[study.big], study.costs[study.big], out / "curves.png")
