#!/usr/bin/env python
"""Per-image cost of the shipped teacher on a small leftover batch (8 images) vs a full one (256): the
routing gap of a per-batch cascade (BENCHMARKS.md, "Cascade throughput"). Medians of 7 rounds, torch's threads.

    python tools/bench_batch_cost.py
"""

import statistics
import time

import timm
import torch

import dcvit  # noqa: F401  (registers the shipped models with timm)


def main() -> None:
    m = timm.create_model("fmnist_vit12", pretrained=True).eval()
    x = torch.randn(256, 1, 28, 28)
    t = {8: [], 256: []}
    with torch.inference_mode():
        for _ in range(7):
            for bs in (8, 256):
                start = time.perf_counter()
                for _ in range(256 // bs if bs == 256 else 32):
                    m(x[:bs])
                t[bs].append((time.perf_counter() - start) / (256 if bs == 256 else 32 * bs))
    per = {bs: statistics.median(v) for bs, v in t.items()}
    print({bs: f"{1e6 * s:.1f} us/image" for bs, s in per.items()}, f"batch 8 costs {per[8] / per[256]:.1f}x per image")


if __name__ == "__main__":
    main()
