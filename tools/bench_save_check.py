#!/usr/bin/env python
"""Seconds per dcvit.save, median of 3, without and with the rebuild check (dcvit/rebuild.py), 1 thread
(docs/engineering.md, "Save check cost"). Prints the table's rows.

    python tools/bench_save_check.py [MODEL ...]
"""

import contextlib
import statistics
import sys
import tempfile
import time
from unittest import mock

import torch

import dcvit

MODELS = ("fmnist_vit12", "vit_tiny_patch16_224", "vit_base_patch16_224")


def main(names) -> None:
    torch.set_num_threads(1)
    for name in names:
        model, row = dcvit.create_model(name), []
        for skip_check in (True, False):
            times = []
            for _ in range(3):
                off = (
                    mock.patch("dcvit.files.check_rebuilds", lambda *a, **k: None)
                    if skip_check
                    else contextlib.nullcontext()
                )
                with tempfile.TemporaryDirectory() as d, off:
                    t = time.perf_counter()
                    dcvit.save(model, f"{d}/m")
                    times.append(time.perf_counter() - t)
            row.append(statistics.median(times))
        print(f"| {name} | {row[0]:.2f} | {row[1]:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or MODELS)
