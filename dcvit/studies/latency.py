"""Latency of the original, the DC-ViT structure, narrowed MLPs and the block-dropped structure at equal MACs.

Models are timed interleaved (one forward of each per round) and summarised by medians, so slow
drifts of a noisy machine hit every model alike; speed is reported as ratios from the same run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter
from ..macs import count_macs, macs_profile
from ..planning import default_candidates
from ..planning import plan as make_plan
from ..surgery import apply_plan, drop_blocks, edit_blocks
from .timing import interleaved_medians


@dataclass(frozen=True)
class LatencyRow:
    name: str
    macs: int
    batch_size: int
    median_ms: float

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@torch.no_grad()
def time_interleaved(
    models: dict[str, nn.Module],
    input_size,
    batch_size: int,
    repeats: int = 20,
    warmup: int = 3,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Median milliseconds per forward pass of each model (on `device`), measured in interleaved rounds."""
    x = torch.randn(batch_size, *input_size, device=device)
    runs = {name: (lambda m=model.eval(): m(x)) for name, model in models.items()}
    return {name: 1000 * t for name, t in interleaved_medians(runs, repeats, warmup, device=device).items()}


def narrowed_mlps(model: nn.Module, target: int) -> nn.Module:
    """Every MLP narrowed by the same share, attention kept everywhere, to at most `target` MACs: the kind of
    structure the search chose on the shipped teacher (a latency stand-in: auto's choice needs the data)."""
    profile = macs_profile(model)
    share = (profile.total - target) / sum(profile.mlp)
    edits = {b: (True, list(range(math.floor(h * (1 - share))))) for b, h in enumerate(profile.mlp_hidden)}
    return edit_blocks(model, edits)


def equal_macs_structures(model: nn.Module, drop: int) -> dict[str, nn.Module]:
    """The block-dropped model (first `drop` candidate blocks), and the DC-ViT structure and narrowed MLPs
    at its MACs."""
    num_blocks = len(get_adapter(model).blocks(model))
    candidates = default_candidates(num_blocks)
    dropped = drop_blocks(model, candidates[:drop])
    target = count_macs(dropped)
    plan = make_plan(model, target)
    return {
        f"drop{drop}": dropped,
        f"dcvit{drop}": apply_plan(model, plan, candidates[: plan.n_blocks]),
        f"mlp{drop}": narrowed_mlps(model, target),
    }


def latency_table(
    model: nn.Module,
    drops: Sequence[int] = (1, 2, 3),
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
    input_size: Sequence[int] | None = None,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> list[LatencyRow]:
    """Each structure at equal MACs, timed on `device` inside `autocast()` (e.g. an Accelerator's autocast)."""
    from ..macs import default_input_size

    input_size = tuple(input_size) if input_size is not None else default_input_size(model)
    models = {"original": model}
    for k in drops:
        models.update(equal_macs_structures(model, k))
    macs = {name: count_macs(m, input_size) for name, m in models.items()}
    models = {name: m.to(device) for name, m in models.items()}  # built where surgery runs, timed where asked
    rows = []
    for bs in batch_sizes:
        with autocast():
            medians = time_interleaved(models, input_size, bs, repeats, device=device)
        rows += [LatencyRow(name, macs[name], bs, medians[name]) for name in models]
    return rows


def format_latency(rows: Sequence[LatencyRow]) -> str:
    """Markdown table: MACs ratio and latency ratio to the original, and DC-ViT vs block dropping."""
    base = {r.batch_size: r for r in rows if r.name == "original"}
    by_name = {(r.name, r.batch_size): r for r in rows}
    lines = [
        "| model | batch | MACs (M) | MACs ratio | median ms | latency ratio | vs drop at equal MACs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r.batch_size]
        versus = ""
        if r.name.startswith(("dcvit", "mlp")):
            drop = by_name[("drop" + r.name.lstrip("dcvitmlp"), r.batch_size)]
            versus = f"{r.median_ms / drop.median_ms:.3f}"
        lines.append(
            f"| {r.name} | {r.batch_size} | {r.macs / 1e6:.1f} | {r.macs / b.macs:.3f} | "
            f"{r.median_ms:.2f} | {r.median_ms / b.median_ms:.3f} | {versus} |"
        )
    return "\n".join(lines)
