"""The block-dropping baseline (docs/method.md §8, PRACTISE-style): the fewest whole candidate blocks whose
removal reaches the target, ranked by the few-shot loss after a short recovery, dropped all at once, then
recovered with DC-ViT's total fine-tune budget. Algorithm 1's driver with whole-block surgery."""

from __future__ import annotations

from ..planning import plan_block_drop
from ..structure_registry import BASELINE_STRUCTURE, register_structure
from ..surgery import drop_blocks
from .dcvit import Dcvit


@register_structure
class Drop(Dcvit):
    name = BASELINE_STRUCTURE
    summary = "whole blocks (the block-dropping baseline)"
    # PRACTISE ranks by the few-shot loss and drops all blocks at once (config.BLOCK_DROP)
    config_changes = {"metric": "train_loss", "progressive": False}

    def plan(self, model, target_macs, *, input_size=None, candidate_blocks=None, blocks=None, steps=None):
        return plan_block_drop(model, target_macs, input_size=input_size, candidate_blocks=candidate_blocks)

    def plan_for(self, model, target_macs, config):
        return self.plan(model, target_macs, candidate_blocks=config.candidate_blocks)

    def build(self, engine, base, plan, blocks):
        return drop_blocks(base, blocks)

    def describe(self, plan):
        return (
            f"drop {plan.n_blocks} whole block(s); MACs {plan.macs_original / 1e6:.2f}M -> "
            f"{plan.macs_planned / 1e6:.2f}M ({100 * plan.macs_planned / plan.macs_original:.1f}%)"
        )
