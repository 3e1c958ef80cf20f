"""What the structure searches (auto, mlp; docs/method.md §11) share: a SearchPlan (the target, the
candidate blocks, the step count) and a run in which the synthetic metric set chooses every block's edit
(dcvit.search). A search structure says which edits it offers and how low its edits can go (its floor).
"""

from __future__ import annotations

import time
from typing import ClassVar

from ..planning import plan_search
from ..result import make_result
from ..search import Search
from ..structure_registry import Structure


class SearchStructure(Structure):
    mlp_only: ClassVar[bool] = False  # offer MLP edits only (no attention removed, no block dropped)
    edits: ClassVar[str] = ""  # the edits offered, in words (the plan's description)

    def floor(self, profile, candidates) -> tuple[int, str]:
        """The fewest MACs the edits can reach on these candidate blocks, and how, in words."""
        raise NotImplementedError

    def plan(self, model, target_macs, *, input_size=None, candidate_blocks=None, blocks=None, steps=None):
        return plan_search(
            model,
            target_macs,
            structure=self.name,
            steps=steps,
            input_size=input_size,
            candidate_blocks=candidate_blocks,
        )

    def plan_for(self, model, target_macs, config):
        return self.plan(model, target_macs, steps=config.search_steps, candidate_blocks=config.candidate_blocks)

    def planned_epochs(self, plan, config):
        """Each step's fine-tune, and at the first step a trial per candidate block (where the metric confirms
        the search's leading edits: dcvit.search.Search.confirm)."""
        from ..metrics import get_metric

        trials = (
            len(plan.candidate_blocks) * config.epochs_per_trial if get_metric(config.metric).confirms_search else 0
        )
        return trials + plan.steps * config.epochs

    def run(self, engine, plan):
        start = time.perf_counter()
        search = Search(engine, plan, mlp_only=self.mlp_only)
        model, history = engine.workspace.main_first(search.run)  # the others read its checkpoints
        edited = tuple(dict.fromkeys(e["block"] for h in history for e in h["chosen"]))
        scores = {}
        for h in history[:1]:  # a block's score: its best edit at the first step
            for e in h["scored"]:
                scores[e["block"]] = min(scores.get(e["block"], float("inf")), e["score"])
        seconds = {**engine.timings, "search": time.perf_counter() - start}
        return make_result(engine, plan, model, blocks=edited, scores=scores, history=history, seconds=seconds)

    def describe(self, plan):
        return (
            f"structure search ({self.edits}) over blocks {list(plan.candidate_blocks)} in {plan.steps} steps; "
            f"MACs {plan.macs_original / 1e6:.2f}M -> at most {plan.macs_target / 1e6:.2f}M "
            f"({100 * plan.macs_target / plan.macs_original:.1f}%); the synthetic metric set chooses each "
            f"block's edit during compression"
        )
