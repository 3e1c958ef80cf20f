#!/usr/bin/env python
"""The peer baseline a practitioner would reach for: Torch-Pruning structured width pruning of the MLPs,
recovered with this project's few-shot feature mimicking (docs/method.md §6, Eq. 3).

Pruning (`prune_to_macs`). Torch-Pruning's `MetaPruner` with `GroupMagnitudeImportance(p=2)` (group L2
norm of fc1's row, its bias and fc2's column, normalised by each group's mean) and `global_pruning=True`
ranks the MLP hidden units of all blocks together and removes the least important ones (fc1 out / fc2 in).
The embedding dimension, the heads and the head dims stay: patch_embed, every attention (qkv, proj), the
norms and the head are in `ignored_layers`, and the class / position tokens in the ignored parameters, so
the only prunable groups are the MLP hidden units; `num_heads` is passed for timm attention with
`prune_num_heads=False, prune_head_dims=False`. A binary search over the number of units removed
(the global ratio is that number over all hidden units; `iterative_steps` pruner steps per try, one by
default) finds the least pruning with `dcvit.count_macs(pruned) <= target`; it must land within
`tolerance` (0.5%) below the target. Every block keeps at least `min_width` units. MLP-only pruning cannot
go below every MLP at `min_width` units (36% of the shipped teacher's MACs): such targets raise ValueError
and are recorded as unreachable.

Recovery (`recover`). `dcvit.mimic.mimic` on the pruned model: every block trained (`upto=None`; the head
and final norm stay frozen as in every dcvit fine-tune), the other settings of `CompressConfig`, for a
budget of `epochs * (k + 1)` epochs: `epochs` = max(4, round(2000 / shots)) as in
tools/bench_compression.py `config_for`, and k + 1 the progressive steps DC-ViT takes at that budget, k being
the blocks block dropping removes there (`dcvit.plan_block_drop`); for a target block dropping cannot reach,
k = `dcvit.planning.plan_search(teacher, target).steps` (the search's step count), so still k + 1 steps.
One seed per row drives the few shots and the fine-tune.

  run     one JSON line per (target, seed) appended to OUT/results.jsonl, rows already there skipped
  report  a Markdown table: target, MACs %, top-1 mean ± std over seeds, widths of the first seed

Needs torch-pruning:  pip install -e '.[bench]'
Example:  python tools/bench_peer.py run --targets 0.92 0.83 0.75 0.59 0.5 0.4 0.3 --seeds 2021 2022 2023 \
              --shots 100 --out runs/peer && python tools/bench_peer.py report --out runs/peer
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dcvit.scripts import script_parser

IMAGE_PASSES = 2000  # per progressive step, as in tools/bench_compression.py
INSTALL_HINT = "bench_peer needs torch-pruning: pip install -e '.[bench]'"


def _tp():
    import torch_pruning

    return torch_pruning


# --- pruning -----------------------------------------------------------------------------------------------
def _fc1s(model: nn.Module) -> list[nn.Linear]:
    from dcvit.arch import get_adapter

    adapter = get_adapter(model)
    return [adapter.mlp_linears(b)[0] for b in adapter.blocks(model)]


def mlp_widths(model: nn.Module) -> list[int]:
    """Hidden units of every block's MLP."""
    return [fc1.out_features for fc1 in _fc1s(model)]


def _ignored(model: nn.Module) -> list:
    """Everything but the MLPs' hidden units: patch embedding, attention, norms, head, tokens."""
    ignored: list = []
    for name in ("patch_embed", "norm", "fc_norm", "head_drop", "head"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            ignored.append(module)
    for block in model.blocks:
        ignored += [m for n, m in block.named_children() if n != "mlp"]
    return ignored + [param for param, _ in _tokens(model)]


def _tokens(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Class / register tokens and position embedding with their embedding dim (the last): declared to
    Torch-Pruning as unwrapped parameters, and ignored."""
    params = [getattr(model, name, None) for name in ("cls_token", "reg_token", "pos_embed")]
    return [(p, p.dim() - 1) for p in params if isinstance(p, nn.Parameter)]


def _keeping(importance, min_width: int):
    """`importance` with each group's `min_width` most important units made unprunable (+inf), so the global
    threshold never empties a block (Torch-Pruning would skip such a group, and MACs would stop falling)."""
    tp = _tp()

    class KeepAtLeast(tp.importance.Importance):
        def __call__(self, group):
            imp = importance(group)
            if imp is None or min_width <= 0:
                return imp
            imp = imp.clone()
            imp[torch.topk(imp, min(min_width, len(imp))).indices] = float("inf")
            return imp

    return KeepAtLeast()


def prune_units(
    model: nn.Module, n_remove: int, example_input: torch.Tensor, *, iterative_steps: int = 1, min_width: int = 1
) -> nn.Module:
    """A copy of `model` with `n_remove` MLP hidden units removed by global group-L2 magnitude (in
    `iterative_steps` pruner steps, importance re-estimated at each); blocks keep >= min_width units."""
    tp = _tp()
    model = copy.deepcopy(model).eval()
    total = sum(mlp_widths(model))
    if not 0 <= n_remove <= total - min_width * len(model.blocks):
        raise ValueError(f"can remove 0 to {total - min_width * len(model.blocks)} MLP units; asked {n_remove}")
    if n_remove == 0:
        return model
    num_heads = {b.attn.qkv: b.attn.num_heads for b in model.blocks if hasattr(b.attn, "qkv")}
    # Torch-Pruning keeps int(total * (1 - ratio)) units: half a unit of slack makes that exactly total - n_remove
    pruner = tp.pruner.MetaPruner(
        model,
        example_input,
        importance=_keeping(tp.importance.GroupMagnitudeImportance(p=2), min_width),
        global_pruning=True,
        pruning_ratio=(n_remove - 0.5) / total,
        iterative_steps=iterative_steps,
        ignored_layers=_ignored(model),
        unwrapped_parameters=_tokens(model),
        num_heads=num_heads,
        prune_num_heads=False,
        prune_head_dims=False,
    )
    fc1s = set(_fc1s(model))
    for _ in range(iterative_steps):
        for group in pruner.step(interactive=True):
            root = group[0].dep.target.module
            if root not in fc1s:  # cannot happen with the ignored layers above; never touch anything else
                raise RuntimeError(f"Torch-Pruning offered a group rooted at {root}, not an MLP's hidden units")
            group.prune()
    return model


def prune_to_macs(
    model: nn.Module,
    target_macs: float,
    example_input: torch.Tensor,
    *,
    tolerance: float = 0.005,
    iterative_steps: int = 1,
    min_width: int = 1,
) -> tuple[nn.Module, list[int]]:
    """Prune MLP hidden units (global magnitude, Torch-Pruning) until dcvit.count_macs <= the target (a
    fraction in (0, 1) or absolute MACs) and within `tolerance` of it; returns (pruned copy, MLP widths)."""
    from dcvit.macs import count_macs
    from dcvit.planning import resolve_target

    example_input = example_input[:1]
    input_size = tuple(example_input.shape[1:])
    full = count_macs(model, input_size)
    target = resolve_target(target_macs, full)
    widths = mlp_widths(model)
    cache: dict[int, tuple[nn.Module, int]] = {}

    def measured(n: int) -> tuple[nn.Module, int]:
        if n not in cache:
            pruned = prune_units(model, n, example_input, iterative_steps=iterative_steps, min_width=min_width)
            cache.clear()  # keep one pruned copy at a time
            cache[n] = pruned, count_macs(pruned, input_size)
        return cache[n]

    most = sum(widths) - min_width * len(widths)
    floor_model, floor = measured(most)
    if floor > target:
        raise ValueError(
            f"target {target / 1e6:.3f}M MACs is below what MLP pruning reaches: {floor / 1e6:.3f}M "
            f"({100 * floor / full:.1f}% of the original, every MLP at {min_width} unit(s))"
        )
    lo, hi = 0, most  # MACs(lo) > target >= MACs(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measured(mid)[1] <= target:
            hi = mid
        else:
            lo = mid
    pruned, macs = measured(hi)
    if macs < (1 - tolerance) * target:
        raise ValueError(
            f"pruning reached {macs / 1e6:.4f}M MACs, more than {100 * tolerance:g}% below the target "
            f"of {target / 1e6:.4f}M"
        )
    return pruned, mlp_widths(pruned)


# --- recovery ----------------------------------------------------------------------------------------------
def recover(student: nn.Module, teacher: nn.Module, data, config, *, epochs: int, seed: int):
    """Eq. 3 mimicking of `teacher`'s output tokens on the few shots `data`, all blocks trained, in place."""
    from dcvit.accel import make_accelerator
    from dcvit.mimic import FewShotImages, TeacherTokens, mimic

    accelerator = make_accelerator(config.mixed_precision)
    images = FewShotImages(data, teacher, config.augment)
    targets = TeacherTokens(
        copy.deepcopy(teacher).eval().requires_grad_(False).to(accelerator.device), images, accelerator
    )
    return mimic(
        student,
        targets,
        images,
        config,
        epochs=epochs,
        upto=None,
        seed=seed,
        accelerator=accelerator,
        desc="peer recovery",
    )


def epochs_per_step(shots: int) -> int:
    return max(4, round(IMAGE_PASSES / shots))


def steps_for(teacher: nn.Module, target: float) -> int:
    """k + 1: the progressive steps DC-ViT takes at this budget (k = blocks block dropping removes there)."""
    from dcvit.planning import plan_block_drop, plan_search

    try:
        k = plan_block_drop(teacher, target).n_blocks
    except ValueError:
        k = plan_search(teacher, target).steps
    return k + 1


# --- the benchmark -----------------------------------------------------------------------------------------
def _key(target: float, seed: int, shots: int) -> str:
    return f"peer/t{target:g}/s{shots}/seed{seed}"


def read_rows(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(out: Path, targets: Sequence[float], seeds: Sequence[int], shots: int) -> None:
    import dcvit
    from dcvit.config import CompressConfig

    out.mkdir(parents=True, exist_ok=True)
    done = {r["cell"] for r in read_rows(out)}
    teacher = dcvit.resolve_model("fmnist_vit12", weights="pretrained").eval()
    full = dcvit.count_macs(teacher)
    test = dcvit.load_dataset("fashion-mnist", train=False, transform=dcvit.eval_transform(teacher))
    example = torch.zeros(1, *dcvit.get_adapter(teacher).input_size(teacher))
    for target in targets:
        for seed in seeds:
            cell = _key(target, seed, shots)
            if cell in done:
                continue
            start = time.perf_counter()
            row = {"cell": cell, "target": target, "seed": seed, "shots": shots}
            try:
                model, widths = prune_to_macs(teacher, target, example)
            except ValueError as e:  # below the MLP-only floor: recorded, the same for every seed
                row.update(unreachable=str(e), seconds=time.perf_counter() - start)
                print(f"{cell}: {e}", flush=True)
            else:
                prune_seconds = time.perf_counter() - start
                steps = steps_for(teacher, target)
                epochs = epochs_per_step(shots) * steps
                config = CompressConfig(epochs=epochs, seed=seed, progress=False)
                data = dcvit.few_shot_subset("fashion-mnist", shots, seed, calibration_size=dcvit.CALIBRATION_SIZE)
                fit = recover(model, teacher, data, config, epochs=epochs, seed=seed)
                macs = dcvit.count_macs(model)
                top1 = dcvit.evaluate(model, dcvit.loader_for(test), progress=False)["top1"]
                row.update(
                    top1=top1,
                    macs=macs,
                    macs_fraction=macs / full,
                    widths=widths,
                    steps=steps,
                    epochs=epochs,
                    final_loss=fit.final_loss,
                    prune_seconds=prune_seconds,
                    recover_seconds=fit.seconds,
                    seconds=time.perf_counter() - start,
                )
                print(
                    f"{cell}: top-1 {100 * top1:.2f}% at {100 * macs / full:.1f}% MACs, widths {widths} "
                    f"({row['seconds']:.0f} s)",
                    flush=True,
                )
            with (out / "results.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")


def report(out: Path) -> None:
    rows = read_rows(out)
    print("| target | MACs % | top-1 % (mean ± std) | seeds | MLP widths (first seed) |")
    print("|---|---|---|---|---|")
    for target in sorted({r["target"] for r in rows}, reverse=True):
        mine = sorted((r for r in rows if r["target"] == target), key=lambda r: r["seed"])
        ok = [r for r in mine if "top1" in r]
        if not ok:
            print(f"| {target:g} | — | unreachable by MLP pruning | {len(mine)} | — |")
            continue
        top1 = [100 * r["top1"] for r in ok]
        stat = f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}" if len(top1) > 1 else f"{top1[0]:.2f}"
        print(
            f"| {target:g} | {100 * ok[0]['macs_fraction']:.1f} | {stat} | {len(ok)} | "
            f"{' '.join(map(str, ok[0]['widths']))} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = script_parser(__doc__)
    p.add_argument("mode", choices=["run", "report"])
    p.add_argument("--targets", type=float, nargs="+", default=[0.92, 0.83, 0.75, 0.59, 0.5, 0.4, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[2021, 2022, 2023])
    p.add_argument("--shots", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("runs/peer"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.mode == "report":
        report(args.out)
        return 0
    try:
        _tp()
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    run(args.out, args.targets, args.seeds, args.shots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
