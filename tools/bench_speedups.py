#!/usr/bin/env python
"""Before/after ratios of the speed changes of issue 26, each in one process, the two sides alternated
(BENCHMARKS.md, "Cost at scale"), on the demo's teacher and settings (fmnist_vit12, 100 shots, 50 synthetic
images of 200 iterations, the auto plan at 75.1% of the MACs):

- metric set: Engine set-up synthesizing (and storing) the set against taking it from the cache;
- reload: a step's checkpoint read back (dcvit.load) against going on with the model in memory (0 s);
- scoring: zero-shot scores of every edit of step 0, one forward pass per edit against a block's edits stacked
  (the scores must be identical).

    python tools/bench_speedups.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import dcvit.search
    from dcvit import CompressConfig, plan_for
    from dcvit.data import few_shot_subset
    from dcvit.engine import Engine
    from dcvit.factory import resolve_model
    from dcvit.macs import macs_profile
    from dcvit.search import Search

    config = CompressConfig(structure="auto", progress=False)
    teacher = resolve_model("fmnist_vit12", weights="pretrained")
    shots = few_shot_subset("fashion-mnist", 100, 0, 5000)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        # once each (a synthesis is minutes): the first finds the cache empty, synthesizes and stores the set
        # (a few ms more than synthesizing alone), the second takes it from there
        times = {}
        for name in ("synthesized", "cached"):
            seconds, made = _timed(lambda: Engine(teacher, shots, config, metric_cache=cache))
            made.workspace.cleanup()  # its temporary run folder
            times[name] = [seconds]
        rows.append(("metric set (Engine set-up)", times["synthesized"], times["cached"]))

        engine = Engine(teacher, shots, config, metric_cache=cache)
        search = Search(engine, plan_for(teacher, 0.751, config))
        model = engine.teacher
        with tempfile.TemporaryDirectory() as work:
            dcvit.save(model, Path(work) / "m")
            loads = [_timed(lambda: dcvit.load(Path(work) / "m"))[0] for _ in range(args.repeats)]
        rows.append(("reload of a step's checkpoint", loads, [0.0] * len(loads)))

        profile, importance = macs_profile(model, (1, 28, 28)), search.importance(model)
        times = {"single": [], "stacked": []}
        scores = {}
        for _ in range(args.repeats):
            for name, stack in (("single", False), ("stacked", True)):  # stacking: off on a CPU by default
                previous, dcvit.search.STACK_ON_CPU = dcvit.search.STACK_ON_CPU, stack
                seconds, edits = _timed(lambda: search.zero_shot(model, profile, importance))
                dcvit.search.STACK_ON_CPU = previous
                times[name].append(seconds)
                scores[name] = [e.score for e in edits]
        engine.workspace.cleanup()
        assert scores["single"] == scores["stacked"], "stacked scores differ from one pass per edit"
        rows.append((f"zero-shot scoring, step 0 ({len(scores['single'])} edits)", times["single"], times["stacked"]))

    print(f"threads {args.threads}, torch {torch.__version__}")
    print("| change | before s (median) | after s (median) | after / before | runs |")
    print("|---|---|---|---|---|")
    for name, before, after in rows:
        b, a = statistics.median(before), statistics.median(after)
        print(f"| {name} | {b:.2f} | {a:.2f} | {a / b:.3f} | {len(before)} |")


if __name__ == "__main__":
    main()
