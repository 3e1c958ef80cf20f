"""A compression run's result (CompressionResult): the model, its plan, MACs and per-block structure, the
trial scores and the progressive history; `make_result` builds one for any structure's run."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from .macs import count_macs
from .scoring import Trial

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .planning import BasePlan


@dataclass(frozen=True)
class CompressionResult:
    model: nn.Module
    plan: BasePlan  # a Plan (dcvit, drop), a SearchPlan (auto, mlp), or a plug-in structure's plan
    blocks: tuple[int, ...]  # compressed (or dropped) blocks, in the order they were done
    scores: dict[int, float]  # selection metric per candidate block (lower is better)
    trials: dict[int, Trial]
    history: tuple[dict, ...]  # one record per progressive step
    macs: int
    seconds: dict[str, float] = field(default_factory=dict)
    structure: tuple[dict, ...] = ()  # per block: attention kept, MLP units kept of the original
    # how closely the model answers as the teacher on the shots: {"shots", "top1_agreement"} (the share whose
    # top-1 class agrees), or {"shots", "output_mse"} for a headless model (Engine.fidelity)
    fidelity: dict = field(default_factory=dict)

    def summary(self, **extra) -> dict:
        """What result.json holds: MACs, the structure per block, scores, timings, the progressive history;
        strict JSON (a non-finite number becomes null)."""
        plan = self.plan
        return strict_json({
            "macs": self.macs, "macs_original": plan.macs_original, "macs_fraction": self.macs / plan.macs_original,
            "blocks": list(self.blocks), "structure_kind": plan.structure, "structure": list(self.structure),
            "describe": self.describe(), "plan": plan.describe(), **plan.record(),
            "scores": {str(b): s for b, s in self.scores.items()}, "seconds": self.seconds,
            "fidelity": self.fidelity, "history": list(self.history), "notes": self.notes(), **extra,
        })  # fmt: skip

    def save(self, folder: str | Path, **extra) -> dict:
        """FOLDER/model (dcvit.load-able) and FOLDER/result.json (the summary, with `extra`); returns it."""
        from .files import save
        from .storage import write_json

        folder = Path(folder)
        summary = self.summary(model_dir=str(save(self.model, folder / "model")), **extra)
        write_json(folder / "result.json", summary)
        return summary

    def describe(self) -> str:
        """The compressed structure, one line per changed block."""
        lines = [
            f"{self.macs / 1e6:.2f}M MACs ({100 * self.macs / self.plan.macs_original:.1f}% of "
            f"{self.plan.macs_original / 1e6:.2f}M), structure '{self.plan.structure}':"
        ]
        lines += [f"  block {s['block']:>2}: {s['edit']}" for s in self.structure if s["edit"] != "kept"]
        lines += [f"  note: {note}" for note in self.notes()]
        return "\n".join(lines)

    def notes(self) -> list[str]:
        """What a reader of the result should know, recorded by the steps (e.g. why a search landed well below
        its target: dcvit.knapsack.landing)."""
        return [h["landing"]["note"] for h in self.history if "note" in h.get("landing", {})]


def strict_json(value):
    """JSON without NaN/Infinity (not JSON, refused by strict readers): non-finite numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def block_structure(model: nn.Module, original: nn.Module) -> tuple[dict, ...]:
    """What each block of `model` kept of `original`'s: attention or not, how many MLP units."""
    from .arch import get_adapter
    from .surgery import block_heads, block_state

    adapter = get_adapter(model)
    rows = []
    for b, (block, before) in enumerate(zip(adapter.blocks(model), adapter.blocks(original))):
        attention, units = block_state(adapter, block)
        _, width = block_state(adapter, before)
        heads, heads_before = block_heads(adapter, block), block_heads(adapter, before)
        parts = (
            "attention removed" if not attention else "",
            f"heads {heads_before}->{heads}" if attention and heads < heads_before else "",
            "MLP removed" if units == 0 else f"MLP {width}->{units}" if units < width else "",
        )
        edit = "dropped" if not attention and units == 0 else ", ".join(p for p in parts if p) or "kept"
        row = {"block": b, "attention": attention, "mlp_units": units, "mlp_units_original": width, "edit": edit}
        if heads_before:  # only adapters that can prune heads report them
            row |= {"heads": heads, "heads_original": heads_before}
        rows.append(row)
    return tuple(rows)


def as_loaded(model: nn.Module) -> nn.Module:
    """`model` as dcvit.load gives a checkpoint (on the CPU, trainable, in eval mode), in place: a run's result is
    the same whether its model was read back or kept in memory."""
    return model.cpu().requires_grad_(True).eval()


def make_result(
    engine: Engine,
    plan: BasePlan,
    model: nn.Module,
    *,
    blocks: Sequence[int],
    history: Sequence[dict],
    seconds: dict[str, float],
    scores: dict[int, float] | None = None,
    trials: dict[int, Trial] | None = None,
) -> CompressionResult:
    """A structure's finished run as a CompressionResult: its MACs and per-block structure measured on `model`,
    given back as dcvit.load gives a checkpoint (on the CPU, trainable), whether it was read back or kept in
    memory."""
    if model is engine.teacher:  # the engine's frozen copy stays as it is for the family's other targets
        model = copy.deepcopy(model)
    model = as_loaded(model)
    return CompressionResult(
        model=model,
        plan=plan,
        blocks=tuple(blocks),
        scores=scores or {},
        trials=trials or {},
        history=tuple(history),
        macs=count_macs(model, plan.input_size),
        seconds=seconds,
        structure=block_structure(model, engine.teacher),
    )
