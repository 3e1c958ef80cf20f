#!/usr/bin/env python
"""How far can recovery take the deep auto members when data is no limit? (BENCHMARKS.md, "Deep budgets")

The demo's auto members at 40% and 30% of fmnist_vit12's MACs (100 shots, seed 0, the demo's settings with its
final recovery) are refined (`dcvit.mimic.refine`: Eq. 3, every block but the tail learns) on N more unlabeled
training images, disjoint from the shots and the calibration split, for E epochs; then test top-1 on the
10,000 test images. Compression never sees these images: the figures bound what recovering these structures
can reach, not what 100 shots give. If even the whole training set leaves a member below a goal, no few-shot
recovery lever reaches that goal for this structure.

Members are compressed once and kept in OUT/members; each finished cell is a line of OUT/results.jsonl and is
skipped on a rerun.

    python tools/bench_recovery_ceiling.py --out runs/ceiling --images 2000 10000 54900 --epochs 5
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from dcvit import compress_family, load
from dcvit.data import eval_transform, few_shot_subset, load_dataset, unlabeled_subset
from dcvit.evaluation import eval_batches, evaluate
from dcvit.factory import resolve_model
from dcvit.mimic import refine
from dcvit.studies.demo import TEACHER, DemoSettings

BUDGETS = (0.4, 0.3)


def members(out: Path, teacher, settings: DemoSettings) -> dict[float, torch.nn.Module]:
    """{budget: the demo's auto member}, compressed once (one family) and kept under OUT/members."""
    folders = {b: out / "members" / f"f{b}" for b in BUDGETS}
    if not all((f / "result.json").is_file() for f in folders.values()):
        shots = few_shot_subset("fashion-mnist", settings.shots, settings.seed, settings.calibration_size)
        config = settings.config.replace(seed=settings.seed, progress=False)
        for budget, result in zip(BUDGETS, compress_family(teacher, list(BUDGETS), shots, config)):
            result.save(folders[budget])
    return {b: load(f / "model") for b, f in folders.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/ceiling"))
    p.add_argument("--images", type=int, nargs="+", default=[2000, 10000, 54900], help="refinement set sizes")
    p.add_argument("--epochs", type=int, default=5, help="refinement epochs (default 5, as the demo's savers)")
    args = p.parse_args()
    settings = DemoSettings()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {json.loads(line)["cell"] for line in results.read_text().splitlines()} if results.is_file() else set()
    teacher = resolve_model(TEACHER, weights="pretrained")
    test = eval_batches(load_dataset("fashion-mnist", train=False, transform=eval_transform(teacher)))
    deep = members(args.out, teacher, settings)
    config = settings.config.replace(seed=settings.seed, progress=False)  # as the demo refines its savers
    for budget, member in deep.items():
        cells = [(f"f{budget}/n0", None)] + [(f"f{budget}/n{n}/e{args.epochs}", n) for n in args.images]
        for cell, n in cells:
            if cell in done:
                continue
            model, start = copy.deepcopy(member), time.perf_counter()
            if n:
                extra = unlabeled_subset("fashion-mnist", n, settings.seed, settings.calibration_size, settings.shots)
                refine(model, teacher, extra, config, epochs=args.epochs)
            row = {"cell": cell, "budget": budget, "images": n or 0, "epochs": args.epochs if n else 0,
                   "top1": evaluate(model, test, progress=False)["top1"], "seconds": time.perf_counter() - start}  # fmt: skip
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{cell}: top-1 {100 * row['top1']:.2f}% ({row['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
