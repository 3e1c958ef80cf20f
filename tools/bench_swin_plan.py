#!/usr/bin/env python
"""DC-ViT's Eq. 1-2 plan on Swin-T at 75% and 50% of the MACs: the kept MLP widths, and the MACs measured
when the plan's blocks are those saving least and those saving most (docs/engineering.md, "Swin planning").

    python tools/bench_swin_plan.py
"""

import torch

import dcvit
from dcvit.macs import macs_profile


def main() -> None:
    torch.set_num_threads(1)
    model = dcvit.create_model("swin_tiny_patch4_window7_224")
    profile = macs_profile(model)
    for target in (0.75, 0.5):
        plan = dcvit.plan(model, target)
        saving = sorted(plan.candidate_blocks, key=lambda b: profile.attn[b] + profile.mlp[b])
        for label, blocks in (("saving least", saving[: plan.n_blocks]), ("saving most", saving[-plan.n_blocks :])):
            macs = dcvit.count_macs(dcvit.apply_plan(model, plan, blocks))
            print(
                f"{target}: {plan.n_blocks} blocks, 3072 -> {plan.hidden_for(3072)}, 384 -> {plan.hidden_for(384)}; "
                f"{label}: {macs / 1e6:.2f}M, {100 * macs / profile.total:.2f}%"
            )


if __name__ == "__main__":
    main()
