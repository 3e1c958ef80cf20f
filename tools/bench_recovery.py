#!/usr/bin/env python
"""Deep budgets: the few-shot recovery levers of docs/method.md §6 on the shipped teacher (BENCHMARKS.md,
"Deep budgets: recovery levers"). fmnist_vit12, auto, the benchmark settings of tools/bench_compression.py.

  screen  per seed: the default family at the budgets (one compress_family: the trials are shared), its members
          saved; then each lever as a final recovery of those same members (CompressConfig.final_epochs, the
          lever's setting added): the structure is the default's, only the recovery differs, as in the refinement
          that showed recovery to be the limit. Cheap: one family per seed, then one fine-tune per lever and budget.
  full    per seed: the default family and each given combination end to end (every fine-tune with the levers),
          in the same invocation, so the compress wall times compare as a ratio under the same load.
  report  markdown tables from OUT/results.jsonl

"default" in the cell names and tables is the benchmark settings without a final recovery (final_epochs=0): the
default until the final recovery (final_epochs=5, the "final" row) became it, on this benchmark's evidence.

Every finished cell is appended to OUT/results.jsonl and skipped on a rerun (the default members are saved under
OUT/members), so an interrupted run resumes.

Example:  python tools/bench_recovery.py screen --seeds 2021 && python tools/bench_recovery.py report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import synth
from dcvit.config import CompressConfig
from dcvit.data import CALIBRATION_SIZE, eval_transform, few_shot_subset, load_dataset
from dcvit.driver import CompressionResult, compress_family, final_recovery
from dcvit.engine import Engine, metric_set_inputs
from dcvit.evaluation import eval_batches, evaluate
from dcvit.factory import resolve_model
from dcvit.files import load
from dcvit.macs import count_macs
from dcvit.storage import read_json

sys.path.insert(0, str(Path(__file__).parent))  # the benchmark settings: one definition
from bench_compression import config_for, read_rows  # noqa: E402

TEACHER = "fmnist_vit12"  # the shipped teacher the goals are about; --teacher for another
# screening: the plain final recovery ("final"), final-recovery epochs per tenth of the MACs removed (30 at 40%, 35 at
# 30%, 100 shots); config_for keeps it plain (the run's views and batch size) whatever CompressConfig's defaults
FINAL = 5
# Each lever alone, as config changes on top of the plain final recovery ("final"); "default": no final recovery.
LEVERS: dict[str, dict] = {
    "final": {},
    "final-select": {"final_select": True},
    "crop-mixup": {"mimic_views": "crop-mixup"},
    "logits": {"mimic_logits": 1.0},
    "synthetic": {"mimic_synthetic": True},
    "blocks": {"mimic_blocks": 1.0},
    "mixup": {"mimic_views": "mixup"},
    "crop": {"mimic_views": "crop"},
    "cutmix": {"mimic_views": "cutmix"},
    "average": {"final_average": 0.5},
    # CutMix, batches of 16 and twice the epochs in the final recovery alone
    "cutmix-bs16-long": {"final_views": "cutmix", "final_batch_size": 16, "final_epochs": 10},
}


def parse_combo(text: str) -> tuple[str, dict]:
    """NAME=key:value,key:value (CompressConfig fields; numbers, true/false, or strings) -> (NAME, changes)."""
    name, _, spec = text.partition("=")
    changes = {}
    for item in filter(None, spec.split(",")):
        key, _, raw = item.partition(":")
        value = {"true": True, "false": False}.get(raw.lower(), raw)
        if isinstance(value, str):
            try:
                value = int(raw) if raw.lstrip("-").isdigit() else float(raw)
            except ValueError:
                pass
        changes[key] = value
    CompressConfig(**changes)  # refuse a bad combination before any work
    return name, changes


class Bench:
    def __init__(self, out: Path, shots: int, budgets: list[float], structure: str = "auto", teacher: str = TEACHER):
        self.out, self.shots, self.budgets, self.structure = out, shots, budgets, structure
        # variant@structure in the cell names, variant@structure+teacher for another teacher than the default
        self.tag = "" if structure == "auto" and teacher == TEACHER else f"@{structure}"
        self.tag += "" if teacher == TEACHER else f"+{teacher}"
        self.results = out / "results.jsonl"
        self.teacher, self.teacher_name = resolve_model(teacher, weights="pretrained"), teacher
        test = load_dataset("fashion-mnist", train=False, transform=eval_transform(self.teacher))
        self.test_batches = eval_batches(test)  # decoded once for every cell
        self.macs = count_macs(self.teacher)
        self.done = {r["cell"] for r in read_rows(self.results)} if self.results.is_file() else set()

    def top1(self, model) -> float:
        return evaluate(model, self.test_batches, progress=False)["top1"]

    def write(self, row: dict) -> None:
        row["structure_name"] = self.structure
        with self.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.done.add(row["cell"])
        print(f"{row['cell']}: top-1 {100 * row['top1']:.2f}% ({row['seconds']:.0f} s)", flush=True)

    def metric_set(self, seed: int, config: CompressConfig) -> synth.SyntheticSet:
        """The seed's synthetic metric set, made once (as the engine makes it) and given to every run of the seed:
        compress seconds below exclude it (a cost every variant shares)."""
        path = self.out / (
            f"metric_set_{seed}" if self.teacher_name == TEACHER else f"metric_set_{self.teacher_name}_{seed}"
        )
        if not (path / "meta.json").is_file():
            made = synth.synthesize(self.teacher, config.synth_images, iterations=config.synth_iterations,
                                    jitter=config.synth_jitter, seed=config.seed, progress=False,
                                    **metric_set_inputs(self.teacher))  # fmt: skip
            made.save(path)
        return synth.load(path)

    def family(self, name: str, seed: int, config: CompressConfig, save: bool = False) -> None:
        """One compress_family over the budgets; a row per member, each with the family's compress seconds."""
        cells = [f"{name}/f{b}/s{self.shots}/seed{seed}" for b in self.budgets]
        if all(c in self.done for c in cells):
            return
        data = few_shot_subset("fashion-mnist", self.shots, seed, calibration_size=CALIBRATION_SIZE)
        start = time.perf_counter()
        metric_set = self.metric_set(seed, config)
        results = compress_family(self.teacher, self.budgets, data, config, metric_set=metric_set)
        seconds = time.perf_counter() - start
        for cell, budget, result in zip(cells, self.budgets, results):
            if save:
                result.save(self.out / "members" / cell)
            self.write({"cell": cell, "seed": seed, "shots": self.shots, "budget": budget, "top1": self.top1(result.model),
                        "macs_fraction": result.macs / self.macs, "seconds": seconds, "config": config.as_dict(),
                        "structure": [s["edit"] for s in result.structure]})  # fmt: skip

    def screen(self, seed: int, levers: list[str]) -> None:
        base = config_for(self.shots, seed).for_structure(self.structure)
        self.family(f"screen/default{self.tag}", seed, base, save=True)
        data = few_shot_subset("fashion-mnist", self.shots, seed, calibration_size=CALIBRATION_SIZE)
        for lever in levers:
            config = base.replace(**{"final_epochs": FINAL, **LEVERS[lever]})  # a lever may set its own length
            cell = f"screen/{lever}{self.tag}/f{{}}/s{self.shots}/seed{seed}"
            todo = [b for b in self.budgets if cell.format(b) not in self.done]
            if not todo:
                continue
            engine = Engine(self.teacher, data, config, metric_set=self.metric_set(seed, base))
            try:
                for budget in todo:
                    self.recover(engine, lever, seed, budget)
            finally:
                engine.workspace.cleanup()

    def recover(self, engine: Engine, lever: str, seed: int, budget: float) -> None:
        """The lever as the final recovery of the default member at `budget`."""
        folder = self.out / "members" / f"screen/default{self.tag}/f{budget}/s{self.shots}/seed{seed}"
        member, summary = saved_member(folder)
        start = time.perf_counter()
        done = final_recovery(engine, member)
        seconds = time.perf_counter() - start
        meta = done.history[-1]
        self.write({"cell": f"screen/{lever}{self.tag}/f{budget}/s{self.shots}/seed{seed}", "seed": seed, "shots": self.shots,
                    "budget": budget, "top1": self.top1(done.model), "macs_fraction": summary["macs_fraction"],
                    "seconds": seconds, "epochs": meta["epochs"], "selected_epoch": meta["selected_epoch"],
                    "kl": meta["kl"], "config": engine.config.as_dict()})  # fmt: skip


def saved_member(folder: Path) -> tuple[CompressionResult, dict]:
    """A member saved by `family` as what final_recovery takes, and its result.json. The plan is a stand-in: the
    final recovery reads its MACs and structure kind, and names its checkpoint by a checksum of as_dict() (here
    the member's folder, one per member)."""
    summary = read_json(folder / "result.json")
    plan = SimpleNamespace(macs_original=summary["macs_original"], macs_target=summary["macs"],
                           structure=summary["structure_kind"], as_dict=lambda: {"member": str(folder)})  # fmt: skip
    member = CompressionResult(model=load(folder / "model"), plan=plan, blocks=(), scores={}, trials={}, history=(),
                               macs=summary["macs"], structure=tuple(summary["structure"]))  # fmt: skip
    return member, summary


def report(out: Path) -> None:
    """One table per mode, shot count and structure (cells named variant@structure; auto without a suffix)."""
    every = read_rows(out / "results.jsonl")
    for r in every:
        variant = r["cell"].split("/")[1]
        r["structure_name"] = variant.partition("@")[2] or "auto"
        r["cell"] = r["cell"].replace(variant, variant.partition("@")[0], 1)
    keys = {(r["cell"].split("/")[0], r["shots"], r["structure_name"]) for r in every}
    for mode, shots, structure in sorted(keys, key=lambda k: (k[0] != "screen", k[2] != "auto", k[2], -k[1])):
        rows = [r for r in every if r["shots"] == shots and r["structure_name"] == structure]
        mine = [r for r in rows if r["cell"].startswith(mode + "/")]
        budgets = sorted({r["budget"] for r in mine}, reverse=True)
        names = list(dict.fromkeys(r["cell"].split("/")[1] for r in mine))
        names = [n for n in names if not n.startswith("default")]
        default = {(r["budget"], r["seed"]): r for r in mine if r["cell"].split("/")[1] == "default"}
        label, own = "default (no final recovery)", True
        if mode == "full" and not default:
            label, own = (
                "default (the screen's members)",
                False,
            )  # --skip-default: the screen's default members (no time ratio)
            default = {
                (r["budget"], r["seed"]): {**r, "seconds": None}
                for r in rows
                if r["cell"].startswith("screen/default/")
            }
        print(f"\n{mode}, {structure}, {shots} shots: top-1 % (mean over seeds; paired difference to the default"
              + (" / to the plain final recovery, where the variant adds a lever to it" if mode == "screen" else "")
              + ") and compress wall time")  # fmt: skip
        head = " | ".join(f"{100 * b:g}% MACs" for b in budgets)
        print(f"| variant | seeds | {head} | time vs default |\n|---|---|" + "---|" * len(budgets) + "---|")
        cells = " | ".join(_cell([r for (b, _), r in default.items() if b == bb], {}) for bb in budgets)
        print(f"| {label} | {len({s for _, s in default})} | {cells} | {'1.00' if own else '—'} |")
        final = {(r["budget"], r["seed"]): r for r in mine if r["cell"].split("/")[1] == "final"}
        for name in names:
            got = [r for r in mine if r["cell"].split("/")[1] == name]
            ratio = _time_ratio(mode, got, default)
            lever = name != "final" and mode == "screen"
            cells = [_cell(g, default, final if lever else None)
                     for g in ([r for r in got if r["budget"] == b] for b in budgets)]  # fmt: skip
            print(f"| {name} | {len({r['seed'] for r in got})} | " + " | ".join(cells) + f" | {ratio} |")


def _cell(rows: list[dict], default: dict, final: dict | None = None) -> str:
    """Mean top-1 and, in parentheses, the paired difference to the default (and to the plain final recovery)."""
    if not rows:
        return "—"
    diffs = " / ".join(d for d in (_diff(rows, default), _diff(rows, final or {})) if d)
    return f"{statistics.mean(100 * r['top1'] for r in rows):.2f}" + (f" ({diffs})" if diffs else "")


def _diff(rows: list[dict], base: dict) -> str:
    """The mean paired difference to `base` ((budget, seed) -> row) in points, '' when none pairs."""
    diffs = [
        100 * (r["top1"] - base[(r["budget"], r["seed"])]["top1"]) for r in rows if (r["budget"], r["seed"]) in base
    ]
    return f"{statistics.mean(diffs):+.2f}" if diffs else ""


def _time_ratio(mode: str, rows: list[dict], default: dict) -> str:
    """Per default family (a seed's run over a set of budgets; its rows share its seconds), averaged over families:
    full: the variant's family seconds over the default's; screen: (the default family + the lever's final
    recoveries at that family's budgets) over the default family."""
    families: dict[tuple, list[dict]] = {}
    for r in rows:
        base = default.get((r["budget"], r["seed"]), {}).get("seconds")
        if base:
            families.setdefault((r["seed"], base), []).append(r)
    ratios = [
        (mine[0]["seconds"] if mode == "full" else base + sum(r["seconds"] for r in mine)) / base
        for (_, base), mine in families.items()
    ]
    return f"{statistics.mean(ratios):.2f}" if ratios else "—"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["screen", "full", "report"])
    p.add_argument("--out", default="runs/recovery", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[2021])
    p.add_argument("--shots", type=int, default=100)
    p.add_argument("--structure", default="auto", help="screen, full: the structure (its config_changes apply)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.3], help="fractions of the teacher's MACs")
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS), help="screen: which levers")
    p.add_argument("--combo", nargs="+", default=[], help="full: NAME=field:value,... (CompressConfig changes); "
                   "screen: more levers (on top of the plain final recovery)")  # fmt: skip
    p.add_argument("--skip-default", action="store_true", help="full: leave the default family out (the report "
                   "then pairs with the screen's default members, and gives no time ratio: not the same run)")  # fmt: skip
    p.add_argument("--teacher", default=TEACHER, help=f"screen, full: a shipped teacher (default {TEACHER})")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "report":
        return report(args.out)
    torch.set_num_threads(args.threads)
    combos = [parse_combo(c) for c in args.combo]
    LEVERS.update(combos)
    args.levers += [name for name, _ in combos if args.mode == "screen"]
    bench = Bench(args.out, args.shots, args.budgets, args.structure, args.teacher)
    for seed in args.seeds:
        if args.mode == "screen":
            bench.screen(seed, args.levers)
        else:
            if not args.skip_default:
                bench.family(
                    f"full/default{bench.tag}", seed, config_for(args.shots, seed).for_structure(args.structure)
                )
            for name, changes in combos:
                config = config_for(args.shots, seed).for_structure(args.structure).replace(**changes)
                bench.family(f"full/{name}{bench.tag}", seed, config)


if __name__ == "__main__":
    main()
