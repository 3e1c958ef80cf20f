"""`dcvit macs`, `plan`, `bench` and `eval`: looking at one model."""

from __future__ import annotations

import argparse

from .common import (
    Command,
    batch_size,
    device_arguments,
    emit,
    model_args,
    model_argument,
    model_source_arguments,
    start_run,
    structure_argument,
    threads,
)


def _model_arguments(p: argparse.ArgumentParser, precision: bool = True) -> None:
    """--model (--input-size, --json), how it is built (--model-kwargs, --checkpoint) and where it runs."""
    model_argument(p)
    model_source_arguments(p)
    device_arguments(p, precision)


# --- macs -------------------------------------------------------------------------------------
def run_macs(args) -> None:
    import cascade

    from ..arch import UnsupportedModelError
    from ..factory import resolve_model
    from ..macs import count_macs, default_input_size, macs_profile

    if cascade.is_cascade_dir(args.model):
        _macs_cascade(args)
        return
    device = start_run(args, "counting MACs", precision="no").device  # MACs do not depend on the precision
    model = resolve_model(args.model, require_adapter=False, **model_args(args)).to(device)  # any model has a total
    try:
        profile = macs_profile(model, args.input_size)
    except UnsupportedModelError as err:  # any model has a total; only adapters know its blocks
        size = tuple(args.input_size or default_input_size(model))
        total = count_macs(model, size)
        payload = {"model": args.model, "total": total, "attn": None, "mlp": None, "input_size": list(size)}
        emit(
            args,
            payload,
            f"{args.model}: {total / 1e9:.4f} GMACs ({total:,d} MACs) at input {size} (no per-block breakdown: {err})",
        )
        return
    payload = {
        "model": args.model,
        "total": profile.total,
        "attn": list(profile.attn),
        "mlp": list(profile.mlp),
        "input_size": list(profile.input_size),
    }
    lines = [
        f"{args.model}: {profile.total / 1e9:.4f} GMACs at input {tuple(profile.input_size)}",
        "block  attn(+norm1) MACs  mlp MACs",
    ]
    lines += [f"{i:5d}  {a:17,d}  {m:,d}" for i, (a, m) in enumerate(zip(profile.attn, profile.mlp))]
    emit(args, payload, "\n".join(lines))


def _macs_cascade(args) -> None:
    """A cascade folder: each member's MACs (recounted on load) and, where cascade.json records where samples
    left, the expected MACs per image; else the range from the first member alone to every member."""
    from ..cascade_files import load_cascade

    if args.input_size is not None:
        raise ValueError("--input-size does not apply to a cascade: its input is fixed in its cascade.json")
    if any(model_args(args).values()):
        raise ValueError("--model-kwargs and --checkpoint do not apply to a cascade folder: its members are saved")
    spec = load_cascade(args.model).spec  # refuses members whose MACs differ from the recorded ones
    fractions = spec.exit_fractions
    expected = spec.expected_macs
    payload = {
        "model": args.model,
        "input_size": list(spec.preprocessing["input_size"]),
        "members": [{"name": m.name, "kind": m.kind, "macs": m.macs} for m in spec.members],
        "exit_fractions": None if fractions is None else list(fractions),
        "expected_macs_per_image": expected,
    }
    width = max(len(m.name) for m in spec.members)
    lines = [f"cascade {args.model} at input {tuple(spec.preprocessing['input_size'])}"]
    for i, m in enumerate(spec.members):
        share = "" if fractions is None else f"  answers {100 * fractions[i]:.1f}%"
        lines.append(f"  {m.name:<{width}}  {m.kind:<10}  {m.macs / 1e6:10.2f}M MACs{share}")
    big = spec.members[-1]
    if expected is None:
        lines.append(
            f"no exit fractions recorded: {spec.members[0].macs / 1e6:.2f}M to {sum(spec.costs) / 1e6:.2f}M MACs "
            f"per image (first member alone to every member)"
        )
    else:
        fewer = f" ({100 * (1 - expected / big.macs):.1f}% fewer than {big.name} alone)" if big.macs > 0 else ""
        lines.append(f"expected {expected / 1e6:.2f}M MACs per image at the recorded exit fractions{fewer}")
    emit(args, payload, "\n".join(lines))


# --- plan -------------------------------------------------------------------------------------
def _plan_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p, precision=False)
    p.add_argument("--target-macs", required=True, help="fraction of the original in (0, 1), or absolute MACs")
    structure_argument(p)
    p.add_argument("--blocks", type=int, help="dcvit: force the number of compressed blocks")
    p.add_argument(
        "--candidates",
        type=int,
        nargs="+",
        help="candidate block indices (default: all but first and last for dcvit and drop, all for auto/mlp)",
    )


def run_plan(args) -> None:
    from ..factory import resolve_model
    from ..structures import get_structure

    device = start_run(args, "planning", precision="no").device  # MACs do not depend on the precision
    model = resolve_model(args.model, **model_args(args)).to(device)
    options = {"input_size": args.input_size, "candidate_blocks": args.candidates, "blocks": args.blocks}
    p = get_structure(args.structure).plan(model, args.target_macs, **options)
    emit(args, p.as_dict(), p.describe())


# --- bench ------------------------------------------------------------------------------------
def _bench_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    p.add_argument(
        "--drop",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        help="compare at the MACs of dropping k blocks (DC-ViT then compresses k+1); default 1 2 3",
    )
    p.add_argument("--batch-sizes", type=batch_size, nargs="+", default=[1, 32], help="default 1 32")
    p.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds (median reported)")
    p.add_argument("--threads", type=threads, help="torch CPU threads, up to the CPU count (default: torch's)")


def run_bench(args) -> None:
    import torch

    from ..factory import resolve_model
    from ..studies.latency import format_latency, latency_table

    counts = [*args.drop, *args.batch_sizes, args.repeats, *([] if args.threads is None else [args.threads])]
    if min(counts) < 1:  # torch.set_num_threads(-2) fails with a traceback, and 0 was silently ignored
        raise ValueError("--drop, --batch-sizes, --repeats and --threads must be positive integers")
    if args.threads:
        torch.set_num_threads(args.threads)
    acc = start_run(args, "timing")
    model = resolve_model(args.model, **model_args(args))
    rows = latency_table(
        model, args.drop, args.batch_sizes, args.repeats, args.input_size, device=acc.device, autocast=acc.autocast
    )
    where = {"device": str(acc.device), "mixed_precision": acc.mixed_precision}
    emit(
        args,
        {"model": args.model, "threads": torch.get_num_threads(), **where, "rows": [r.as_dict() for r in rows]},
        f"timed on {acc.device}, mixed precision {acc.mixed_precision}\n{format_latency(rows)}",
    )


# --- eval -------------------------------------------------------------------------------------
def _eval_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="dataset spec: fashion-mnist[:ROOT], imagefolder:PATH, "
        "cifar10:PATH, cifar100:PATH (default fashion-mnist)",
    )
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=batch_size, default=256, help="default 256")


def run_eval(args) -> None:
    import cascade

    from ..data import eval_transform, load_dataset
    from ..evaluation import check_classes, evaluate, loader_for, throughput
    from ..factory import resolve_model
    from ..macs import count_macs, default_input_size

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size and --limit must be positive integers")
    acc = start_run(args, "evaluating")
    if cascade.is_cascade_dir(args.model):
        _eval_cascade(args, acc)
        return
    model = resolve_model(args.model, weights="pretrained", **model_args(args)).to(acc.device)
    data = load_dataset(args.data, train=args.split == "train", transform=eval_transform(model))
    matched = check_classes(model, data, args.data, args.model)
    size = args.input_size or default_input_size(model)
    with acc.autocast():
        result = evaluate(model, loader_for(data, args.batch_size, args.limit), progress=not args.quiet)
        batch = min(args.batch_size, result["n"])  # timed on no larger a batch than the data gives
        speed = round(throughput(model, size, batch), 1)
    result.update(
        model=args.model,
        data=args.data,
        split=args.split,
        macs=count_macs(model, size),
        params=sum(p.numel() for p in model.parameters()),
        images_per_second=speed,
        device=str(acc.device),
        mixed_precision=acc.mixed_precision,
    )
    emit(
        args,
        result,
        f"{args.model} on {args.data} {args.split} ({result['n']} images): top-1 {100 * result['top1']:.2f}%  "
        f"top-5 {100 * result['top5']:.2f}%  {result['macs'] / 1e6:.2f}M MACs  "
        f"{result['params'] / 1e6:.3f}M params  {result['images_per_second']:.0f} img/s on {acc.device} (batch {batch})"
        + _matched(result, data, matched),
    )


def _eval_cascade(args, acc) -> None:
    """`dcvit eval` on a cascade folder (written by `dcvit cascade --out`, or cascade.save)."""
    from ..cascade_files import load_cascade
    from ..data import eval_transform, load_dataset
    from ..evaluation import check_classes, evaluate_cascade, loader_for

    for flag, value in (("--input-size", args.input_size), ("--model-kwargs", args.model_kwargs)):
        if value is not None:
            raise ValueError(f"{flag} does not apply to a cascade: its members are fixed in its cascade.json")
    if args.checkpoint is not None:
        raise ValueError("--checkpoint does not apply to a cascade: its members' weights are in its folder")
    model = load_cascade(args.model).to(acc.device)
    data = load_dataset(args.data, train=args.split == "train", transform=eval_transform(model))
    matched = check_classes(model, data, args.data, args.model)
    with acc.autocast():
        result = evaluate_cascade(model, loader_for(data, args.batch_size, args.limit), progress=not args.quiet)
    result.update(model=args.model, data=args.data, split=args.split, thresholds=list(model.thresholds))
    result.update(device=str(acc.device), mixed_precision=acc.mixed_precision)
    exits = ", ".join(f"{name} {100 * f:.1f}%" for name, f in zip(result["members"], result["exit_fractions"]))
    emit(
        args,
        result,
        f"cascade {args.model} on {args.data} {args.split} ({result['n']} images): top-1 {100 * result['top1']:.2f}%  "
        f"top-5 {100 * result['top5']:.2f}%  {result['macs_per_image'] / 1e6:.2f}M MACs per image "
        f"({100 * result['macs_reduction']:.1f}% fewer than {result['members'][-1]} alone)\n"
        f"answered by: {exits}; thresholds {', '.join(f'{t:.4g}' for t in model.thresholds)}"
        + _matched(result, data, matched),
    )


def _matched(result: dict, data, matched: str | None) -> str:
    """An image folder's class match (dcvit.labels) in the JSON (folder -> class index) and as a text line."""
    if matched is None:
        return ""
    while hasattr(data, "indices"):  # a Subset
        data = data.dataset
    result["class_folders"] = dict(data.class_to_idx)
    return f"\n{matched}"


COMMANDS = [
    Command(
        "macs",
        "MACs of a model: total and, for supported transformers, per block (attention with norm1, MLP without "
        "norm2); for a cascade folder, its members' and the expected MACs per image",
        lambda p: _model_arguments(p, precision=False),
        run_macs,
    ),
    Command(
        "plan",
        "structure for a target MACs: the search plan (auto, mlp), Eq. 1-2 (dcvit), or whole blocks (drop)",
        _plan_arguments,
        run_plan,
    ),
    Command(
        "bench",
        "latency: original vs DC-ViT vs block dropping at equal MACs (interleaved medians)",
        _bench_arguments,
        run_bench,
    ),
    Command(
        "eval",
        "top-1, top-5, MACs, params and throughput (on --device) of a model on a dataset; for a cascade folder, top-1, "
        "where samples exit and MACs per image",
        _eval_arguments,
        run_eval,
    ),
]
