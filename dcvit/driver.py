"""The progressive driver (docs/method.md §1, Algorithm 1) and dense families.

1. plan the structure for the target (Eq. 1-2);
2. block-wise trial: fine-tune and score one candidate per block (Eq. 6, dcvit.scoring);
3. progressive pruning: start from the best candidate, compress the next-best block, fine-tune, repeat
   until n blocks are compressed. Every finished step is checkpointed, so `resume=True` continues a
   killed run and ends with exactly the model an uninterrupted run makes.

Which plan is made and how it is run is the structure's (dcvit.structures): the paper's structure and the
block-dropping baseline run the steps above (`progressive_run`), the structure search its own (dcvit.search).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from .arch import runnable
from .config import CompressConfig
from .data import as_shots
from .engine import Engine
from .fingerprint import check_plan_for
from .macs import count_macs, macs_profile
from .planning import BasePlan, Plan
from .progress import api_logging
from .scoring import Trial
from .structures.registry import get_structure


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

    def summary(self, **extra) -> dict:
        """What result.json holds: MACs, the structure per block, scores, timings, the progressive history;
        strict JSON (a non-finite number becomes null)."""
        plan = self.plan
        return strict_json({
            "macs": self.macs, "macs_original": plan.macs_original, "macs_fraction": self.macs / plan.macs_original,
            "blocks": list(self.blocks), "structure_kind": plan.structure, "structure": list(self.structure),
            "describe": self.describe(), "plan": plan.describe(), **plan.record(),
            "scores": {str(b): s for b, s in self.scores.items()}, "seconds": self.seconds,
            "history": list(self.history), "notes": self.notes(), **extra,
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
        """What a reader of the result should know, e.g. why a search landed well below its target."""
        from .search import landing_note

        return [landing_note(h["landing"], self.plan.macs_original) for h in self.history if "landing" in h]


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


# --- Algorithm 1, step 2: the block-wise trial (Eq. 6 on each fine-tuned candidate) ---------------------
def trial_key(plan: Plan, block: int, surgery: str) -> str:
    return f"trial-{surgery}-b{block}-h{plan.mlp_hidden}-a{int(plan.remove_attention)}"


def run_trials(engine: Engine, plan: Plan, candidates: Sequence[int]) -> dict[int, Trial]:
    """Fine-tune and score one candidate model per block; returns {block: Trial} (all processes agree)."""
    acc = engine.accelerator
    mine = list(candidates)[acc.process_index :: acc.num_processes]
    for block in engine.progress(mine, "block-wise trial"):
        key = trial_key(plan, block, engine.config.structure)
        if engine.workspace.has(key):
            continue
        model, fit, seconds = engine.build_and_tune(
            key, engine.teacher, plan, [block], [block], engine.config.epochs_per_trial
        )
        trial = engine.score(model, block, fit.final_loss, seconds, acc.process_index)
        engine.workspace.save(key, model, trial.__dict__)
    acc.wait_for_everyone()
    return {b: Trial(**engine.workspace.meta(trial_key(plan, b, engine.config.structure))) for b in candidates}


def rank(trials: dict[int, Trial]) -> list[int]:
    """Blocks from most to least recoverable (lowest score first; ties by block index)."""
    return sorted(trials, key=lambda b: (trials[b].score, b))


# --- Algorithm 1, step 3: progressive pruning -----------------------------------------------------------
def plan_for(model: nn.Module, target_macs: float, config: CompressConfig) -> BasePlan:
    """The plan `config.structure` makes for `target_macs` (see dcvit.structures)."""
    return get_structure(config.structure).plan_for(model, target_macs, config)


def _step_key(plan: Plan, blocks: Sequence[int], surgery: str, progressive: bool) -> str:
    mode = "prog" if progressive else "topk"
    return f"{mode}-{surgery}-h{plan.mlp_hidden}-a{int(plan.remove_attention)}-" + "-".join(map(str, blocks))


def _save_step(engine: Engine, key: str, blocks: Sequence[int], model: nn.Module, fit, seconds: float) -> None:
    engine.workspace.save(
        key,
        model,
        {
            "blocks": list(blocks),
            "train_loss": fit.final_loss,
            "seconds": seconds,
            "images_per_second": fit.images_per_second,
        },
    )


def _progressive(engine: Engine, plan: Plan, order: list[int]) -> tuple[nn.Module, list[dict]]:
    """Algorithm 1, step 3: grow the compressed set one block at a time from the best candidate."""
    surgery = engine.config.structure
    first = trial_key(plan, order[0], surgery)
    model = engine.workspace.load(first)
    history = [{"blocks": order[:1], **engine.workspace.meta(first)}]
    for i in range(1, len(order)):
        key = _step_key(plan, order[: i + 1], surgery, True)
        if engine.workspace.has(key):  # done before a resume: read back
            model = engine.workspace.load(key)
        else:  # the step's model goes on in memory; its checkpoint serves a resume
            model, fit, seconds = engine.build_and_tune(
                key, model, plan, [order[i]], order[: i + 1], engine.config.epochs
            )
            _save_step(engine, key, order[: i + 1], model, fit, seconds)
        history.append(engine.workspace.meta(key))
    return model, history


def _all_at_once(engine: Engine, plan: Plan, order: list[int]) -> tuple[nn.Module, list[dict]]:
    """Top-k ablation and PRACTISE-style dropping: all n blocks at once, fine-tuned for n steps' epochs."""
    key = _step_key(plan, sorted(order), engine.config.structure, False)
    if engine.workspace.has(key):
        return engine.workspace.load(key), [engine.workspace.meta(key)]
    model, fit, seconds = engine.build_and_tune(
        key, engine.teacher, plan, order, order, engine.config.epochs * len(order)
    )
    _save_step(engine, key, order, model, fit, seconds)
    return model, [engine.workspace.meta(key)]


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
    model = model.cpu().requires_grad_(True).eval()
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


def progressive_run(engine: Engine, plan: Plan) -> CompressionResult:
    """Algorithm 1 for a structure with per-block surgery (Structure.build): trial, rank, then progressive
    pruning (or all at once for the top-k ablation and the baseline)."""
    timings = {}
    start = time.perf_counter()
    trials = run_trials(engine, plan, plan.candidate_blocks)
    timings["trials"] = time.perf_counter() - start
    order = rank(trials)[: plan.n_blocks]
    start = time.perf_counter()
    step = _progressive if engine.config.progressive else _all_at_once
    if engine.accelerator.is_main_process:
        model, history = step(engine, plan, order)
    engine.accelerator.wait_for_everyone()
    if not engine.accelerator.is_main_process:  # the steps are checkpointed: this only reads the main process's result
        model, history = step(engine, plan, order)
    timings["progressive"] = time.perf_counter() - start
    scores = {b: t.score for b, t in trials.items()}
    seconds = {**engine.timings, **timings}
    return make_result(
        engine, plan, model, blocks=order, scores=scores, trials=trials, history=history, seconds=seconds
    )


def compress(
    model: nn.Module,
    target_macs: float | BasePlan,
    data: Dataset | torch.Tensor | Sequence,
    config: CompressConfig = CompressConfig(),
    *,
    workdir: str | Path | None = None,
    resume: bool = False,
    metric_set=None,
    metric_cache: str | Path | bool | None = None,
) -> CompressionResult:
    """Compress `model` to `target_macs` (fraction in (0, 1) or absolute MACs, or the Plan that
    plan_for(model, target, config) already returned) with the unlabeled few-shot `data`.

    `data` yields (image, label) pairs, or is an N x C x H x W tensor or a list of images; labels are ignored. PIL images get the model's transforms (and
    augmentation when `config.augment`); tensors are used as they are. `workdir` keeps checkpoints.
    `metric_set` (a synth.SyntheticSet) reuses a synthetic metric set instead of making one. `metric_cache`: the
    folder of the metric-set cache, False or "off" for none; None: $DCVIT_METRIC_CACHE, else
    $XDG_CACHE_HOME/dcvit/metric-sets (dcvit.metric_cache). Results are the same with or without it.
    """
    return compress_family(
        model, [target_macs], data, config, workdir=workdir, resume=resume, metric_set=metric_set,
        metric_cache=metric_cache,
    )[0]  # fmt: skip


def compress_family(
    model: nn.Module,
    targets: Sequence[float | BasePlan],
    data: Dataset | torch.Tensor | Sequence,
    config: CompressConfig = CompressConfig(),
    *,
    workdir: str | Path | None = None,
    resume: bool = False,
    metric_set=None,
    metric_cache: str | Path | bool | None = None,
) -> list[CompressionResult]:
    """A dense family: one result per target, sharing the synthetic set, teacher tokens and any trial
    whose plan (width, attention) matches. A target may be a Plan from plan_for with the same config, so a
    caller that showed the plans first does not compute them again."""
    if not targets:
        raise ValueError("give at least one target MACs")
    for t in targets:  # a plan for another model or structure: refused before any work
        if isinstance(t, BasePlan):
            check_plan_for(t, model, config.structure, macs_profile)
    model = runnable(model)  # the engine needs logits tensors (a transformers model returns a ModelOutput)
    data = as_shots(data)
    # Fail on bad targets before any work.
    plans = [t if isinstance(t, BasePlan) else plan_for(model, t, config) for t in targets]
    with api_logging(config.progress):  # a script calling this sees progress lines without configuring logging
        engine = Engine(model, data, config, Path(workdir) if workdir else None, resume, metric_set, metric_cache)
        try:
            return [get_structure(p.structure).run(engine, p) for p in plans]
        finally:
            engine.workspace.cleanup()
