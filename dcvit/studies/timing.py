"""Wall-clock timing on a noisy machine: every contender once per round, rounds interleaved, medians.

Interleaving puts the contenders under the same drift (another job, frequency changes), so their ratio is
meaningful even when the absolute times are not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def interleaved_medians(
    runs: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 0, device: Any = "cpu"
) -> dict[str, float]:
    """Median seconds of each zero-argument callable over `repeats` interleaved rounds (after `warmup` rounds);
    each run ends when `device` (where the runs compute: a GPU runs asynchronously) has finished its work."""
    from ..accel import synchronize

    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
