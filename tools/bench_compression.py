#!/usr/bin/env python
"""Three structures on the shipped teacher and the real Fashion-MNIST test set (BENCHMARKS.md).

  grid         auto (the structure search) vs DC-ViT (k+1 blocks) vs block dropping (k blocks) at the MACs of
               dropping k = 1, 2, 3, 5 blocks, 100 / 50 / 500 unlabeled shots, 3 seeds
  frontier     the same three structures at 50 / 40 / 30% of the teacher's MACs, 100 shots, 3 seeds
  search-space auto with whole-head pruning offered, and auto with random (not importance) unit choice, at 75%,
               59%, 40% and 30% of the teacher's MACs, 100 shots, 3 seeds (compare with the auto cells)
  ablations    each docs/method.md §8 switch against the default, at the MACs of dropping 1 and 3 blocks
  correlation  Spearman of the synthetic-set score and of the few-shot loss with candidate test error
  anatomy      per block, test top-1 without its attention / without its MLP / dropped (no fine-tuning)
  report       markdown tables from the results file
  plot         OUT/frontier.png: accuracy vs MACs of the three structures and the Torch-Pruning peer

Every finished cell is appended to OUT/results.jsonl and skipped on a rerun, so the grid resumes;
`--part I/N` runs every N-th cell, for parallel processes.

Example:  python tools/bench_compression.py grid --part 0/2 & python tools/bench_compression.py grid --part 1/2
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

import synth
from dcvit.config import ABLATIONS, CompressConfig
from dcvit.data import CALIBRATION_SIZE, eval_transform, few_shot_subset, load_dataset
from dcvit.driver import compress
from dcvit.evaluation import evaluate, loader_for
from dcvit.factory import resolve_model
from dcvit.macs import count_macs
from dcvit.planning import block_drop_macs, default_candidates
from dcvit.scripts import script_parser
from dcvit.structures import BASELINE_STRUCTURE, DEFAULT_STRUCTURE, PAPER_STRUCTURE
from dcvit.surgery import drop_blocks

# The three structures compared (their registry names; results are filed under them).
AUTO, DCVIT, DROP = DEFAULT_STRUCTURE, PAPER_STRUCTURE, BASELINE_STRUCTURE
METHODS = (AUTO, DCVIT, DROP)

SEEDS = (2021, 2022, 2023)
FRONTIER = (0.5, 0.4, 0.3)  # fractions of the teacher's MACs
IMAGE_PASSES = 2000  # per progressive step, whatever the number of shots: equal compute for every cell


def config_for(shots: int, seed: int, **changes) -> CompressConfig:
    epochs = max(4, round(IMAGE_PASSES / shots))
    # No final recovery unless asked, and a plain one when asked (the run's views and batch size): the tables of
    # BENCHMARKS.md made with these settings predate it as a default (tools/bench_recovery.py measures it against them)
    changes = {"final_epochs": 0, "final_views": None, "final_batch_size": None, **changes}
    return CompressConfig(epochs=epochs, trial_epochs=max(1, epochs // 4), seed=seed, progress=False, **changes)


def read_rows(path: Path) -> list[dict]:
    """The JSON lines of a results file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Bench:
    def __init__(self, out: Path):
        self.out = out
        self.results = out / "results.jsonl"
        self.teacher = resolve_model("fmnist_vit12", weights="pretrained")
        self.test = load_dataset("fashion-mnist", train=False, transform=eval_transform(self.teacher))
        self.macs = count_macs(self.teacher)
        self.drop_macs = {k: block_drop_macs(self.teacher, k) for k in (1, 2, 3, 5)}

    def done(self) -> set[str]:
        if not self.results.is_file():
            return set()
        return {r["cell"] for r in read_rows(self.results)}

    def metric_set(self, seed: int, config: CompressConfig):
        path = self.out / f"metric_set_{seed}"
        if not (path / "meta.json").is_file():
            start = time.perf_counter()
            made = synth.synthesize(
                self.teacher,
                config.synth_images,
                iterations=config.synth_iterations,
                jitter=config.synth_jitter,
                seed=seed,
                progress=False,
            )
            made.save(path)
            (self.out / f"metric_set_{seed}.seconds").write_text(f"{time.perf_counter() - start:.2f}\n")
        return synth.load(path)

    def run(self, cell: str, k: int, shots: int, seed: int, config: CompressConfig, workdir=None) -> dict:
        start = time.perf_counter()
        data = few_shot_subset("fashion-mnist", shots, seed, calibration_size=CALIBRATION_SIZE)
        metric_set = None if config.metric == "train_loss" else self.metric_set(seed, config)
        target = self.drop_macs[k] if isinstance(k, int) else int(k * self.macs)  # k blocks, or a fraction
        result = compress(self.teacher, target, data, config, workdir=workdir, metric_set=metric_set)
        top1 = evaluate(result.model, loader_for(self.test), progress=False)["top1"]
        row = {
            "cell": cell,
            "k": k,
            "shots": shots,
            "seed": seed,
            "top1": top1,
            "macs": result.macs,
            "macs_fraction": result.macs / self.macs,
            "blocks": list(result.blocks),
            "mlp_hidden": result.plan.record().get("mlp_hidden"),  # a search plan records the full width
            "structure": [s["edit"] for s in result.structure],
            "scores": {str(b): s for b, s in result.scores.items()},
            "stage_seconds": result.seconds,
            "chosen": [
                [
                    {k: e.get(k) for k in ("block", "attention", "units", "heads", "saved", "score", "confirmed")}
                    for e in h["chosen"]
                ]
                for h in result.history
                if "chosen" in h
            ],
            "seconds": time.perf_counter() - start,
            "images_per_second": [h.get("images_per_second") for h in result.history],
        }
        with self.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"{cell}: top-1 {100 * top1:.2f}% at {100 * row['macs_fraction']:.1f}% MACs ({row['seconds']:.0f} s)",
            flush=True,
        )
        return row


def cells(mode: str, seeds=SEEDS, shot_counts=(100, 50, 500)):
    if mode == "grid":
        for shots in shot_counts:  # 100 shots first: the headline cells
            for seed in seeds:
                for k in (1, 2, 3, 5):
                    for method in METHODS:
                        yield (
                            f"grid/{method}/k{k}/s{shots}/seed{seed}",
                            k,
                            shots,
                            seed,
                            config_for(shots, seed).for_structure(method),
                        )
    elif (
        mode == "frontier"
    ):  # budgets below the block-drop grid, 100 shots (the Torch-Pruning peer's tool has them too)
        for seed in seeds:
            for fraction in FRONTIER:
                for method in METHODS:
                    yield f"frontier/{method}/f{fraction}/s100/seed{seed}", fraction, 100, seed, \
                        config_for(100, seed).for_structure(method)  # fmt: skip
    elif mode == "search-space":  # two choices of the search against the auto cells of grid and frontier
        variants = {"auto-heads": {"structure": AUTO, "prune_heads": True},
                    "auto-random-units": {"structure": AUTO, "unit_choice": "random"}}  # fmt: skip
        for seed in seeds:
            for budget in (3, 5, 0.4, 0.3):  # k blocks' worth (75%, 59%) or a fraction of the teacher's MACs
                for method, change in variants.items():
                    yield f"search-space/{method}/b{budget}/s100/seed{seed}", budget, 100, seed, \
                        config_for(100, seed, **change)  # fmt: skip
    elif mode == "ablations":
        for k in (1, 3):
            for name, change in [("default", {})] + sorted(ABLATIONS.items()):
                # The paper's ablations are of DC-ViT's structure.
                change = {"structure": DCVIT, **change}
                yield f"ablation/{name}/k{k}", k, 100, SEEDS[0], config_for(100, SEEDS[0], **change)


def correlation(bench: Bench, k: int = 2, shots: int = 100) -> None:
    """Paper Fig. 4: candidates' synthetic-set scores and few-shot losses against their real test error."""
    from scipy.stats import spearmanr

    from dcvit.files import load
    from dcvit.storage import read_json

    seed = SEEDS[0]
    workdir = bench.out / "correlation_run"
    if not (workdir / "done").is_file():
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        bench.run(f"correlation/k{k}", k, shots, seed, config_for(shots, seed, structure=DCVIT), workdir=workdir)
        (workdir / "done").write_text("1")
    rows = []
    for meta_file in sorted(workdir.glob("trial-*/meta.json")):
        meta = read_json(meta_file)
        err = 1 - evaluate(load(meta_file.parent / "model"), loader_for(bench.test), progress=False)["top1"]
        rows.append({"block": meta["block"], "kl": meta["kl"], "train_loss": meta["train_loss"], "test_error": err})
    errors = [r["test_error"] for r in rows]
    summary = {
        "k": k,
        "shots": shots,
        "seed": seed,
        "candidates": rows,
        "spearman_kl": float(spearmanr([r["kl"] for r in rows], errors).statistic),
        "spearman_train_loss": float(spearmanr([r["train_loss"] for r in rows], errors).statistic),
    }
    (bench.out / "correlation.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def anatomy(bench: Bench) -> None:
    """Without fine-tuning: what each block's attention, MLP and whole block are worth (test top-1 when removed).

    DC-ViT's premise is that attention is the cheaper part to lose; this checks it on our teacher.
    """
    import copy

    from dcvit.arch import get_adapter
    from dcvit.surgery import compress_blocks

    adapter = get_adapter(bench.teacher)
    rows = []
    for b in default_candidates(len(bench.teacher.blocks)):
        hidden = adapter.mlp_hidden(adapter.blocks(bench.teacher)[b])
        no_attn = compress_blocks(bench.teacher, {b: range(hidden)}, remove_attention=True)
        no_mlp = copy.deepcopy(bench.teacher)
        fc1, fc2 = adapter.mlp_linears(adapter.blocks(no_mlp)[b])
        with torch.no_grad():  # the MLP branch outputs zero: the block keeps only its attention
            fc2.weight.zero_(), fc2.bias.zero_() if fc2.bias is not None else None
        models = {"no_attention": no_attn, "no_mlp": no_mlp, "dropped": drop_blocks(bench.teacher, [b])}
        row = {
            "block": b,
            **{k: evaluate(m, loader_for(bench.test), progress=False)["top1"] for k, m in models.items()},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    (bench.out / "anatomy.json").write_text(json.dumps(rows, indent=2))


def _timing_report(out: Path, grid: list[dict]) -> None:
    """Wall time per method (seconds, mean over the cells of each k; ranges over k), fine-tune speed, and
    the synthetic sets' seconds. The compression time excludes the test-set evaluation."""
    print("\n| method | compression time per k (s) | whole cell incl. test evaluation (s) | fine-tune images/s |")
    print("|---|---|---|---|")
    for method in METHODS:
        mine = [r for r in grid if r["cell"].startswith(f"grid/{method}/")]
        if not mine:
            continue
        ks = sorted({r["k"] for r in mine})
        work = lambda r: sum(v for key, v in r["stage_seconds"].items() if key != "setup_and_synth")
        compress = [statistics.mean(work(r) for r in mine if r["k"] == k) for k in ks]
        whole = [statistics.mean(r["seconds"] for r in mine if r["k"] == k) for k in ks]
        speed = [v for r in mine for v in r["images_per_second"] if v is not None]
        print(
            f"| {method} | {' / '.join(f'{v:.1f}' for v in compress)} (k = {ks}) | "
            f"{' / '.join(f'{v:.1f}' for v in whole)} | {statistics.mean(speed):.0f} |"
        )
    synth = [float(p.read_text()) for p in sorted(out.glob("metric_set_*.seconds"))]
    if synth:
        print(f"\nsynthetic metric sets: {', '.join(f'{v:.1f}' for v in synth)} s")


def _stat(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) > 1:
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    return f"{values[0]:.2f}" if values else "—"


def _paired(a: list[dict], b: list[dict]) -> list[float]:
    """Per-seed differences a - b over the seeds both have."""
    other = {r["seed"]: r["top1"] for r in b}
    return [r["top1"] - other[r["seed"]] for r in a if r["seed"] in other]


def _grid_report(rows: list[dict]) -> None:
    print(
        "| k (blocks dropped) | shots | MACs % (auto / dcvit / drop) | auto | DC-ViT | block dropping | auto − drop "
        "| auto − max(DC-ViT, drop) | seeds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k in (1, 2, 3, 5):
        for shots in (50, 100, 500):
            get = lambda m, k=k, shots=shots: [r for r in rows if r["cell"].startswith(f"grid/{m}/k{k}/s{shots}/")]
            a, c, d = get(AUTO), get(DCVIT), get(DROP)
            if not (a or c or d):
                continue
            best = {
                r["seed"]: max(x["top1"] for x in c + d if x["seed"] == r["seed"])
                for r in a
                if any(x["seed"] == r["seed"] for x in c + d)
            }
            versus_best = [r["top1"] - best[r["seed"]] for r in a if r["seed"] in best]
            macs = " / ".join(f"{100 * g[0]['macs_fraction']:.1f}" if g else "—" for g in (a, c, d))
            print(
                f"| {k} | {shots} | {macs} | {_stat([r['top1'] for r in a])} | {_stat([r['top1'] for r in c])} "
                f"| {_stat([r['top1'] for r in d])} | {_stat(_paired(a, d))} | {_stat(versus_best)} "
                f"| {len(a)}/{len(c)}/{len(d)} |"
            )


def _choices_report(rows: list[dict]) -> None:
    """What auto chose per block at each budget (100 shots), with the scores behind the choice."""
    print("\n| k | seed | MACs % | auto's blocks 0-11 | step-1 edits (block: edit, KL score, trial-confirmed) |")
    print("|---|---|---|---|---|")
    code = {"kept": ".", "dropped": "D", "MLP removed": "M"}
    for r in sorted(
        (r for r in rows if r["cell"].startswith("grid/auto/") and r["shots"] == 100), key=lambda r: (r["k"], r["seed"])
    ):
        blocks = "".join(code.get(e, "a" if e.startswith("attention") else "m") for e in r["structure"])
        first = (
            ", ".join(
                f"{e['block']}: {'' if e['attention'] else 'no attn, '}{e['units']} units, "
                f"{e['score']:.1e}{'*' if e['confirmed'] else ''}"
                for e in r["chosen"][0]
            )
            if r["chosen"]
            else ""
        )
        print(f"| {r['k']} | {r['seed']} | {100 * r['macs_fraction']:.1f} | `{blocks}` | {first} |")


def _frontier_report(rows: list[dict]) -> None:
    """Deep budgets: each structure's top-1 (mean ± std over seeds) and where its MACs landed."""
    print(
        "\n| target (of teacher MACs) | auto | DC-ViT | block dropping | auto − max(DC-ViT, drop) | auto's blocks (seed 2021) |"
    )
    print("|---|---|---|---|---|---|")
    code = {"kept": ".", "dropped": "D", "MLP removed": "M"}
    for fraction in FRONTIER:
        get = lambda m, f=fraction: [r for r in rows if r["cell"].startswith(f"frontier/{m}/f{f}/")]
        a, c, d = get(AUTO), get(DCVIT), get(DROP)
        if not (a or c or d):
            continue
        best = {r["seed"]: max(x["top1"] for x in c + d if x["seed"] == r["seed"])
                for r in a if any(x["seed"] == r["seed"] for x in c + d)}  # fmt: skip
        cell = lambda g: f"{_stat([r['top1'] for r in g])} ({100 * g[0]['macs_fraction']:.1f}%)" if g else "—"
        blocks = "".join(code.get(e, "a" if e.startswith("attention") else "m") for e in a[0]["structure"]) if a else ""
        versus = _stat([r["top1"] - best[r["seed"]] for r in a if r["seed"] in best])
        print(f"| {fraction} | {cell(a)} | {cell(c)} | {cell(d)} | {versus} | `{blocks}` |")


def _search_space_report(rows: list[dict]) -> None:
    """Each search-space variant against the default auto cell of the same budget and seed (paired)."""
    print("\n| budget | seed | auto (default) | with head pruning | random units | blocks auto-heads pruned heads in |")
    print("|---|---|---|---|---|---|")
    default = {}
    for r in rows:
        _, name, budget = r["cell"].split("/")[:3]
        if name == AUTO and r["shots"] == 100:  # grid/auto/k3/... or frontier/auto/f0.4/...
            default[(budget.lstrip("kf"), r["seed"])] = r
    variants = [r for r in rows if r["cell"].startswith("search-space/")]
    for key in sorted({(r["cell"].split("/")[2][1:], r["seed"]) for r in variants}, key=lambda k: (-float(k[0]), k[1])):
        got = {r["cell"].split("/")[1]: r for r in variants if (r["cell"].split("/")[2][1:], r["seed"]) == key}
        base = default.get(key)
        cell = lambda r: f"{100 * r['top1']:.2f} ({100 * r['macs_fraction']:.1f}%)" if r else "—"
        delta = lambda r, base=base: f" {100 * (r['top1'] - base['top1']):+.2f}" if r and base else ""
        heads = got.get("auto-heads")
        edits = sum("heads" in e for e in heads["structure"]) if heads else 0
        blocks = len(heads["structure"]) if heads else "—"
        budget = f"{key[0]} blocks' worth" if "." not in key[0] else key[0]
        print(f"| {budget} | {key[1]} | {cell(base)} | {cell(heads)}{delta(heads)} | "
              f"{cell(got.get('auto-random-units'))}{delta(got.get('auto-random-units'))} | {edits} of {blocks} |")  # fmt: skip


def plot(out: Path, peer: Path) -> None:
    """One accuracy-vs-MACs PNG (OUT/frontier.png): auto, DC-ViT and block dropping from the grid and the frontier
    (100 shots), and the Torch-Pruning peer from its own results file, each point the mean over seeds."""
    from dcvit.studies.plots import accuracy_vs_macs

    rows = read_rows(out / "results.jsonl")
    rows = [r for r in rows if r["cell"].split("/")[0] in ("grid", "frontier") and r["shots"] == 100]
    peer_rows = read_rows(peer / "results.jsonl") if (peer / "results.jsonl").is_file() else []
    series = {}
    for name, method in (("auto (structure search)", AUTO), ("DC-ViT", DCVIT), ("block dropping", DROP)):
        series[name] = _means([r for r in rows if r["cell"].split("/")[1] == method], lambda r: r["k"])
    series["Torch-Pruning + mimicking (peer)"] = _means([r for r in peer_rows if "top1" in r], lambda r: r["target"])
    teacher = resolve_model("fmnist_vit12", weights="pretrained")
    test = load_dataset("fashion-mnist", train=False, transform=eval_transform(teacher))
    top1 = evaluate(teacher, loader_for(test), progress=False)["top1"]
    path = accuracy_vs_macs(series, (count_macs(teacher), top1), out / "frontier.png",
                            "fmnist_vit12, 100 unlabeled shots, mean of 3 seeds")  # fmt: skip
    print(f"wrote {path}")


def _means(rows: list[dict], budget) -> list[tuple[float, float]]:
    """(mean MACs, mean top-1) per budget."""
    groups = {}
    for r in rows:
        groups.setdefault(budget(r), []).append(r)
    return [(statistics.mean(r["macs"] for r in g), statistics.mean(r["top1"] for r in g)) for g in groups.values()]


def report(out: Path) -> None:
    rows = read_rows(out / "results.jsonl")
    grid = [r for r in rows if r["cell"].startswith("grid/")]
    if grid:
        _grid_report(grid)
        _choices_report(grid)
        _timing_report(out, grid)
    frontier = [r for r in rows if r["cell"].startswith("frontier/")]
    if frontier:
        _frontier_report(frontier)
    if any(r["cell"].startswith("search-space/") for r in rows):
        _search_space_report(rows)
    ablations = [r for r in rows if r["cell"].startswith("ablation/")]
    if ablations:
        print("\n| switch | top-1 at drop-1 MACs | top-1 at drop-3 MACs |\n|---|---|---|")
        names = sorted({r["cell"].split("/")[1] for r in ablations}, key=lambda n: (n != "default", n))
        for name in names:
            cell = {r["k"]: r["top1"] for r in ablations if r["cell"].split("/")[1] == name}
            print(f"| {name} | " + " | ".join(f"{100 * cell[k]:.2f}" if k in cell else "—" for k in (1, 3)) + " |")


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument(
        "mode", choices=["grid", "frontier", "search-space", "ablations", "correlation", "anatomy", "report", "plot"]
    )
    p.add_argument("--peer", default="runs/peer", type=Path, help="plot: the peer's results folder")
    p.add_argument("--out", default="runs/bench", type=Path)
    p.add_argument("--part", default="0/1", help="I/N: run every N-th cell starting at I")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help=f"grid, frontier, search-space: seeds "
                   f"(default {' '.join(map(str, SEEDS))})")  # fmt: skip
    p.add_argument(
        "--shots", type=int, nargs="+", default=[100, 50, 500], help="grid: shot counts (default 100 50 500)"
    )
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "report":
        return report(args.out)
    if args.mode == "plot":
        return plot(args.out, args.peer)
    torch.set_num_threads(args.threads)
    bench = Bench(args.out)
    if args.mode == "correlation":
        return correlation(bench)
    if args.mode == "anatomy":
        return anatomy(bench)
    index, parts = (int(x) for x in args.part.split("/"))
    done = bench.done()
    for i, (cell, k, shots, seed, config) in enumerate(cells(args.mode, args.seeds, args.shots)):
        if i % parts == index and cell not in done:
            bench.run(cell, k, shots, seed, config)


if __name__ == "__main__":
    main()
