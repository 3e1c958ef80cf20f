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
from ._search import _candidates, _evaluate, _feasible, _pick_cheapest
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
    cheapest operating point with accuracy >= big - drop, then the best-accuracy point (ties: cheapest).

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
    cands = _candidates(conf, correct, costs, grid_size)
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
    for d in drops:
        k = _pick_cheapest(
            cands, _feasible(cands.correct, cands.differ, n - cands.exits[-1], big_correct, n, d, confidence=None)
        )
        rows.append(
            _row(f"drop <= {d * 100:g}%", d, None if k is None else cands.thresholds(k), conf, correct, costs, big_acc)
        )
    best = _pick_cheapest(cands, cands.correct == cands.correct.max())  # most accurate, then cheapest
    rows.append(_row("best accuracy", None, cands.thresholds(best), conf, correct, costs, big_acc))
    return rows


def _fmt_cost(c: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(c) >= scale:
            return f"{c / scale:.3f}{unit}"
    return f"{c:.4g}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of report_table rows."""
    lines = [
        "| target | accuracy | Δacc vs big | avg cost (MACs) | cost / big | thresholds |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if not r.get("feasible", True) or r.get("accuracy") is None:
            lines.append(f"| {r['target']} | n/a | n/a | n/a | n/a | none feasible |")
            continue
        ts = "—" if r.get("thresholds") is None else ", ".join(f"{t:.4f}" for t in r["thresholds"])
        lines.append(
            f"| {r['target']} | {r['accuracy'] * 100:.2f}% | {-r['acc_drop'] * 100 + 0.0:+.2f} | "
            f"{_fmt_cost(r['avg_cost'])} | {r['cost_frac']:.3f} | {ts} |"
        )
    return "\n".join(lines)


def plot_curves(curves: Mapping[str, SweepResult], big_acc: float, big_cost: float, path: str | os.PathLike) -> Path:
    """Accuracy-vs-average-cost PNG, one line per sweep, the big model alone as a star.

    Written to a temporary file in the destination folder then renamed, so readers never see half a PNG;
    the file gets the permissions a plain ``open`` would give (0o666 minus the umask), not mkstemp's 0o600.
    Uses matplotlib's object API on an Agg canvas: no pyplot, no change to the global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        order = torch.argsort(curve.avg_cost)  # a sweep in threshold order is not sorted by cost
        ax.plot(curve.avg_cost[order].tolist(), (curve.accuracy[order] * 100).tolist(), label=name, lw=1.2)
    ax.axhline(big_acc * 100, color="gray", ls="--", lw=0.8)
    ax.plot([big_cost], [big_acc * 100], marker="*", ms=12, color="black", ls="none", label="big model alone")
    ax.set_xlabel("average cost per sample (MACs)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
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
