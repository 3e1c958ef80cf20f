"""TinySaver-style cost table and accuracy-vs-cost plot (docs/method.md §9).

The table answers "what does it cost to stay within x points of the big model?" for x in drops, plus
the most accurate operating point; the plot shows whole sweeps. matplotlib is imported inside
plot_curves only, so `import cascade` does not pull it in.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._checks import check_big_cost, check_costs, check_fraction, check_grid_size, check_stage_probs, conf_correct
from ._search import BEST_ACCURACY, _evaluate, search, tolerance_query
from .calibration import SweepResult


def _row(
    target: str,
    drop: float | None,
    thresholds: tuple[float, ...] | None,
    conf: torch.Tensor,
    correct: torch.Tensor,
    costs: tuple[float, ...],
    big_acc: float,
) -> dict[str, Any]:
    n = conf.shape[1]
    if thresholds is None:  # no operating point meets this tolerance
        return dict(
            target=target,
            max_acc_drop=drop,
            accuracy=None,
            acc_drop=None,
            avg_cost=None,
            cost_frac=None,
            thresholds=None,
            exit_ratios=None,
            feasible=False,
        )
    n_correct, _, stats = _evaluate(conf, correct, costs, thresholds)
    return dict(
        target=target,
        max_acc_drop=drop,
        accuracy=n_correct / n,
        acc_drop=big_acc - n_correct / n,
        avg_cost=stats.avg_cost,
        cost_frac=stats.avg_cost / costs[-1],
        thresholds=thresholds,
        exit_ratios=stats.exit_ratios,
        feasible=True,
    )


def report_table(
    stage_probs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    costs: Sequence[float],
    drops: Sequence[float] = (0.01, 0.005, 0.0001, 0.0),
    *,
    grid_size: int = 100,
) -> list[dict[str, Any]]:
    """Rows: the big model alone (reference), then for each tolerated accuracy drop (a fraction) the
    cheapest operating point with accuracy >= big - drop (target: tolerance_label(drop)), then the
    best-accuracy point (ties: cheapest). Search: as in calibrate (exact for 2 and 3 models).

    Each row: target, max_acc_drop, accuracy, acc_drop (big - cascade; negative = gain), avg_cost (MACs per
    sample), cost_frac (avg_cost / big model's cost), thresholds, exit_ratios, feasible. Use these on the
    split the table describes: a table built on test data picks thresholds on it, as TinySaver reports.
    """
    probs, labels = check_stage_probs(stage_probs, labels, min_stages=2)
    costs = check_costs(costs, len(probs), required=True)
    big_cost = check_big_cost(costs)
    check_grid_size(grid_size)
    drops = [check_fraction(d, f"drops[{i}]") for i, d in enumerate(drops)]
    conf, correct = conf_correct(probs, labels)
    n = labels.numel()
    big_correct = int(correct[-1].sum())
    big_acc = big_correct / n
    queries = [tolerance_query(big_correct, n, d, confidence=None) for d in drops] + [BEST_ACCURACY]
    found = search(conf, correct, costs, queries, grid_size)
    rows = [
        dict(
            target="big model alone",
            max_acc_drop=None,
            accuracy=big_acc,
            acc_drop=0.0,
            avg_cost=big_cost,
            cost_frac=1.0,
            thresholds=None,
            exit_ratios=None,
            feasible=True,
        )
    ]
    for d, thresholds in zip(drops, found):
        rows.append(_row(tolerance_label(d), d, thresholds, conf, correct, costs, big_acc))
    rows.append(_row("best accuracy", None, found[-1], conf, correct, costs, big_acc))
    return rows


def tolerance_label(max_acc_drop: float) -> str:
    """A tolerated drop in words: 'top-1 within 1 point of the big model', 'no top-1 loss vs the big model'."""
    if max_acc_drop == 0:
        return "no top-1 loss vs the big model"
    points = max_acc_drop * 100
    return f"top-1 within {points:g} point{'' if points == 1 else 's'} of the big model"


def _fmt_cost(c: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(c) >= scale:
            return f"{c / scale:.3f}{unit}"
    return f"{c:.4g}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of report_table rows (top-1 in percent, its difference to the big model in points,
    MACs per sample, the share of the big model's MACs, thresholds as plain numbers)."""
    lines = [
        "| operating point | top-1 | vs big (points) | MACs per sample | of big's MACs | thresholds |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if not r.get("feasible", True) or r.get("accuracy") is None:
            lines.append(f"| {r['target']} | n/a | n/a | n/a | n/a | none feasible |")
            continue
        ts = "—" if r.get("thresholds") is None else ", ".join(f"{t:.4g}" for t in r["thresholds"])
        lines.append(
            f"| {r['target']} | {r['accuracy'] * 100:.2f}% | {-r['acc_drop'] * 100 + 0.0:+.2f} | "
            f"{_fmt_cost(r['avg_cost'])} | {100 * r['cost_frac']:.1f}% | {ts} |"
        )
    return "\n".join(lines)


_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P")]


def plot_curves(
    curves: Mapping[str, SweepResult],
    big_acc: float,
    big_cost: float,
    path: str | os.PathLike,
    *,
    chosen: Mapping[str, tuple[float, float]] | None = None,
    title: str = "Cascade top-1 vs MACs, one curve per first model",
    note: str | None = None,
    big_name: str = "big model",
) -> Path:
    """Accuracy-vs-MACs PNG: one line per sweep (distinct colour, line style and markers), the big model
    alone as a star, and each `chosen` operating point (label -> (MACs per sample, accuracy)) as a ringed dot.

    The x axis is MACs per sample as a percentage of the big model's, with MACs in millions on the top axis;
    the legend sits below the axes, so it never hides a curve; `note` is printed under it (e.g. which split
    the curves come from). Written to a temporary file in the destination folder then renamed, so readers
    never see half a PNG; the file gets the permissions a plain ``open`` would give (0o666 minus the umask).
    Uses matplotlib's object API on an Agg canvas: no pyplot, no change to the global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pct = 100.0 / big_cost
    for i, (name, curve) in enumerate(curves.items()):
        order = torch.argsort(curve.avg_cost)  # a sweep in threshold order is not sorted by cost
        line, marker = _STYLES[i % len(_STYLES)]
        x, y = (curve.avg_cost[order] * pct).tolist(), (curve.accuracy[order] * 100).tolist()
        ax.plot(x, y, ls=line, lw=1.4, marker=marker, ms=5, markevery=max(1, len(x) // 8), label=name)
    ax.axhline(big_acc * 100, color="gray", ls=(0, (2, 3)), lw=0.8)
    ax.plot([100.0], [big_acc * 100], marker="*", ms=14, color="black", ls="none", label=f"{big_name} alone")
    for label, (cost, acc) in (chosen or {}).items():
        ax.plot([cost * pct], [acc * 100], marker="o", ms=11, mfc="none", mec="red", mew=2, ls="none", label=label)
    ax.set_xlabel(f"MACs per sample (% of {big_name})")
    ax.set_ylabel("top-1 (%)")
    top = ax.secondary_xaxis("top", functions=(lambda p: p * big_cost / 100 / 1e6, lambda m: m * 1e6 * 100 / big_cost))
    top.set_xlabel("MACs per sample (millions)")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)
    if note:
        fig.supxlabel(note, fontsize=7.5, color="dimgray", wrap=True)
    return _write_png(fig, Path(path))


def _write_png(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
