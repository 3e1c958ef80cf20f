"""The `dcvit` command line: a thin layer over the Python API.

Each subcommand is a pair (arguments, run) registered in COMMANDS. Errors a user can fix (bad numbers,
unknown models, unsupported architectures, missing files) print one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Callable

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def command(name: str, help: str):
    """Register `run(args)`; the decorated function's `arguments` attribute fills its parser."""
    def wrap(run: Callable) -> Callable:
        COMMANDS[name] = (help, getattr(run, "arguments"), run)
        return run
    return wrap


def arguments(fill: Callable[[argparse.ArgumentParser], None]):
    def wrap(run: Callable) -> Callable:
        run.arguments = fill
        return run
    return wrap


def emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=2) if getattr(args, "json", False) else text)


def model_argument(p: argparse.ArgumentParser, input_size: bool = True) -> None:
    """--model and --json; --input-size only for commands that use it (the engine follows the data config)."""
    p.add_argument("--model", required=True, help="timm model name (e.g. fmnist_vit12, vit_base_patch16_224), "
                                                   "'tv:vit_b_16' for torchvision, or a saved model directory")
    if input_size:
        p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                       help="default: the model's data config")
    p.add_argument("--json", action="store_true", help="machine-readable output")


# --- macs -------------------------------------------------------------------------------------
@command("macs", "MACs of a model: total and, for supported transformers, per block (attention with norm1, MLP without norm2)")
@arguments(model_argument)
def run_macs(args) -> None:
    from .arch import UnsupportedModelError
    from .io import resolve_model
    from .macs import count_macs, default_input_size, macs_profile
    model = resolve_model(args.model)
    try:
        profile = macs_profile(model, args.input_size)
    except UnsupportedModelError as err:  # any model has a total; only adapters know its blocks
        size = tuple(args.input_size or default_input_size(model))
        total = count_macs(model, size)
        payload = {"model": args.model, "total": total, "attn": None, "mlp": None, "input_size": list(size)}
        emit(args, payload, f"{args.model}: {total / 1e9:.4f} GMACs ({total:,d} MACs) at input {size} "
                            f"(no per-block breakdown: {err})")
        return
    payload = {"model": args.model, "total": profile.total, "attn": list(profile.attn), "mlp": list(profile.mlp),
               "input_size": list(profile.input_size)}
    lines = [f"{args.model}: {profile.total / 1e9:.4f} GMACs at input {tuple(profile.input_size)}",
             "block  attn(+norm1) MACs  mlp MACs"]
    lines += [f"{i:5d}  {a:17,d}  {m:,d}" for i, (a, m) in enumerate(zip(profile.attn, profile.mlp))]
    emit(args, payload, "\n".join(lines))


# --- plan -------------------------------------------------------------------------------------
def _plan_arguments(p: argparse.ArgumentParser) -> None:
    model_argument(p)
    p.add_argument("--target-macs", required=True, help="fraction of the original in (0, 1), or absolute MACs")
    p.add_argument("--blocks", type=int, help="force the number of compressed blocks")
    p.add_argument("--candidates", type=int, nargs="+", help="candidate block indices (default: all but first and last)")


@command("plan", "structure for a target MACs (Eq. 1-2): how many blocks, how wide their MLPs stay")
@arguments(_plan_arguments)
def run_plan(args) -> None:
    from .io import resolve_model
    from .plan import plan
    p = plan(resolve_model(args.model), args.target_macs, blocks=args.blocks, input_size=args.input_size,
             candidate_blocks=args.candidates)
    payload = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()}
    emit(args, payload, p.describe())


# --- bench ------------------------------------------------------------------------------------
def _bench_arguments(p: argparse.ArgumentParser) -> None:
    model_argument(p)
    p.add_argument("--drop", type=int, nargs="+", default=[1, 2, 3],
                   help="compare at the MACs of dropping k blocks (DC-ViT then compresses k+1); default 1 2 3")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds (median reported)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


@command("bench", "latency: original vs DC-ViT vs block dropping at equal MACs (interleaved medians)")
@arguments(_bench_arguments)
def run_bench(args) -> None:
    import torch
    from .bench import format_latency, latency_table
    from .io import resolve_model
    if args.threads:
        torch.set_num_threads(args.threads)
    if min(args.drop) < 1 or min(args.batch_sizes) < 1 or args.repeats < 1:
        raise ValueError("--drop, --batch-sizes and --repeats must be positive integers")
    rows = latency_table(resolve_model(args.model), args.drop, args.batch_sizes, args.repeats, args.input_size)
    emit(args, {"model": args.model, "threads": torch.get_num_threads(), "rows": [r.as_dict() for r in rows]},
         format_latency(rows))


# --- eval -------------------------------------------------------------------------------------
def _eval_arguments(p: argparse.ArgumentParser) -> None:
    model_argument(p)
    p.add_argument("--data", default="fashion-mnist", help="dataset spec: fashion-mnist[:ROOT], imagefolder:PATH, "
                                                           "cifar10:PATH, cifar100:PATH (default fashion-mnist)")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=int, default=256)


@command("eval", "top-1, top-5, MACs, params and CPU throughput of a model on a dataset")
@arguments(_eval_arguments)
def run_eval(args) -> None:
    from .data import eval_transform, load_dataset
    from .evaluate import evaluate, loader_for, throughput
    from .io import resolve_model
    from .macs import count_macs, default_input_size
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size and --limit must be positive integers")
    model = resolve_model(args.model, weights="pretrained")
    data = load_dataset(args.data, train=args.split == "train", transform=eval_transform(model))
    result = evaluate(model, loader_for(data, args.batch_size, args.limit))
    size = args.input_size or default_input_size(model)
    result.update(model=args.model, data=args.data, split=args.split, macs=count_macs(model, size),
                  params=sum(p.numel() for p in model.parameters()),
                  images_per_second=round(throughput(model, size, args.batch_size), 1))
    emit(args, result, f"{args.model} on {args.data} {args.split} ({result['n']} images): top-1 {100 * result['top1']:.2f}%  "
                       f"top-5 {100 * result['top5']:.2f}%  {result['macs'] / 1e6:.2f}M MACs  "
                       f"{result['params'] / 1e6:.3f}M params  {result['images_per_second']:.0f} img/s (batch {args.batch_size})")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), like every other dcvit error."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import cli_cascade, cli_compress, cli_demo  # noqa: F401  registers the engine, cascade and demo commands
    parser = OneLineParser(prog="dcvit", description="Few-shot compression of vision transformers "
                                     "(DC-ViT) and cascades of compressed companions. See README.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, fill, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        fill(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed in one line
        return int(done.code or 0)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:  # dcvit's UnsupportedModelError is a ValueError
        print(f"dcvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"dcvit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
