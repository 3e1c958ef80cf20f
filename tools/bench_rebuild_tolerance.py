#!/usr/bin/env python
"""How far other networks and other kernels land from a random-init vit_tiny_patch16_224 with the same
weights, in the rebuild check's measure (largest output difference over the output's largest magnitude;
dcvit/rebuild.py TOLERANCE = 1e-5). docs/engineering.md, "Save check cost".

    python tools/bench_rebuild_tolerance.py
"""

import timm
import torch

from dcvit.rebuild import _difference


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = timm.create_model("vit_tiny_patch16_224").eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    variants = [
        ("act_layer relu", {"act_layer": "relu"}),
        ("tanh GELU", {"act_layer": "gelu_tanh"}),
        ("LayerNorm eps 1e-5 for 1e-6", {"norm_layer": torch.nn.LayerNorm}),
    ]
    with torch.no_grad():
        want = [base(x)]
        for label, kwargs in variants:
            other = timm.create_model("vit_tiny_patch16_224", **kwargs).eval()
            other.load_state_dict(base.state_dict())
            print(f"{label}: {_difference(want, [other(x)]):.2g}")
        for blk in base.blocks:
            blk.attn.fused_attn = not blk.attn.fused_attn
        print(f"fused vs unfused attention: {_difference(want, [base(x)]):.2g}")


if __name__ == "__main__":
    main()
