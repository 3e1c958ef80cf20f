"""Plumbing shared by the recipes: argument parsing with one-line errors, presets, loading, saving, tables."""
from __future__ import annotations

import argparse
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dcvit
from dcvit.cli.common import OneLineParser
from dcvit.config import CompressConfig
from dcvit.data import SPEC_HELP, parse_spec
from dcvit.files import write_json

PRESETS = {
    "paper": CompressConfig.paper,  # 2000 epochs per step and per trial, lr 3e-5, batch 64, RandAugment
    "quick": lambda **kw: CompressConfig.paper(**{"epochs": 100, "trial_epochs": 20, "synth_iterations": 200, **kw}),
}


class Parser(OneLineParser):
    """dcvit's one-line-error parser; --help shows the description (the recipe's docstring, with its example
    command) as written."""

    def __init__(self, **kwargs) -> None:
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


@contextmanager
def user_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Errors a user can fix (bad targets, missing files, unsupported models) end as one line, exit 2."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:  # dcvit's UnsupportedModelError is a ValueError
        parser.error(str(err))


def target(text: str) -> float:
    """argparse type: a MACs target, a fraction in (0, 1) of the original or absolute MACs above 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value == 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1) of the original MACs "
                                         f"nor absolute MACs above 1")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def add_run_arguments(p: argparse.ArgumentParser, shots: int = 100) -> None:
    """The arguments every recipe shares."""
    p.add_argument("--data", help="the few-shot source: an ImageFolder root (PATH/train is used when present) "
                                  f"or a dataset spec ({SPEC_HELP}); labels are never used")
    p.add_argument("--shots", type=positive_int, default=shots, help=f"unlabeled training images (default {shots})")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="paper: the paper's ImageNet settings (2000 epochs, lr 3e-5, batch 64, RandAugment); "
                        "quick: 100 epochs per step and 20 per trial, for a first look (default paper)")
    p.add_argument("--out", required=True, help="output folder (checkpoints go to OUT/checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--seed", type=int, default=0, help="few-shot sampling and training seed (default 0)")
    p.add_argument("--smoke", action="store_true",
                   help="check the wiring in seconds, offline: a tiny random ViT, generated images and tiny sizes "
                        "replace the model, --data and the sizes; the targets, --preset and --seed still apply")


def data_spec(args, parser: argparse.ArgumentParser) -> str:
    """--data as a dataset spec (a bare path means an ImageFolder), checked before any slow work."""
    if not args.data:
        parser.error("--data is required (an ImageFolder root or a dataset spec) unless --smoke is given")
    kind = args.data.partition(":")[0].lower()
    spec = args.data if kind in ("imagefolder", "cifar10", "cifar100", "fashion-mnist") else f"imagefolder:{args.data}"
    parse_spec(spec)  # ValueError / FileNotFoundError for bad specs and missing paths
    return spec


def config_for(args, smoke_shrink=None) -> CompressConfig:
    config = PRESETS[args.preset](seed=args.seed)
    return smoke_shrink(config) if smoke_shrink else config


def load_pretrained(name: str):
    """A saved model directory, or a timm ('tv:NAME' for torchvision) model with its pretrained weights; never
    random init, since compressing random weights is pointless."""
    return dcvit.resolve_model(name, weights="pretrained")


def check_fresh(workdir: Path, resume: bool) -> None:
    """Refuse to overwrite a run before any slow work (dcvit itself only notices after loading the data)."""
    if (workdir / "settings.json").is_file() and not resume:
        raise ValueError(f"{workdir.parent} already holds a run; pass --resume to continue it, or choose another --out")


def label(t: float) -> str:
    return f"{t:g}"


def save_result(result, target: float, folder: Path, **extra) -> dict:
    """FOLDER/model (dcvit.load-able) and FOLDER/result.json; returns the summary written there."""
    plan = result.plan
    model_dir = dcvit.save(result.model, folder / "model")
    summary = {"target": target, "model_dir": str(model_dir), "macs": result.macs, "macs_original": plan.macs_original,
               "macs_fraction": result.macs / plan.macs_original, "blocks": list(result.blocks),
               "mlp_hidden": plan.mlp_hidden, "mlp_hidden_original": plan.mlp_hidden_original,
               "remove_attention": plan.remove_attention, "plan": plan.describe(),
               "scores": {str(b): s for b, s in result.scores.items()}, "seconds": result.seconds,
               "history": list(result.history), **extra}
    write_json(folder / "result.json", summary)
    return summary


def family_table(summaries: list[dict]) -> str:
    lines = ["| target | MACs | of original | blocks | MLP width |", "|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {label(s['target'])} | {s['macs'] / 1e6:.2f}M | {100 * s['macs_fraction']:.1f}% | "
                     f"{', '.join(map(str, s['blocks']))} | {s['mlp_hidden_original']} -> {s['mlp_hidden']} |")
    return "\n".join(lines)


def main_with_smoke(build_parser, run, argv: list[str] | None = None):
    """Parse, then run for real or, with --smoke, on a tiny model and a generated ImageFolder."""
    import tempfile

    import _smoke
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        if not args.smoke:
            return run(args, parser)
        _smoke.setup()
        with tempfile.TemporaryDirectory(prefix="dcvit-smoke-") as tmp:
            return run(args, parser, _smoke.fake_imagefolder(tmp))


def setup_run(args, parser, data_root: Path | None):
    """(model, data spec, shots, config) for a real run or a smoke run; refuses an existing run without --resume."""
    import _smoke
    if args.smoke:
        model, spec, shots = _smoke.tiny_model(seed=args.seed), f"imagefolder:{data_root}", _smoke.SHOTS
        config = config_for(args, _smoke.shrink)
    else:
        spec, shots, config = data_spec(args, parser), args.shots, config_for(args)
    check_fresh(Path(args.out) / "checkpoints", args.resume)
    if not args.smoke:
        model = load_pretrained(args.model)
    return model, spec, shots, config
