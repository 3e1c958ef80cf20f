"""The paper's structure (docs/method.md §2-3, Eq. 1-2): n blocks lose their attention and keep a share of
their MLP units, chosen by the block-wise trial and pruned progressively (Algorithm 1).

dcvit modules are imported inside the methods: the registry's package loads this module while config and
planning, which this code needs, may still be loading.
"""

from __future__ import annotations

from .registry import PAPER_STRUCTURE, Structure, register_structure


@register_structure
class Dcvit(Structure):
    name = PAPER_STRUCTURE
    summary = "the paper (attention removed, MLPs narrowed, Eq. 1-2)"
    units_by = "random"  # the paper keeps random MLP units

    def plan(self, model, target_macs, *, input_size=None, candidate_blocks=None, blocks=None, steps=None):
        from ..planning import plan

        return plan(model, target_macs, blocks=blocks, input_size=input_size, candidate_blocks=candidate_blocks)

    def plan_for(self, model, target_macs, config):
        """Eq. 1-2's plan, with `config.extra_blocks` more blocks compressed (an ablation)."""
        base = self.plan(model, target_macs, candidate_blocks=config.candidate_blocks)
        if not config.extra_blocks:
            return base
        return self.plan(
            model, target_macs, blocks=base.n_blocks + config.extra_blocks, candidate_blocks=config.candidate_blocks
        )

    def run(self, engine, plan):
        from ..driver import progressive_run

        return progressive_run(engine, plan)

    def planned_epochs(self, plan, config):
        """A trial per candidate block, then the progressive steps (or all blocks at once, for n steps' epochs)."""
        steps = plan.n_blocks - 1 if config.progressive else plan.n_blocks
        return len(plan.candidate_blocks) * config.epochs_per_trial + steps * config.epochs

    def build(self, engine, base, plan, blocks):
        """Attention removed (if planned) and plan.hidden_for(width) MLP units kept: random ones, or those
        with the largest activations on the few shots (the unit-choice ablation)."""
        from ..surgery import activation_units, apply_plan, reinit_mlps

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
