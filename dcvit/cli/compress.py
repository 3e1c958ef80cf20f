"""`dcvit compress`, `dcvit family` and `dcvit synth`: thin wrappers over dcvit.compress and synth."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import CALIBRATION_SIZE
from ..outdir import check_out, claim_out, input_paths, refuse_existing_run, writing_out
from ..structures import BASELINE_STRUCTURE
from .common import (
    Command,
    device_arguments,
    emit,
    model_args,
    model_argument,
    model_source_arguments,
    seed_argument,
    start_run,
    structure_argument,
)


def _engine_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import CompressConfig
    from ..metrics import metric_names
    from ..views import view_names

    d = CompressConfig()
    model_argument(p, input_size=False)
    model_source_arguments(p)
    device_arguments(p)
    p.add_argument("--data", default="fashion-mnist", help="few-shot source (dataset spec; labels are never used)")
    p.add_argument("--shots", type=int, default=100, help="number of unlabeled images (default 100)")
    p.add_argument("--out", required=True, help="output folder: the model (dcvit.load-able), result.json, checkpoints")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"mimicking epochs per step (default {d.epochs})")
    p.add_argument(
        "--trial-epochs",
        type=int,
        default=d.trial_epochs,
        help=f"epochs per block-wise trial candidate (default {d.trial_epochs})",
    )
    p.add_argument(
        "--final-epochs",
        type=int,
        default=d.final_epochs,
        help=f"a last fine-tune of the finished model, this many epochs per tenth of the MACs removed (default "
        f"{d.final_epochs}: {6 * d.final_epochs} epochs at 40%% of the MACs; 0: none, as in the paper)",
    )
    p.add_argument(
        "--final-views",
        default=d.final_views,
        choices=view_names(),
        help=f"views of the shots in that last fine-tune, the same for teacher and student (default "
        f"{d.final_views or 'none, as every other fine-tune'})",
    )
    p.add_argument(
        "--final-batch-size",
        type=int,
        default=d.final_batch_size,
        help=f"batch size of that last fine-tune (default {d.final_batch_size or 'as --batch-size'})",
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--augment", action="store_true", help="RandomResizedCrop + flip + RandAugment on the few shots")
    p.add_argument("--synth-iterations", type=int, default=d.synth_iterations)
    structure_argument(p)
    p.add_argument(
        "--baseline",
        action="store_const",
        const=BASELINE_STRUCTURE,
        dest="structure",
        help=f"the same as --structure {BASELINE_STRUCTURE} (block dropping, PRACTISE-style)",
    )
    p.add_argument(
        "--search-steps",
        type=int,
        default=d.search_steps,
        help="auto/mlp: progressive steps, each fine-tuned for --epochs (default: one per average "
        "block's worth of MACs removed, as many as DC-ViT takes, 1 to 8)",
    )
    p.add_argument(
        "--prune-heads",
        action="store_true",
        help="auto: also offer keeping only some whole attention heads, where the model's adapter can "
        "prune them exactly (timm ViT/DeiT); off by default, see docs/history.md 'Search space'",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=None,
        help=f"training images held out for cascade calibration, never used as shots (default {CALIBRATION_SIZE} "
        "where the data has that many besides the shots, else none; use the same value and --seed with `dcvit cascade`)",
    )
    p.add_argument(
        "--metric",
        choices=metric_names(),
        help="how trial candidates are ranked: kl (the paper's Eq. 6, on the synthetic set), mse (feature MSE on the "
        "synthetic set), train_loss (few-shot loss); default kl, or mse for a headless model (num_classes=0)",
    )
    seed_argument(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--clean",
        action="store_true",
        help="after a successful run, delete its checkpoints (OUT/checkpoints: trial and step models, the "
        "synthetic set) and keep the model and result.json; a failed run keeps them for --resume",
    )
    p.add_argument(
        "--metric-cache",
        default=None,
        metavar="DIR|off",
        help="folder of the synthetic metric-set cache, or off (default: $DCVIT_METRIC_CACHE, else "
        "$XDG_CACHE_HOME/dcvit/metric-sets); results are the same either way",
    )


def _config(args):
    from ..config import CompressConfig

    config = CompressConfig(
        epochs=args.epochs,
        trial_epochs=args.trial_epochs,
        final_epochs=args.final_epochs,
        final_views=args.final_views,
        final_batch_size=args.final_batch_size,
        lr=args.lr,
        batch_size=args.batch_size,
        augment=args.augment,
        synth_iterations=args.synth_iterations,
        seed=args.seed,
        search_steps=args.search_steps,
        prune_heads=args.prune_heads,
        progress=not args.quiet,
        device=args.device,
        mixed_precision=args.mixed_precision,
    ).for_structure(args.structure)
    return config if args.metric is None else config.replace(metric=args.metric)  # asked for: over the structure's


def _run_targets(args, targets: list[str]) -> list[dict]:
    from ..accel import is_main_process
    from ..data import few_shot_subset
    from ..driver import compress_family, plan_for
    from ..factory import resolve_model

    # the output place, config and targets are checked before any slow work
    out = check_out(args.out, args.command, input_paths(args.data, [args.model]))
    config = _config(args)
    refuse_existing_run(out, args.resume)  # a run begun or finished: only with --resume
    start_run(args, "compressing")  # a device or precision refused now, and the first log line (the run's own)
    model = resolve_model(args.model, weights="pretrained", **model_args(args))
    plans = [plan_for(model, t, config) for t in targets]
    data = few_shot_subset(args.data, args.shots, seed=args.seed, calibration_size=args.calibration_size)
    claim_out(out, args.command)  # after the data loaded: a bad --data leaves no folder behind
    results = compress_family(
        model, plans, data, config, workdir=out / "checkpoints", resume=args.resume, metric_cache=args.metric_cache
    )
    main = is_main_process()  # under `accelerate launch` only the main process writes OUT and prints
    summaries = []
    for target, result in zip(targets, results):
        folder = out if len(targets) == 1 else out / f"target-{target}"
        if main:
            summaries.append(result.save(folder, target=target))
        else:
            summaries.append(result.summary(target=target, model_dir=str(folder / "model")))
    if args.clean and main:  # only now: every model and result.json is written
        _clean(out / "checkpoints")
    return summaries


def _clean(checkpoints: Path) -> None:
    from ..progress import logger
    from ..workspace import remove_checkpoints

    removed = remove_checkpoints(checkpoints)
    logger.info(f"--clean: removed {removed} checkpoint item(s) from {checkpoints}")


def _line(s: dict) -> str:
    return f"target {s['target']} -> {s['model_dir']}: {s['describe']}"


def run_compress(args) -> None:
    from ..accel import is_main_process

    (summary,) = _run_targets(args, [args.target_macs])
    if is_main_process():
        emit(args, summary, _line(summary))


def run_family(args) -> None:
    from ..accel import is_main_process

    summaries = _run_targets(args, args.targets)
    if is_main_process():
        emit(args, {"family": summaries}, "\n".join(_line(s) for s in summaries))


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    model_argument(p)
    model_source_arguments(p)
    device_arguments(p)
    p.add_argument("--num-images", type=int, default=50)
    p.add_argument("--iterations", type=int, default=2000, help="optimisation steps (default 2000, the reference)")
    p.add_argument(
        "--jitter",
        type=float,
        default=None,
        help="random roll, as a fraction of the side (default: at most half a patch for a ViT, "
        "min(30/224, (patch // 2) / side), else 30/224, the reference; for the 28x28 fmnist_vit12 the engine uses 1/28: "
        'BENCHMARKS.md, "Synthetic metric set")',
    )
    seed_argument(p)
    p.add_argument("--out", required=True, help="folder for the set (safetensors + JSON) and grid.png")


def run_synth(args) -> None:
    import synth

    from ..factory import resolve_model
    from ..progress import bar

    out = check_out(args.out, "synth", input_paths(None, [args.model]))  # before the optimisation, not after it
    acc = start_run(args, "synthesizing")
    model = resolve_model(args.model, weights="pretrained", **model_args(args)).to(acc.device)
    with acc.autocast():
        made = synth.synthesize(
            model,
            args.num_images,
            iterations=args.iterations,
            jitter=args.jitter,
            seed=args.seed,
            image_size=args.input_size,
            progress=False if args.quiet else bar,
            device=acc.device,
        )
        hit, conf = made.target_agreement(model)
    with writing_out(out, "synth"):  # a failed write (a full disk) leaves no folder it made behind
        made.save(out)
        made.save_grid(out / "grid.png")
    payload = {"out": args.out, "num_images": len(made), "target_hit_rate": hit, "mean_target_confidence": conf}
    emit(
        args,
        payload,
        f"{len(made)} images -> {args.out} (grid.png); classified as their target: {100 * hit:.1f}%, "
        f"mean target confidence {conf:.3f}",
    )


def _compress_arguments(p: argparse.ArgumentParser) -> None:
    _engine_arguments(p)
    p.add_argument("--target-macs", required=True, help="fraction of the original in (0, 1), or absolute MACs")


def _family_arguments(p: argparse.ArgumentParser) -> None:
    _engine_arguments(p)
    p.add_argument(
        "--targets", nargs="+", required=True, help="target MACs, each a fraction in (0, 1) or absolute MACs"
    )


COMMANDS = [
    Command(
        "compress",
        "compress a ViT to a target MACs with a few unlabeled images (DC-ViT, Algorithm 1)",
        _compress_arguments,
        run_compress,
    ),
    Command(
        "family",
        "a dense family: one compressed model per target MACs, trials shared where plans allow",
        _family_arguments,
        run_family,
    ),
    Command(
        "synth", "synthesize a DeepInversion-style metric set from a classifier (Eq. 4-5)", _synth_arguments, run_synth
    ),
]
