"""Structure search (docs/method.md §11): the synthetic metric set chooses what each block loses.

DC-ViT always removes attention and narrows the MLPs of the blocks it picks. Which part of a block is
redundant depends on the model, so the auto structure (dcvit.structures.auto) lets the metric decide, per
block, among: keep; narrow the MLP; remove the MLP (attention kept); remove the attention (the MLP maybe
narrowed); drop the block; and, with `CompressConfig.prune_heads`, keep only some whole attention heads (where
the adapter can prune them). These edits and their MACs are dcvit.edits.

The design, in `plan.steps` progressive steps (CompressConfig.search_steps; by default one per block's
worth of MACs removed) (Algorithm 1's shape, with the structure chosen per step):
1. Score every edit of every candidate block on the current model, zero-shot: the increase of Eq. 6's KL on
   the synthetic set when only that edit is made (one forward pass of the metric set per edit).
2. At the first step, confirm the leading edits (the best KL per MAC saved, one trial per candidate block,
   as many trials as DC-ViT runs) with the block-wise trial: a short mimicking fine-tune, then Eq. 6 again.
   A confirmed edit is scored by its KL after recovery; the others keep their KL before recovery, an upper
   bound of it.
3. Choose the edits of this step with a multiple-choice knapsack (dcvit.knapsack): the least total KL increase
   among sets (at most one edit per block) that save this step's share of the MACs still to remove. Scores
   are summed, the usual first-order assumption; the next step re-scores on the fine-tuned model, which
   corrects it.
4. Apply them, fine-tune by feature mimicking (Eq. 3), checkpoint, repeat until the target is met.
Labels and test data are never used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from .arch.base import Adapter
from .edits import Edit, block_savings, head_menu, menu
from .knapsack import choose, landing, landing_note
from .macs import MacsProfile, count_macs, macs_profile
from .scoring import kl_of_logits, kl_score
from .surgery import DroppedBlock, block_heads, block_state, edit_block, edit_blocks, random_units
from .workspace import Workspace

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .planning import SearchPlan

# Scoring stacks the edits of a block on the batch axis up to this many elements of the block input (64 MB in
# float32): a 28-px model's whole menu at once, a few edits at a time at 224 px. On 2 CPU cores it takes 0.99x
# (28 px) and 0.92x (224 px) the time of one pass per edit when idle, 0.47x / 0.79x under load (BENCHMARKS.md,
# "Cost at scale"); 1 scores one edit per pass.
STACKED_ELEMENTS = 2**24
LANDING_TOLERANCE = 0.01  # of the original MACs: a search landing further below its target says why


@torch.no_grad()
def input_importance(model: nn.Module, linears: dict, images: torch.Tensor) -> dict:
    """Per input feature of each Linear: mean |input| on `images` times the norm of its weight column, i.e.
    how much the feature writes into the Linear's output (for fc2: an MLP unit's share of the residual stream)."""
    sums, hooks = {}, []
    for key, linear in linears.items():
        hooks.append(
            linear.register_forward_hook(
                lambda m, inputs, out, key=key: sums.__setitem__(key, inputs[0].abs().flatten(0, -2).mean(0))
            )
        )
    try:
        model.eval()(images)
    finally:
        for h in hooks:
            h.remove()
    return {key: sums[key].float().cpu() * linear.weight.norm(dim=0).float().cpu() for key, linear in linears.items()}


def kept_units(width: int, units: int, importance: torch.Tensor | None, seed: int, block: int) -> list[int] | None:
    """Which of a block's current units stay: the most important, or a seeded random subset."""
    if units == width:
        return None
    if importance is None:
        return random_units(width, units, seed, block)
    return sorted(importance.topk(units).indices.tolist())


@torch.no_grad()
def block_inputs(model: nn.Module, adapter, images: torch.Tensor) -> list[torch.Tensor]:
    """The tensor entering each block when `model` runs on `images` (one forward pass)."""
    inputs, hooks = {}, []
    for i, block in enumerate(adapter.blocks(model)):
        hooks.append(block.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0])))
    try:
        model.eval()(images)
    finally:
        for h in hooks:
            h.remove()
    return [inputs[i] for i in range(len(inputs))]


@contextmanager
def starting_at(model: nn.Module, adapter, index: int, block: nn.Module, cached: torch.Tensor) -> Iterator[None]:
    """Run `model` with `block` at `index` fed the cached input and the blocks before it skipped: scoring an
    edit of block b then costs the blocks from b on. Blocks keep their input's shape, so the identities that
    stand in for the skipped ones (and any stage transitions between them) still fit."""
    saved = adapter.blocks(model)
    for i in range(index):
        adapter.set_block(model, i, DroppedBlock())
    adapter.set_block(model, index, block)
    hook = block.register_forward_pre_hook(lambda m, args: (cached, *args[1:]))
    try:
        yield
    finally:
        hook.remove()
        for i in range(index + 1):
            adapter.set_block(model, i, saved[i])


class Stacked(nn.Module):
    """Several versions of one block run on the same input, their outputs stacked on the batch axis: the blocks
    after it then see one batch per version."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.versions = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        outs = [block(x, *args, **kwargs) for block in self.versions]
        if not all(isinstance(out, torch.Tensor) for out in outs):  # e.g. a transformers layer's tuple
            raise NotStackable
        return torch.cat(outs)


class NotStackable(Exception):
    """A block whose output is not one tensor: its edits are scored one forward pass at a time."""


class Search:
    """One structure-search run on an Engine (teacher, shots, metric set, workspace); `mlp_only` offers
    MLP edits only (dcvit.structures.mlp)."""

    def __init__(self, engine: Engine, plan: SearchPlan, mlp_only: bool = False):
        self.engine, self.plan = engine, plan
        self.config, self.adapter = engine.config, engine.adapter
        self.mlp_only = mlp_only
        self.original = [block_state(self.adapter, b)[1] for b in self.adapter.blocks(engine.teacher)]
        self.original_heads = [block_heads(self.adapter, b) for b in self.adapter.blocks(engine.teacher)]
        self.prune_heads = self.config.prune_heads and not self.mlp_only

    # --- 1. zero-shot scores ------------------------------------------------------------------------
    def candidates(self, model: nn.Module, profile: MacsProfile) -> list[Edit]:
        """Every edit of every candidate block, not yet scored (saved from `profile`, score 0)."""
        blocks = self.adapter.blocks(model)
        out = []
        for b in self.plan.candidate_blocks:
            if isinstance(blocks[b], nn.Identity):
                continue
            had, width = block_state(self.adapter, blocks[b])
            heads_now = block_heads(self.adapter, blocks[b])
            options = [(a, u, None) for a, u in menu(had, width, self.original[b], self.mlp_only)]
            if self.prune_heads and heads_now:
                options += [(True, width, h) for h in head_menu(heads_now, self.original_heads[b])]
            out += [
                Edit(b, a, u, block_savings(profile, b, had, width, a, u, heads_now, h), 0.0, heads=h)
                for a, u, h in options
            ]
        return out

    def change(self, model: nn.Module, edit: Edit, importance) -> tuple:
        """The edit_block arguments for one edit: (attention kept, the kept unit indices or None for all, the
        kept head indices or None for all), units and heads picked by the configured choice."""
        block = self.adapter.blocks(model)[edit.block]
        width = block_state(self.adapter, block)[1]
        units = [] if edit.units == 0 < width else None
        if units is None:  # kept_units: None when every unit stays
            units = kept_units(width, edit.units, importance.get(edit.block), self.config.seed, edit.block)
        heads = None
        if edit.heads is not None:  # seeded apart from the units' choice (block + 1000)
            scores = importance.get(("heads", edit.block))
            heads = kept_units(
                block_heads(self.adapter, block), edit.heads, scores, self.config.seed, 1000 + edit.block
            )
        return edit.attention, units, heads

    @torch.no_grad()
    def zero_shot(self, model: nn.Module, profile: MacsProfile, importance: dict) -> list[Edit]:
        """Each edit's KL increase. The edits of one block share the blocks after it: their edited blocks run
        side by side on the cached block input and the rest of the model once on the stacked outputs
        (images are independent, so each edit's logits are those of its own forward pass)."""
        x, logits = self.engine.metric_images, self.engine.metric_logits
        base = kl_score(logits, model, x)
        inputs = block_inputs(model, self.adapter, x)
        edits = self.candidates(model, profile)
        scored = []
        for group in self.engine.progress(self._groups(edits, inputs), "scoring edits"):
            index = group[0].block
            blocks = [self._edited(model, e, importance) for e in group]
            for e, out in zip(group, self._logits(model, index, blocks, inputs[index], x)):
                scored.append(replace(e, score=kl_of_logits(logits, out) - base))
        return scored

    def scores(self, model: nn.Module, profile: MacsProfile, index: int) -> tuple[dict, list[Edit]]:
        """The unit importance and every edit's zero-shot score at step `index`. The first step edits the teacher
        whatever the target, so a family's targets score it once (kept in the engine for the run); the key holds
        every plan field the scores read (the config's are the same for the whole run)."""

        def compute() -> tuple[dict, list[Edit]]:
            importance = self.importance(model)
            return importance, self.zero_shot(model, profile, importance)

        if index or model is not self.engine.teacher:
            return compute()
        plan = self.plan
        key = ("search-first-step", plan.structure, tuple(plan.candidate_blocks), tuple(plan.input_size))
        found = self.engine.memo.get(key)
        if found is None:
            found = self.engine.memo[key] = compute()
        return found[0], list(found[1])

    @staticmethod
    def _groups(edits: list[Edit], inputs: list[torch.Tensor]) -> list[list[Edit]]:
        """The edits by block, in their order, each block's cut to at most STACKED_ELEMENTS of stacked input."""
        groups = []
        for b in dict.fromkeys(e.block for e in edits):
            mine = [e for e in edits if e.block == b]
            size = max(1, STACKED_ELEMENTS // max(inputs[b].numel(), 1))
            groups += [mine[i : i + size] for i in range(0, len(mine), size)]
        return groups

    def _edited(self, model: nn.Module, edit: Edit, importance: dict) -> nn.Module:
        current = self.adapter.blocks(model)[edit.block]
        return edit_block(self.adapter, current, *self.change(model, edit, importance)).to(
            self.engine.accelerator.device
        )

    def _logits(self, model: nn.Module, index: int, blocks: list[nn.Module], cached: torch.Tensor, x: torch.Tensor):
        """The model's logits with block `index` replaced by each of `blocks` in turn, one tensor per block."""
        # Stacking puts the versions in the model as they are: an adapter that wraps the blocks it sets (the
        # transformers ones, whose layers take keywords dcvit's blocks do not) scores one edit at a time.
        if len(blocks) > 1 and type(self.adapter).set_block is Adapter.set_block:
            try:
                with starting_at(model, self.adapter, index, Stacked(blocks), cached):
                    out = model.eval()(x)
                if isinstance(out, torch.Tensor) and out.shape[0] == len(blocks) * len(x):
                    return out.split(len(x))
            except NotStackable:
                pass
        outs = []
        for block in blocks:  # one at a time: a single edit, or a block or model whose output is not one tensor
            with starting_at(model, self.adapter, index, block, cached):
                outs.append(model.eval()(x))
        return outs

    def importance(self, model: nn.Module) -> dict:
        """{} for random choice, else one forward pass on the few shots giving, per block b, each MLP unit's
        input importance to fc2 (key b) and each head's, summed over its channels, to the head projection
        (key ("heads", b))."""
        if self.config.units_by == "random":
            return {}
        blocks = self.adapter.blocks(model)
        candidates = self.plan.candidate_blocks
        linears = {
            b: self.adapter.mlp_linears(blocks[b])[1] for b in candidates if block_state(self.adapter, blocks[b])[1]
        }
        heads = {b: block_heads(self.adapter, blocks[b]) for b in candidates} if self.prune_heads else {}
        linears |= {("heads", b): self.adapter.head_projection(blocks[b]) for b, h in heads.items() if h}
        scores = input_importance(model, linears, self.engine.images.fixed.to(next(model.parameters()).device))
        return {k: v.reshape(heads[k[1]], -1).sum(1) if isinstance(k, tuple) else v for k, v in scores.items()}

    # --- 2. the block-wise trial confirms the leading edits -----------------------------------------
    def confirm(self, model: nn.Module, edits: list[Edit], importance: dict) -> list[Edit]:
        """Trial (fine-tune + Eq. 6) the best edit per MAC saved of each candidate block."""
        leading = {}
        for e in sorted(edits, key=lambda e: e.score / max(e.saved, 1)):
            leading.setdefault(e.block, e)
        confirmed = {}
        epochs = self.config.epochs_per_trial
        self.engine.skip((len(self.plan.candidate_blocks) - len(leading)) * epochs)  # blocks with nothing to try
        for e in self.engine.progress(list(leading.values()), "block-wise trial"):
            # Trials edit the teacher, whatever the target: a family shares them.
            key = Workspace.search_trial_key(self.plan.structure, e.block, e.attention, e.units, e.heads)
            if self.engine.workspace.has(key):
                self.engine.skip(epochs)
            else:
                start = time.perf_counter()
                candidate = self._apply(model, [e], importance)
                fit = self.engine.fine_tune(candidate, [e.block], epochs, key)
                kl = kl_score(self.engine.metric_logits, candidate, self.engine.metric_images)
                self.engine.workspace.save(
                    key, candidate, {"kl": kl, "train_loss": fit.final_loss, "seconds": time.perf_counter() - start}
                )
            confirmed[(e.block, e.attention, e.units, e.heads)] = self.engine.workspace.meta(key)["kl"]
        return [
            replace(e, score=confirmed[key], confirmed=True)
            if (key := (e.block, e.attention, e.units, e.heads)) in confirmed
            else e
            for e in edits
        ]

    # --- 3-4. choose, apply, fine-tune ----------------------------------------------------------------
    def _apply(self, model: nn.Module, edits: Sequence[Edit], importance: dict) -> nn.Module:
        return edit_blocks(model, {e.block: self.change(model, e, importance) for e in edits})

    def step(self, model: nn.Module, index: int) -> tuple[nn.Module, dict]:
        plan = self.plan
        key = Workspace.search_step_key(plan.structure, plan.macs_target, index, plan.steps, plan.candidate_blocks)
        confirms = index == 0 and self.engine.metric.confirms_search
        if self.engine.workspace.has(key):  # done: neither its fine-tune nor its trials are left to do
            trials = len(self.plan.candidate_blocks) * self.config.epochs_per_trial if confirms else 0
            self.engine.skip(self.config.epochs + trials)
            return self.engine.workspace.load(key), self.engine.workspace.meta(key)
        start = time.perf_counter()
        profile = macs_profile(model, self.plan.input_size)  # one trace: the need and every edit's saving
        steps_left = self.plan.steps - index
        need = math.ceil((profile.total - self.plan.macs_target) / steps_left)
        importance, edits = self.scores(model, profile, index)
        if confirms:
            edits = self.confirm(model, edits, importance)
        chosen = choose(edits, need)
        tolerance = math.floor(LANDING_TOLERANCE * self.plan.macs_original)
        past = landing(edits, chosen, need, tolerance) if index == self.plan.steps - 1 else None
        new = self._apply(model, chosen, importance)
        seed_name = Workspace.search_step_seed(plan.structure, plan.macs_target, index)
        fit = self.engine.fine_tune(new, [e.block for e in chosen] or [0], self.config.epochs, seed_name)
        meta = {
            "step": index,
            "need": need,
            "macs": count_macs(new, self.plan.input_size),
            "chosen": [asdict(e) for e in chosen],
            "scored": [asdict(e) for e in edits],
            "train_loss": fit.final_loss,
            "seconds": time.perf_counter() - start,
            "images_per_second": fit.images_per_second,
        }
        if past is not None:  # the result's notes read it (CompressionResult.notes)
            meta["landing"] = {**past, "note": landing_note(past, self.plan.macs_original)}
        self.engine.workspace.save(key, new, meta)
        # Go on with the model in memory: the checkpoint is for a resume, and it reloads as this very network
        # (the save checks that), so reading it back would only cost a rebuild.
        return new, meta

    def run(self) -> tuple[nn.Module, list[dict]]:
        model = self.engine.teacher
        history = []
        for index in range(self.plan.steps):
            model, meta = self.step(model, index)
            history.append(meta)
        return model, history
