"""The figures of dcvit/studies/plots.py are written with the process's umask (as every other file)."""

import stat
from pathlib import Path

import torch


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cascade_curves_png_follows_the_umask(tmp_path, umask_022):
    import cascade

    probs = [torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]]), torch.tensor([[0.8, 0.2], [0.1, 0.9], [0.6, 0.4]])]
    curve = cascade.sweep(probs, torch.tensor([0, 1, 1]), [1.0, 10.0])
    path = cascade.plot_curves({"little": curve}, 2 / 3, 10.0, tmp_path / "curves.png")
    assert _mode(path) == 0o644


def test_study_plots_follow_the_umask(tmp_path, umask_022):
    from dcvit.studies import plots

    a = plots.accuracy_vs_macs({"dcvit": [(1e6, 0.8), (2e6, 0.9)]}, (3e6, 0.92), tmp_path / "acc.png")
    b = plots.metric_vs_error(
        [0.1, 0.2, 0.3], [0.1, 0.2, 0.25], [1.0, 0.5, 0.7], [0, 1, 2], tmp_path / "m.png", 1.0, 0.5
    )
    assert _mode(a) == _mode(b) == 0o644
