"""What every `dcvit` command shares: the one-line-error parser, --model/--json, and output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A subcommand: `arguments(parser)` fills its parser, `run(args)` does the work."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), like every other dcvit error."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see --help)\n")


def emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=2) if getattr(args, "json", False) else text)


def model_argument(p: argparse.ArgumentParser, input_size: bool = True) -> None:
    """--model and --json; --input-size only for commands that use it (the engine follows the data config)."""
    p.add_argument(
        "--model",
        required=True,
        help="timm model name (e.g. fmnist_vit12, vit_base_patch16_224), "
        "'tv:vit_b_16' for torchvision, or a saved model directory",
    )
    if input_size:
        p.add_argument(
            "--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="default: the model's data config"
        )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def structure_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--structure",
        choices=["auto", "dcvit", "drop", "mlp"],
        default="auto",
        help="what blocks may lose: auto (default) lets the synthetic metric set choose per block among "
        "narrowing or removing the MLP, removing attention, or dropping the block; mlp: MLP edits "
        "only; dcvit: the paper (attention removed, MLPs narrowed, Eq. 1-2); drop: whole blocks",
    )
