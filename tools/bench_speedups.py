#!/usr/bin/env python
"""Before/after ratios of the speed changes of issue 26, each in one process, the two sides alternated
(BENCHMARKS.md, "Cost at scale"), on the demo's teacher and settings (fmnist_vit12, 100 shots, 50 synthetic
images of 200 iterations, the auto plan at 75.1% of the MACs):

- metric set: Engine set-up synthesizing (and storing) the set against taking it from the cache;
- reload: a step's checkpoint read back (dcvit.load) against going on with the model in memory (0 s);
- scoring: zero-shot scores of every edit of step 0, one forward pass per edit against a block's edits stacked
  (the scores must be identical); with --at-224 the same on a random-init deit_tiny_patch16_224;
- evaluation: five models (the teacher and four copies) over the 10,000 test images, the split decoded for each
  model (a DataLoader per model) against decoded once (dcvit.evaluation.eval_batches); top-1 must be identical;
- family scoring (--family, minutes): the auto family at the demo's five targets (final recovery off), every
  target scoring its first step (the teacher's edits) against the family scoring it once; members must be equal;
- fine-tune: 20 mimicking epochs of the teacher with every second MLP unit of block 5 kept, torch's per-tensor AdamW (the CPU
  default) against foreach AdamW; the weights must be identical.

    python tools/bench_speedups.py [--repeats 3] [--threads 2] [--at-224] [--family]
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


def _scoring(search, model, name: str, repeats: int) -> tuple[str, list[float], list[float]]:
    """Zero-shot scores of every edit of the search's first step: one pass per edit, then stacked."""
    import dcvit.search
    from dcvit.macs import macs_profile

    profile, importance = macs_profile(model), search.importance(model)
    times: dict[str, list[float]] = {"single": [], "stacked": []}
    scores = {}
    for _ in range(repeats):
        for kind, elements in (("single", 1), ("stacked", dcvit.search.STACKED_ELEMENTS)):
            previous, dcvit.search.STACKED_ELEMENTS = dcvit.search.STACKED_ELEMENTS, elements
            seconds, edits = _timed(lambda: search.zero_shot(model, profile, importance))
            dcvit.search.STACKED_ELEMENTS = previous
            times[kind].append(seconds)
            scores[kind] = [e.score for e in edits]
    assert scores["single"] == scores["stacked"], "stacked scores differ from one pass per edit"
    return f"{name} ({len(scores['single'])} edits, stacked against one pass each)", times["single"], times["stacked"]


def _scoring_224(repeats: int) -> tuple[str, list[float], list[float]]:
    """_scoring on a random-init deit_tiny at 224 px (16 shots, a metric set of 16 images x 5 iterations)."""
    import dcvit
    from dcvit import CompressConfig, plan_for
    from dcvit.data import few_shot_subset
    from dcvit.engine import Engine
    from dcvit.search import Search

    torch.manual_seed(0)
    teacher = dcvit.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    config = CompressConfig(structure="auto", progress=False, synth_iterations=5, synth_images=16, lr=1e-5)
    engine = Engine(teacher, few_shot_subset("fashion-mnist", 16, 0, 0), config, metric_cache=False)
    try:
        search = Search(engine, plan_for(teacher, 0.75, config))
        return _scoring(search, engine.teacher, "zero-shot scoring at 224 px, deit_tiny", repeats)
    finally:
        engine.workspace.cleanup()


def _evaluation(teacher, repeats: int) -> tuple[str, list[float], list[float]]:
    import copy

    from dcvit.data import eval_transform, load_dataset
    from dcvit.evaluation import eval_batches, evaluate, loader_for

    test = load_dataset("fashion-mnist", train=False, transform=eval_transform(teacher))
    models = [teacher] + [copy.deepcopy(teacher) for _ in range(4)]
    times: dict[str, list[float]] = {"per model": [], "once": []}
    for _ in range(repeats):
        before, top1 = _timed(lambda: [evaluate(m, loader_for(test), progress=False)["top1"] for m in models])
        after, again = _timed(lambda: _top1s(models, eval_batches(test)))
        assert top1 == again, "evaluating on the kept batches changed a top-1"
        times["per model"].append(before)
        times["once"].append(after)
    return "evaluation of 5 models on 10,000 test images", times["per model"], times["once"]


def _top1s(models, batches) -> list[float]:
    from dcvit.evaluation import evaluate

    return [evaluate(m, batches, progress=False)["top1"] for m in models]


def _fine_tune(teacher, shots, config, repeats: int) -> tuple[str, list[float], list[float]]:
    from contextlib import nullcontext
    from unittest import mock

    from dcvit.engine import Engine
    from dcvit.surgery import compress_blocks

    engine = Engine(teacher, shots, config.replace(synth_images=4, synth_iterations=2), metric_cache=False)
    real = torch.optim.AdamW  # mimic asks for foreach=True; "loop" overrides it with torch's CPU default
    per_tensor = mock.patch("torch.optim.AdamW", lambda params, **kw: real(params, **{**kw, "foreach": False}))
    times: dict[str, list[float]] = {"loop": [], "foreach": []}
    weights = {}
    try:
        for _ in range(repeats):
            for name, patched in (("loop", per_tensor), ("foreach", nullcontext())):
                student = compress_blocks(engine.teacher, {5: list(range(0, 384, 2))}, False)  # a copy
                with patched:
                    seconds, _ = _timed(lambda s=student: engine.fine_tune(s, [5], 20, "bench-adamw"))
                times[name].append(seconds)
                weights[name] = [p.detach().clone() for p in student.parameters()]
            assert all(torch.equal(a, b) for a, b in zip(weights["loop"], weights["foreach"])), "AdamW foreach differs"
    finally:
        engine.workspace.cleanup()
    return "fine-tune, 20 epochs on 100 shots (AdamW)", times["loop"], times["foreach"]


class _Forgetful(dict):
    """An engine memo that keeps nothing: every target of a family computes its own."""

    def __setitem__(self, key, value) -> None:
        pass


def _family_scoring(teacher, shots, config, metric_set) -> tuple[str, list[float], list[float]]:
    from unittest import mock

    from dcvit import compress_family
    from dcvit.engine import Engine
    from dcvit.macs import count_macs
    from dcvit.planning import block_drop_macs

    macs = count_macs(teacher)
    targets = [block_drop_macs(teacher, k) for k in (1, 3, 5)] + [int(f * macs) for f in (0.4, 0.3)]
    config = config.replace(final_epochs=0)
    real_init = Engine.__init__

    def forgetful_init(self, *a, **k) -> None:
        real_init(self, *a, **k)
        self.memo = _Forgetful()

    # once each (minutes), the shared run first: any warm-up favours the run without the memo
    after, shared = _timed(lambda: compress_family(teacher, targets, shots, config, metric_set=metric_set))
    with mock.patch.object(Engine, "__init__", forgetful_init):
        before, alone = _timed(lambda: compress_family(teacher, targets, shots, config, metric_set=metric_set))
    for a, b in zip(alone, shared):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[n], sb[n]) for n in sa), "a member differs"
    return "auto family, 5 targets (first-step scores per target against once)", [before], [after]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--at-224", action="store_true", help="also time the scoring on deit_tiny at 224 px (minutes)")
    p.add_argument("--family", action="store_true", help="also time an auto family of 5 targets twice (minutes)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import dcvit.search
    from dcvit import CompressConfig, plan_for
    from dcvit.data import few_shot_subset
    from dcvit.engine import Engine
    from dcvit.factory import resolve_model
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

        rows.append(_scoring(search, model, "zero-shot scoring, step 0", args.repeats))
        engine.workspace.cleanup()
        metric_set = engine.metric_set
    if args.at_224:
        rows.append(_scoring_224(args.repeats))

    rows.append(_evaluation(teacher, args.repeats))
    rows.append(_fine_tune(teacher, shots, config, args.repeats))
    if args.family:
        rows.append(_family_scoring(teacher, shots, config, metric_set))
    print(f"threads {args.threads}, torch {torch.__version__}")
    print("| change | before s (median) | after s (median) | after / before | runs |")
    print("|---|---|---|---|---|")
    for name, before, after in rows:
        b, a = statistics.median(before), statistics.median(after)
        print(f"| {name} | {b:.2f} | {a:.2f} | {a / b:.3f} | {len(before)} |")


if __name__ == "__main__":
    main()
