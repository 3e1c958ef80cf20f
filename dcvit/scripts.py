"""The argument layer of every dcvit command line: the `dcvit` CLI, the recipes in recipes/, the tools in
tools/ and compression scripts of your own.

The parser whose usage errors are one line (exit 2), the run arguments every compression script takes
(--data, --shots, --structure, --preset, --out, --resume, --seed and the size overrides), the CompressConfig
they describe, the refusal of an --out that already holds a run (dcvit.outdir), which process writes under
`accelerate launch`, and `run_main`, which turns the errors a user can fix into that same one line.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .accel import is_main_process
from .checks import seed_text
from .config import CompressConfig
from .outdir import refuse_existing_run
from .storage import write_json
from .structures import DEFAULT_STRUCTURE, structure_names

__all__ = ["PRESETS", "SIZES", "OneLineParser", "add_run_arguments", "clean_checkpoints", "config_from_args",
           "data_spec", "is_main_process", "positive_int", "refuse_existing_run", "run_main", "script_parser",
           "target_macs", "write_json"]  # fmt: skip

PRESETS = {
    "paper": {},  # CompressConfig.paper(): 2000 epochs per step and per trial, lr 3e-5, batch 64, RandAugment
    "quick": {"epochs": 100, "trial_epochs": 20, "synth_iterations": 200},
}
SIZES = ("epochs", "trial_epochs", "batch_size", "synth_images", "synth_iterations", "search_steps")
DATASETS = ("imagefolder", "cifar10", "cifar100", "fashion-mnist")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), like every other dcvit error."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see --help)\n")


def script_parser(description: str | None, prog: str | None = None, **kwargs: Any) -> OneLineParser:
    """A script's parser: one-line errors, and --help shows the description (its docstring) as written."""
    return OneLineParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )


def target_macs(text: str) -> float:
    """argparse type: a MACs target, a fraction in (0, 1) of the original or absolute MACs above 1."""
    value = float(text)  # argparse reports a ValueError as "invalid target_macs value"
    if not math.isfinite(value) or value <= 0 or value == 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1) of the original MACs nor MACs above 1")
    return value


def positive_int(text: str) -> int:
    if int(text) < 1:  # argparse reports a ValueError as "invalid positive_int value"
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def add_run_arguments(p: argparse.ArgumentParser, shots: int = 100) -> None:
    """The arguments of a compression run; the script adds its model and target arguments."""
    kinds = ", ".join(DATASETS)
    p.add_argument("--data", required=True, help="an ImageFolder root (PATH/train is used when present) or "
                   f"KIND:PATH, KIND one of {kinds}; labels are never used")  # fmt: skip
    p.add_argument("--shots", type=positive_int, default=shots, help=f"unlabeled training images (default {shots})")
    p.add_argument("--structure", choices=structure_names(), default=DEFAULT_STRUCTURE,
                   help=f"what blocks may lose (default {DEFAULT_STRUCTURE})")  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="paper: the paper's settings (2000 "
                   "epochs, lr 3e-5, batch 64, RandAugment); quick: 100 epochs per step, 20 per trial (default paper)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (checkpoints go to OUT/checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--clean", action="store_true", help="after a successful run, delete OUT/checkpoints (the "
                   "trial and step models, the synthetic set); a failed run keeps them for --resume")  # fmt: skip
    p.add_argument("--seed", type=seed_text, default=0, help="few-shot sampling and training seed (default 0)")
    sizes = p.add_argument_group("sizes", "override the preset's (the dcvit.CompressConfig fields of these names)")
    for name in SIZES:
        sizes.add_argument(f"--{name.replace('_', '-')}", type=positive_int, metavar="N")


def config_from_args(args: argparse.Namespace) -> CompressConfig:
    """The preset, the size overrides, the seed and the structure; progress bars only on a terminal."""
    sizes = {k: getattr(args, k) for k in SIZES if getattr(args, k) is not None}
    config = CompressConfig.paper(**{**PRESETS[args.preset], **sizes}, seed=args.seed, progress=sys.stderr.isatty())
    return config.for_structure(args.structure)


def clean_checkpoints(args: argparse.Namespace, out: Path) -> None:
    """With --clean, once the script has written its results: remove the run's checkpoints (OUT/checkpoints;
    only what a run writes there, dcvit.workspace.remove_checkpoints)."""
    from .workspace import remove_checkpoints

    if getattr(args, "clean", False):
        removed = remove_checkpoints(Path(out) / "checkpoints")
        print(f"--clean: removed {removed} checkpoint item(s) from {Path(out) / 'checkpoints'}", flush=True)


def data_spec(text: str) -> str:
    """--data as a dataset spec (a bare path is an ImageFolder root), checked before any slow work."""
    kind, _, path = text.partition(":")
    if kind.lower() not in DATASETS:
        text, path = f"imagefolder:{text}", text
    if path and not Path(path).exists():
        raise FileNotFoundError(f"dataset path {path} does not exist")
    return text


def run_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Any], argv=None) -> Any:
    """Parse, run, and report what a user can fix (bad targets, missing files, unsupported models) in one line."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:  # dcvit's UnsupportedModelError is a ValueError
        parser.error(str(err))
