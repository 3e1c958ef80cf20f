"""The paper's structure (docs/method.md §2-3, Eq. 1-2): n blocks lose their attention and keep a share of
their MLP units, chosen by the block-wise trial and pruned progressively (Algorithm 1, `progressive_run`,
which the block-dropping baseline runs too).

1. plan the structure for the target (Eq. 1-2, dcvit.planning.plan);
2. block-wise trial: fine-tune and score one candidate per block (Eq. 6, dcvit.scoring);
3. progressive pruning: start from the best candidate, compress the next-best block, fine-tune, repeat
   until n blocks are compressed, each step checkpointed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from ..planning import Plan
from ..planning import plan as paper_plan
from ..result import CompressionResult, make_result
from ..scoring import Trial
from ..structure_registry import PAPER_STRUCTURE, Structure, register_structure
from ..surgery import activation_units, apply_plan, reinit_mlps
from ..workspace import Workspace

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine


# --- Algorithm 1, step 2: the block-wise trial (Eq. 6 on each fine-tuned candidate) ---------------------
def run_trials(engine: Engine, plan: Plan, candidates: Sequence[int]) -> dict[int, Trial]:
    """Fine-tune and score one candidate model per block; returns {block: Trial} (all processes agree)."""
    acc = engine.accelerator
    mine = list(candidates)[acc.process_index :: acc.num_processes]
    engine.skip((len(candidates) - len(mine)) * engine.config.epochs_per_trial)  # the other processes' share
    for block in engine.progress(mine, "block-wise trial"):
        key = Workspace.trial_key(engine.config.structure, plan, block)
        if engine.workspace.has(key):
            engine.skip(engine.config.epochs_per_trial)
            continue
        model, fit, seconds = engine.build_and_tune(
            key, engine.teacher, plan, [block], [block], engine.config.epochs_per_trial
        )
        trial = engine.score(model, block, fit.final_loss, seconds, acc.process_index)
        engine.workspace.save(key, model, trial.__dict__)
    acc.wait_for_everyone()
    structure = engine.config.structure
    return {b: Trial(**engine.workspace.meta(Workspace.trial_key(structure, plan, b))) for b in candidates}


def rank(trials: dict[int, Trial]) -> list[int]:
    """Blocks from most to least recoverable (lowest score first; ties by block index)."""
    return sorted(trials, key=lambda b: (trials[b].score, b))


# --- Algorithm 1, step 3: progressive pruning -----------------------------------------------------------
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
    first = Workspace.trial_key(surgery, plan, order[0])
    model = engine.workspace.load(first)
    history = [{"blocks": order[:1], **engine.workspace.meta(first)}]
    for i in range(1, len(order)):
        key = Workspace.step_key(surgery, plan, order[: i + 1], progressive=True)
        if engine.workspace.has(key):  # done before a resume: read back
            engine.skip(engine.config.epochs)
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
    key = Workspace.step_key(engine.config.structure, plan, sorted(order), progressive=False)
    if engine.workspace.has(key):
        engine.skip(engine.config.epochs * len(order))
        return engine.workspace.load(key), [engine.workspace.meta(key)]
    model, fit, seconds = engine.build_and_tune(
        key, engine.teacher, plan, order, order, engine.config.epochs * len(order)
    )
    _save_step(engine, key, order, model, fit, seconds)
    return model, [engine.workspace.meta(key)]


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
    model, history = engine.workspace.main_first(lambda: step(engine, plan, order))
    timings["progressive"] = time.perf_counter() - start
    scores = {b: t.score for b, t in trials.items()}
    seconds = {**engine.timings, **timings}
    return make_result(
        engine, plan, model, blocks=order, scores=scores, trials=trials, history=history, seconds=seconds
    )


@register_structure
class Dcvit(Structure):
    name = PAPER_STRUCTURE
    summary = "the paper (attention removed, MLPs narrowed, Eq. 1-2)"
    units_by = "random"  # the paper keeps random MLP units

    def plan(self, model, target_macs, *, input_size=None, candidate_blocks=None, blocks=None, steps=None):
        return paper_plan(model, target_macs, blocks=blocks, input_size=input_size, candidate_blocks=candidate_blocks)

    def plan_for(self, model, target_macs, config):
        """Eq. 1-2's plan, with `config.extra_blocks` more blocks compressed (an ablation)."""
        base = self.plan(model, target_macs, candidate_blocks=config.candidate_blocks)
        if not config.extra_blocks:
            return base
        return self.plan(
            model, target_macs, blocks=base.n_blocks + config.extra_blocks, candidate_blocks=config.candidate_blocks
        )

    def run(self, engine, plan):
        return progressive_run(engine, plan)

    def planned_epochs(self, plan, config):
        """A trial per candidate block, then the progressive steps (or all blocks at once, for n steps' epochs)."""
        steps = plan.n_blocks - 1 if config.progressive else plan.n_blocks
        return len(plan.candidate_blocks) * config.epochs_per_trial + steps * config.epochs

    def build(self, engine, base, plan, blocks):
        """Attention removed (if planned) and plan.hidden_for(width) MLP units kept: random ones, or those
        with the largest activations on the few shots (the unit-choice ablation)."""
        units = None
        if engine.config.units_by == "activation":
            # base may be a checkpoint loaded on the CPU while the teacher sits on the accelerator
            x = engine.images.fixed.to(next(base.parameters()).device)
            adapter = engine.adapter
            hidden = lambda b: plan.hidden_for(adapter.mlp_hidden(adapter.blocks(base)[b]))
            units = {b: activation_units(base, b, x, hidden(b)) for b in blocks}
        model = apply_plan(base, plan, blocks, seed=engine.config.seed, units=units)
        if engine.config.reinit_mlp:
            reinit_mlps(model, blocks, seed=engine.config.seed)
        return model

    def describe(self, plan):
        what = "attention removed" if plan.remove_attention else "attention kept"
        return (
            f"compress {plan.n_blocks} block(s), {what}, MLP {plan.mlp_hidden_original} -> {plan.mlp_hidden} units "
            f"({100 * plan.keep_ratio:.1f}% of each block's own); "
            f"MACs {plan.macs_original / 1e6:.2f}M -> {plan.macs_planned / 1e6:.2f}M "
            f"(target {plan.macs_target / 1e6:.2f}M, {100 * plan.macs_planned / plan.macs_original:.1f}%)"
        )
