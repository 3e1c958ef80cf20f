#!/usr/bin/env python
"""Seconds per training step of fmnist_vit12 (256 images, AdamW), float32 vs bfloat16 autocast on CPU,
1 thread, mean of 3 steps (docs/engineering.md, "bfloat16 training on CPU"; why train_teacher.py's --bf16 is off
on CPUs without AVX512-BF16).

    python tools/bench_bf16.py
"""

import time

import timm
import torch

import dcvit  # noqa: F401  (registers the shipped models with timm)


def main() -> None:
    torch.set_num_threads(1)
    m = timm.create_model("fmnist_vit12")
    x = torch.randn(256, 1, 28, 28)
    y = torch.randint(0, 10, (256,))
    opt = torch.optim.AdamW(m.parameters())
    for bf16 in (False, True):
        t = time.time()
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(m(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print("bf16" if bf16 else "fp32", (time.time() - t) / 3)


if __name__ == "__main__":
    main()
