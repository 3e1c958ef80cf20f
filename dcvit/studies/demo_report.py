"""The demo's report: the console summary table and report.md (what `dcvit demo` prints and writes)."""

from __future__ import annotations

from ..structure_registry import DEFAULT_STRUCTURE as AUTO
from ..structure_registry import PAPER_STRUCTURE as DCVIT
from .cascades import options_markdown
from .report import study_markdown

REFINED = "-refined"  # the name suffix of a member refined as a saver on more unlabeled images


def _short(structure: list[str]) -> str:
    """A block-by-block code: . kept, m narrowed MLP, M MLP removed, a attention removed, D dropped."""
    code = {"kept": ".", "dropped": "D", "MLP removed": "M"}
    return "".join(code.get(e, "a" if e.startswith("attention") else "m") for e in structure)


def summary_table(report: dict) -> str:
    t = report["teacher"]
    lines = [
        f"{'model':<28}{'MACs (M)':>10}{'% teacher':>11}{'top-1':>8}",
        "-" * 57,
        f"{t['name']:<28}{t['macs'] / 1e6:>10.2f}{100:>10.1f}%{100 * t['top1']:>7.2f}%",
    ]
    rows = [(f"auto {_short(r['structure'])}", r["macs"], r["top1"]) for r in report[AUTO]]
    rows += [(f"DC-ViT {r['blocks']}", r["macs"], r["top1"]) for r in report[DCVIT]]
    rows += [(f"drop {r['dropped']}", r["macs"], r["top1"]) for r in report["block_drop"]]
    rows += [(n, c["macs"], c["top1"]) for n, c in report["companions"].items()]
    rows += [(r["name"], r["macs"], r["top1"]) for r in report["savers"] if r["refined_images"]]
    c = report["cascade"]
    rows.append(("cascade " + " > ".join(c["members"][:-1]), c["macs_per_sample"], c["top1"]))
    speed = lambda k: f"{c[k]:.2f}x" if c.get(k) is not None else "—"
    for name, macs, top1 in sorted(rows, key=lambda r: -r[1]):
        lines.append(f"{name[:27]:<28}{macs / 1e6:>10.2f}{100 * macs / t['macs']:>10.1f}%{100 * top1:>7.2f}%")
    committee = " (committee exit)" if any(c["committee"]) else ""
    lines.append(
        f"shipped cascade {' -> '.join(c['members'])}{committee}: {100 * c['macs_reduction']:.1f}% fewer MACs, "
        f"{speed('throughput_speedup')} measured throughput at batch 256 (MACs predict {speed('predicted_speedup')}, "
        f"the members' own speeds {speed('time_predicted_speedup')}; stage by stage over all images "
        f"{speed('staged_throughput_speedup')})"
    )
    lines.append(f"guarantee: {c['guarantee']}")
    return "\n".join(lines)


def markdown(report: dict, study) -> str:
    c = report["candidates"]
    return "\n".join(
        [
            "# dcvit demo report",
            "",
            f"Teacher `{report['teacher']['name']}`, {report['settings']['shots']} unlabeled shots, seed "
            f"{report['settings']['seed']}; all accuracies on {report['settings']['test_images']} Fashion-MNIST test images; "
            f"thresholds chosen on a "
            f"{report['settings']['calibration_size']}-image held-out calibration split of the training set.",
            "",
            "```",
            summary_table(report),
            "```",
            _refined_note(report),
            "",
            "![accuracy vs MACs](accuracy_vs_macs.png)",
            "",
            f"Block-wise trial (Fig. 4 at our scale, {c['test_images']} test images): Spearman correlation of the "
            f"synthetic-set KL score with candidate test error {c['spearman_metric']:.2f}; of the few-shot training loss "
            f"{c['spearman_train_loss']:.2f}.",
            "",
            "![metric vs error](metric_vs_error.png)",
            "",
            _structures_markdown(report),
            "",
            guaranteed_markdown_from(report),
            "",
            options_markdown(report["cascades"], report["savers"]),
            "",
            study_markdown(study),
            "![cascade curves](cascade_curves.png)",
            "",
            f"Total time: {report['seconds']:.0f} s.",
            "",
        ]
    )


def _refined_note(report: dict) -> str:
    if not any(r["refined_images"] for r in report["savers"]):
        return ""
    settings = report["settings"]
    return (
        f"\nModels named `...{REFINED}`: the auto member of that name refined as a cascade saver on "
        f"{settings['saver_images']} more unlabeled training images (outside the shots and the calibration split), "
        f"{settings['saver_epochs']} epochs; the few-shot rows are without it."
    )


def _structures_markdown(report: dict) -> str:
    """Each structure's top-1 at each budget, and what auto chose per block (the code of summary_table)."""
    teacher = report["teacher"]
    lines = [
        "## Three structures at equal MACs",
        "",
        "| % of teacher MACs | auto | DC-ViT | block dropping | auto's blocks (. kept, m MLP narrowed, M MLP "
        "removed, a attention removed, D dropped) |",
        "|---|---|---|---|---|",
    ]
    by_target = {}
    for key in (AUTO, DCVIT, "block_drop"):
        for r in report[key]:
            by_target.setdefault(round(r["target"], 3), {})[key] = r
    for target in sorted(by_target, reverse=True):
        row = by_target[target]
        cell = lambda k, row=row: f"{100 * row[k]['top1']:.2f}" if k in row else "—"
        blocks = _short(row[AUTO]["structure"]) if AUTO in row else ""
        lines.append(f"| {100 * target:.1f} | {cell(AUTO)} | {cell(DCVIT)} | {cell('block_drop')} | `{blocks}` |")
    lines += ["", f"Teacher: {100 * teacher['top1']:.2f}% at {teacher['macs'] / 1e6:.2f}M MACs."]
    return "\n".join(lines)


def guaranteed_markdown_from(report: dict) -> str:
    """The 'Cascades with a guarantee' table from report.json's guaranteed entries."""
    lines = [
        "## Cascades with a guarantee",
        "",
        "For each scope and tolerance eps: the cascade chosen on one half of the calibration split and certified on "
        "the other (cascade.choose_cascade): with probability >= 95% over the draw of the calibration split, its "
        "top-1 on the population is >= the teacher's - eps. Own-family: the teacher and its own compressed or "
        "refined models only; any: companions too. Committee: the last stage answers with the mean of the "
        "probabilities of every member that ran (zero extra MACs). Top-1 and MACs on the test split; throughput "
        "at batch 256, staged: each member once over all the timed images that reach it. The shipped cascade "
        "(runs/demo/cascade) is the 'any' row at eps 0.",
        "",
        "| scope | eps (points) | cascade | committee | test top-1 (%) | teacher (%) | MACs saved (%) | "
        "predicted speed-up | measured, staged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for j in report["guaranteed"]:
        speed = lambda k, j=j: f"{j[k]:.2f}x" if j.get(k) is not None else "—"
        name = " -> ".join(j["members"]) if j["certified"] else "teacher alone (nothing certified)"
        lines.append(
            f"| {j['scope']} | {100 * j['eps']:g} | {name} | {'yes' if any(j['committee']) else 'no'} | "
            f"{100 * j['top1']:.2f} | {100 * j['teacher_top1']:.2f} | {100 * j['macs_reduction']:.1f} | "
            f"{speed('predicted_speedup')} | {speed('staged_throughput_speedup')} |"
        )
    return "\n".join(lines)
