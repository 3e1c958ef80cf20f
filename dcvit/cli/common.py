"""What every `dcvit` command shares: the one-line-error parser, --model/--json, and output."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..checks import SEED_LIMIT, seed_text  # noqa: F401  (SEED_LIMIT: once defined here)
from ..scripts import OneLineParser as OneLineParser  # the one argument layer, shared with recipes and tools
from ..storage import os_error_line as os_error_line  # re-exported for main()

MAX_BATCH = 4096  # images per forward pass: 4096 of 224 x 224 RGB are 2.5 GB of input alone


@dataclass(frozen=True)
class Command:
    """A subcommand: `arguments(parser)` fills its parser, `run(args)` does the work."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


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
    """--structure: the registered structures (dcvit.structures), each with its summary."""
    from ..structures import DEFAULT_STRUCTURE, get_structure, structure_names

    kinds = "; ".join(
        f"{name}{' (default)' if name == DEFAULT_STRUCTURE else ''}: {get_structure(name).summary}"
        for name in structure_names()
    )
    p.add_argument(
        "--structure", choices=structure_names(), default=DEFAULT_STRUCTURE, help=f"what blocks may lose: {kinds}"
    )


# --- arguments every command shares ------------------------------------------------------------
def quiet_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines (results and errors only)")


seed = seed_text  # argparse type: a seed torch accepts, 0 <= seed < 2**63 (dcvit.checks)


def count_upto(what: str, limit: Callable[[], int], why: str) -> Callable[[str], int]:
    """argparse type: an integer from 1 to limit() (e.g. a batch size up to MAX_BATCH)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= limit():
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r} is not {what}: accepted a positive integer up to {limit()} ({why})"
            )
        return value

    return parse


batch_size = count_upto("a batch size", lambda: MAX_BATCH, "larger batches only cost memory")
threads = count_upto("a thread count", lambda: os.cpu_count() or 1, "this machine's CPU count")


def seed_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=seed, default=0, help="random seed, 0 <= seed < 2**63 (default 0)")


# --- the model and where it runs: every command that builds or runs one ------------------------------
PRECISIONS = ("no", "fp16", "bf16")


def model_kwarg(text: str) -> tuple[str, Any]:
    """argparse type of --model-kwargs: KEY=VALUE, VALUE a JSON literal where it reads as one (224, 0.1, true,
    null, [224, 224]), else the string itself (avg)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not KEY=VALUE (e.g. num_classes=0 img_size=384)")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def model_source_arguments(p: argparse.ArgumentParser, which: str = "--model") -> None:
    """--model-kwargs and --checkpoint: how the model named by `which` is built and which weights it gets."""
    p.add_argument(
        "--model-kwargs",
        type=model_kwarg,
        nargs="+",
        metavar="KEY=VALUE",
        help=f"settings for building {which} from its name, passed to the builder (timm.create_model(name, "
        "num_classes=0, img_size=384)); VALUE is read as JSON where it can be (0, 0.1, true, null, [224, 224]), "
        "else as a string. num_classes=0 makes a headless model (features out), compressed with the mse metric",
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help=f"local weights for {which} instead of the pretrained ones: a .safetensors file, or a torch state "
        "dict (read with weights_only=True); its names and shapes must fit the model built with --model-kwargs",
    )


def device_arguments(p: argparse.ArgumentParser, precision: bool = True) -> None:
    """--device and, where the precision changes the work, --mixed-precision (both through Accelerate)."""
    p.add_argument(
        "--device",
        help="cpu, cuda, cuda:N or mps (default: what Accelerate picks: a CUDA device where there is one, else "
        "the CPU; under `accelerate launch`, each process's own)",
    )
    if precision:
        p.add_argument(
            "--mixed-precision",
            choices=PRECISIONS,
            help="autocast precision (default: `accelerate launch --mixed_precision` or ACCELERATE_MIXED_PRECISION, "
            "else no); fp16 needs a GPU",
        )


def model_args(args: argparse.Namespace) -> dict[str, Any]:
    """resolve_model's model_kwargs and checkpoint from --model-kwargs and --checkpoint (repeated keys refused)."""
    pairs = getattr(args, "model_kwargs", None) or []
    kwargs = dict(pairs)
    if len(kwargs) < len(pairs):
        repeated = sorted({k for k, _ in pairs if [key for key, _ in pairs].count(k) > 1})
        raise ValueError(f"--model-kwargs sets {', '.join(repeated)} more than once; accepted: each KEY once")
    return {"model_kwargs": kwargs or None, "checkpoint": getattr(args, "checkpoint", None)}


def start_run(args: argparse.Namespace, doing: str, precision: str | None = None):
    """The Accelerator for --device and --mixed-precision (one-line errors for a device this machine lacks),
    and the command's first log line: what it does, device, processes and precision."""
    from ..accel import announce, make_accelerator

    accelerator = make_accelerator(precision or getattr(args, "mixed_precision", None), getattr(args, "device", None))
    announce(doing, accelerator, remember=True)  # a compression inside the command does not say it again
    return accelerator


# --- plugins: modules that register adapters (dcvit.arch.register_adapter) ------------------------
def import_argument(p: argparse.ArgumentParser, dest: str = "imports", **extra) -> None:
    """--import MODULE (repeatable): given before the command, or after it (then `dest` differs, see main)."""
    p.add_argument(
        "--import",
        dest=dest,
        action="append",
        metavar="MODULE",
        help="import MODULE first (repeatable): a plugin that registers an adapter with "
        "dcvit.arch.register_adapter; looked up on PYTHONPATH, then in the current directory",
        **extra,
    )


def traceback_argument(p: argparse.ArgumentParser, **extra) -> None:
    """--traceback: the full error instead of the one-line message (also DCVIT_TRACEBACK=1)."""
    p.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, print the full traceback instead of the one-line message (or set DCVIT_TRACEBACK=1)",
        **extra,
    )


def wants_traceback(args: argparse.Namespace) -> bool:
    """--traceback given, before or after the command, or DCVIT_TRACEBACK set to anything but '', 0 or false."""
    env = os.environ.get("DCVIT_TRACEBACK", "").strip().lower()
    return bool(getattr(args, "traceback", False)) or env not in ("", "0", "false", "no")


def import_plugins(modules: list[str]) -> None:
    """Import each plugin module; one that is missing or fails to import is a one-line ValueError."""
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # last, so a file here never shadows an installed module
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # missing, or the plugin's own error: the user's input, reported in one line
            missing = isinstance(err, ModuleNotFoundError) and (name + ".").startswith(f"{err.name}.")
            detail = "; put its folder on PYTHONPATH" if missing else ""
            message = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            raise ValueError(f"--import {name}: cannot import it ({message}){detail}") from None


# --- logging: progress and status lines ----------------------------------------------------------
def configure_logging(quiet: bool) -> None:
    """`dcvit: ...` lines on stderr from the "dcvit" logger: INFO (progress, status), or WARNING with --quiet.

    Configured on the "dcvit" logger rather than with logging.basicConfig, which does nothing once the root
    logger has a handler (an embedding application, pytest) and binds the stderr of its first call; calling
    main() twice replaces the handler instead of adding a second one.
    """
    from ..progress import log_to_stderr

    log_to_stderr(logging.WARNING if quiet else logging.INFO)
