#!/usr/bin/env python
"""Time of cascade.calibrate's exact three-stage threshold search on random confidences (about 5,000
distinct values per stage), 1 thread (docs/engineering.md, "Threshold search time"). Prints the table's rows.

    python tools/bench_threshold_search.py
"""

import time

import torch

import cascade


def three_stages(n: int, seed: int, k: int = 10):
    """Probabilities of 3 models, later ones more accurate (as tests/test_cascade_search.py draws them)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(k, (n,), generator=g)
    probs = []
    for s in range(3):
        logits = torch.randn(n, k, generator=g)
        logits[torch.arange(n), y] += (0.8 + 0.9 * s) * 2 * torch.rand(n, generator=g)
        probs.append(torch.softmax(logits * (1 + s), 1))
    return probs, y


def main() -> None:
    torch.set_num_threads(1)
    c = [1e6, 5e6, 3e7]
    runs = [
        (5000, "measured accuracy", lambda p, y: cascade.calibrate(p, y, c, max_acc_drop=0.01)),
        (5000, "95% one-sided confidence", lambda p, y: cascade.calibrate(p, y, c, max_acc_drop=0.01, confidence=0.95)),
        (5000, "report_table, 5 questions", lambda p, y: cascade.report_table(p, y, c)),
        (10000, "measured accuracy", lambda p, y: cascade.calibrate(p, y, c, max_acc_drop=0.01)),
    ]
    for n, rule, f in runs:
        p, y = three_stages(n, 0)
        t = time.perf_counter()
        f(p, y)
        print(f"| {n:,} | {rule} | {time.perf_counter() - t:.1f} |")


if __name__ == "__main__":
    main()
