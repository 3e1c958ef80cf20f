"""Figures a person would rather look at than read: accuracy vs MACs, metric score vs test error, and the
cascade curves (accuracy vs MACs of every threshold)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..storage import atomic_path


def _figure():
    from matplotlib.figure import Figure  # no pyplot: leaves the global backend alone

    return Figure(figsize=(6.4, 4.4), dpi=120)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def accuracy_vs_macs(
    series: Mapping[str, Sequence[tuple[float, float]]], teacher: tuple[float, float], path: Path, title: str = ""
) -> Path:
    """series: name -> [(MACs, top-1)]; teacher: (MACs, top-1). MACs in millions, top-1 in percent."""
    fig = _figure()
    ax = fig.add_subplot()
    markers = iter("osD^v<>")
    for name, points in series.items():
        points = sorted(points)
        ax.plot(
            [m / 1e6 for m, _ in points],
            [100 * a for _, a in points],
            marker=next(markers, "o"),
            linestyle="-" if len(points) > 1 else "none",
            label=name,
        )
    ax.scatter([teacher[0] / 1e6], [100 * teacher[1]], marker="*", s=180, color="black", label="teacher", zorder=5)
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def metric_vs_error(
    scores: Sequence[float],
    errors: Sequence[float],
    losses: Sequence[float],
    blocks: Sequence[int],
    path: Path,
    rho_metric: float,
    rho_loss: float,
) -> Path:
    """Paper Fig. 4 at our scale: synthetic-set KL score and few-shot loss against candidate test error."""
    fig = _figure()
    left, right = fig.subplots(1, 2)
    for ax, x, label, rho in (
        (left, scores, "KL score on synthetic set (Eq. 6)", rho_metric),
        (right, losses, "few-shot training loss", rho_loss),
    ):
        ax.scatter(x, [100 * e for e in errors])
        for b, xi, e in zip(blocks, x, errors):
            ax.annotate(str(b), (xi, 100 * e), fontsize=7, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel(label, fontsize=8)
        ax.set_title(f"Spearman ρ = {rho:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    left.set_ylabel("candidate test error (%)")
    fig.suptitle("Block-wise trial candidates (labels: compressed block)", fontsize=9)
    return _save(fig, path)


def cascade_curves(study, path: Path, members: list[str] | None = None, calibration=None) -> Path:
    """A cascade study's accuracy-vs-MACs sweeps (one per saver, test split), the big model alone, and the
    chosen cascade (thresholds from the calibration split) evaluated on the test split: by default the
    study's two-stage choice, or `members` (cheapest first) with their `calibration` (cascade.Calibration)."""
    import cascade

    cal = calibration or study.chosen
    members = members or [study.saver, study.big]
    chosen = {}
    if cal.test_accuracy is not None:
        ts = ", ".join(f"{t:.3g}" for t in cal.thresholds)
        label = f"chosen cascade {' → '.join(members)}, threshold{'s' if len(cal.thresholds) > 1 else ''} {ts}"
        chosen[label + " (set on the calibration split)"] = (cal.test_avg_cost, cal.test_accuracy)
    note = (
        "Curves: every threshold swept on the test split, for comparison only. The marked cascade's threshold "
        "was chosen on a held-out calibration split (part of the training set) and is plotted at its test-split "
        "top-1 and MACs."
    )
    curves = {f"{name} → {study.big}, every threshold": curve for name, curve in study.curves.items()}
    return cascade.plot_curves(
        curves,
        study.accuracy[study.big],
        study.costs[study.big],
        path,
        chosen=chosen,
        title=f"Little → big cascades with {study.big}: test top-1 vs MACs",
        note=note,
        big_name=study.big,
    )
