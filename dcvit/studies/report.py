"""A cascade study in words and numbers: the summary dict, report.md and the curves PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

import cascade

from ..cascade_files import save_cascade
from ..storage import atomic_path
from .plots import cascade_curves


def study_summary(study) -> dict:
    best = study.chosen
    return {
        "big": study.big,
        "saver": study.saver,
        "costs": study.costs,
        "accuracy": study.accuracy,
        "ranking": [{"saver": n, "delta_c": d, "r_match": r} for n, d, r in study.ranking],
        "test_ranking": [{"saver": n, "delta_c": d, "r_match": r} for n, d, r in study.test_ranking],
        "thresholds": list(best.thresholds),
        "rule": best.rule,
        "delta": best.delta,
        "committee": list(best.committee or ()),
        "max_acc_drop": best.max_acc_drop,
        "calib_accuracy": best.calib_accuracy,
        "calib_big_accuracy": best.calib_big_accuracy,
        "test_accuracy": best.test_accuracy,
        "test_big_accuracy": best.test_big_accuracy,
        "test_avg_macs": best.test_avg_cost,
        "test_macs_reduction": best.test_cost_reduction,
        "speed": study.speed,
        "tables": study.tables,
    }


def _points(fraction: float) -> str:
    points = 100 * fraction
    return f"{points:g} point{'' if points == 1 else 's'}"


def _rule(cal, big: str) -> str:
    """How the threshold was chosen, as a sentence, with the calibration numbers behind the choice."""
    if cal.fallback:
        return (
            f"No threshold met the rule ({_tolerance(cal, big)}) on the calibration split, so the threshold is 1 "
            f"and every image goes to {big}."
        )
    measured = f"calibration top-1 {100 * cal.calib_accuracy:.2f}% vs {100 * cal.calib_big_accuracy:.2f}% for {big}"
    if cal.rule == "fixed-sequence":
        return (
            f"The threshold was certified on the calibration split ({measured}). Guarantee: {guarantee_sentence(cal)}."
        )
    if cal.confidence is not None:
        measured += f"; {cal.confidence:.0%} lower bound on the difference {100 * cal.calib_lower_bound:+.2f} points"
    return (
        f"The threshold was chosen on the calibration split as the cheapest with {_tolerance(cal, big)} ({measured})."
    )


def _tolerance(cal, big: str) -> str:
    loss = "no top-1 loss" if cal.max_acc_drop == 0 else f"top-1 within {_points(cal.max_acc_drop)}"
    what = f"{loss} vs {big}"
    if cal.rule == "fixed-sequence":
        return f"{what}, certified with probability >= {1 - cal.delta:.0%}"
    if cal.confidence is None:
        return f"{what}, as measured"
    return f"{what} at {cal.confidence:.0%} one-sided confidence"


def _answer(cal, saver: str, big: str) -> str:
    if any(cal.committee or ()):
        return f"the committee: the mean of {saver}'s and {big}'s probabilities (zero extra MACs)"
    return big


def _thresholds(values) -> str:
    return ", ".join(f"{t:.3g}" for t in values)


def study_markdown(study) -> str:
    s = study_summary(study)
    cal = study.chosen
    big = study.big
    lines = [
        f"## Cascade for {big}",
        "",
        "| saver | MACs per image | test top-1 | ΔC (calibration) | r_match (calibration) | ΔC (test) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    test_dc = {n: d for n, d, _ in study.test_ranking}
    for n, d, r in study.ranking:
        lines.append(
            f"| {n} | {study.costs[n] / 1e6:.2f}M | {100 * study.accuracy[n]:.2f}% | {d:.3f} | {r:.3f} | {test_dc[n]:.3f} |"
        )
    exits = cal.test_exit_ratios or (0.0,)
    lines += [
        "",
        f"ΔC = saver MACs / {big} MACs − r_match, where r_match is the largest share of images the saver can "
        f"answer while right at least as often as {big} on them (TinySaver); lower is better, below 0 saves.",
        "",
        f"Chosen saver: **{s['saver']}**, the cheapest certified cascade on one half of the calibration split "
        f"(certified on the other half); lowest ΔC on the calibration split: {study.ranking[0][0]}, on the test "
        f"split: {study.test_ranking[0][0]}.",
        "",
        f"**Cascade {study.saver} → {big}**: an image is answered by {study.saver} when its highest softmax "
        f"probability is at least {_thresholds(s['thresholds'])}, otherwise by {_answer(cal, study.saver, big)}. "
        f"{_rule(cal, big)} "
        f"On the test split: top-1 {100 * s['test_accuracy']:.2f}% ({big} alone "
        f"{100 * s['test_big_accuracy']:.2f}%), {s['test_avg_macs'] / 1e6:.2f}M MACs per image, "
        f"{100 * s['test_macs_reduction']:.1f}% fewer than {big} alone; {study.saver} answers "
        f"{100 * exits[0]:.1f}% of the images.",
        "",
    ]
    for key, v in study.speed.items():
        lines.append(
            f"- {key}: measured speed-up {v['realised_speedup']:.2f}x vs {v['predicted_speedup']:.2f}x predicted by "
            f"MACs (ratio {v['realised_speedup'] / v['predicted_speedup']:.2f}); alone, the saver runs "
            f"{v['saver_speed_ratio']:.1f}x faster than {big} (MACs ratio {v['macs_ratio']:.1f}x); medians of "
            f"{v['repeats']} interleaved passes"
        )
    for n, rows in study.tables.items():
        lines += [
            "",
            f"### {n} → {big}: operating points on the test split",
            "",
            "Thresholds here are picked on the test split itself (TinySaver's table): an oracle to compare "
            "savers, not a deployable choice. MACs are per image; top-1 differences are in points.",
            "",
            cascade.format_table(rows),
        ]
    return "\n".join(lines) + "\n"


def write_study(study, out: Path) -> None:
    """report.md (atomically) and curves.png of a cascade study in `out`."""
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(study_markdown(study))
    cascade_curves(study, out / "curves.png")


# --- the chosen cascade as a folder, and its guarantee in words ---------------------------------------
def save_study_cascade(
    study, models: Mapping[str, nn.Module], path: str | Path, *, data: str, calibration_size: int, seed: int
) -> Path:
    """The cascade a study chose (its saver, then the big model, with the calibrated thresholds)."""
    cal = study.chosen
    names = [study.saver, study.big]
    info = {
        "calibration": {
            "data": data,
            "split": "held-out part of the training set",
            "images": calibration_size,
            "seed": seed,
            "max_acc_drop": cal.max_acc_drop,
            "delta": cal.delta,
            "rule": cal.rule,
            "guarantee": guarantee_sentence(cal),
            "top1": cal.calib_accuracy,
            "big_top1": cal.calib_big_accuracy,
        },
        "test": {
            "top1": cal.test_accuracy,
            "big_top1": cal.test_big_accuracy,
            "macs_per_image": cal.test_avg_cost,
            "macs_reduction": cal.test_cost_reduction,
            "exit_fractions": list(cal.test_exit_ratios or ()),
        },
    }
    costs = [study.costs[n] for n in names]
    fractions = cal.test_exit_ratios or None  # measured on the test split (info["test"])
    members = [models[n] for n in names]
    return save_cascade(
        path, members, cal.thresholds, costs, names, info, committee=cal.committee, exit_fractions=fractions
    )


def guarantee_sentence(cal: cascade.Calibration) -> str:
    """What a Calibration promises, in one sentence (report.md, cascade.json info)."""
    if cal.rule != "fixed-sequence":
        return f"none: thresholds by the {cal.rule} rule (measured on calibration data, no guarantee on new data)"
    if cal.fallback:
        return (
            f"nothing could be certified at {100 * cal.max_acc_drop:g} points and delta {cal.delta:g}: "
            "use the big model alone"
        )
    committee = " with the committee exit" if any(cal.committee or ()) else ""
    return (
        f"with probability >= {1 - cal.delta:.0%} over the draw of the calibration set, this cascade{committee} "
        f"keeps top-1 on the population >= the big model's - {100 * cal.max_acc_drop:g} points "
        f"(fixed-sequence testing, exact binomial tests, delta split over {cal.families} configurations)"
    )
