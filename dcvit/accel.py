"""Accelerate, used the supported way: one state per process, an Accelerator per run or fine-tune.

Every command that runs a model takes its device and precision from here, so `dcvit compress`, `eval`, `bench`,
`cascade` and `synth` honour `--device` / `--mixed-precision` and `accelerate launch` alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import torch

from .checks import ArgumentError

if TYPE_CHECKING:  # accelerate imports when a model runs, not with `import dcvit` (config reads device_form)
    from accelerate import Accelerator

DEVICE_FORMS = "cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"(cpu|mps|cuda)(?::(\d{1,4}))?")


def available_devices() -> list[str]:
    """The devices this process can run on, as --device spells them."""
    here = ["cpu"]
    if torch.cuda.is_available():
        here += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        here.append("mps")
    return here


def device_form(device: object, what: str = "device") -> str | None:
    """`device` as a device name of an accepted form (cpu, cuda, cuda:N, mps), or a one-line ValueError; None
    stays None (what Accelerate picks). Whether this machine has it is check_device's question."""
    if device is None:
        return None
    text = str(device).strip().lower()
    match = _DEVICE.fullmatch(text)
    if not isinstance(device, (str, torch.device)) or not match or (match[2] is not None and match[1] != "cuda"):
        raise ArgumentError(what, f"{what} {str(device)[:40]!r} is not a device; accepted: {DEVICE_FORMS}")
    return text


def check_device(device: object, what: str = "device") -> str | None:
    """`device` if this machine has it, else a one-line ValueError saying why and what is accepted here."""
    text = device_form(device, what)
    here = available_devices()
    if text is None or text in here:
        return text
    kind = text.split(":")[0]
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        why = f"only {count} CUDA device(s) here" if count else "no CUDA device here"
    else:
        why = "no MPS (Apple GPU) device here"
    raise ArgumentError(what, f"{what} {text}: {why}; accepted: {', '.join(here)}")


def _launched() -> bool:
    """Started by a multi-process launcher (`accelerate launch --multi_gpu`, torchrun): each process then takes
    its own device from Accelerate."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


@contextmanager
def _device_env(device: str | None) -> Iterator[None]:
    """Accelerate's own way to pick the device of a single process (ACCELERATE_TORCH_DEVICE), for the one
    moment its state is created; the process environment is given back as it was."""
    before = os.environ.get("ACCELERATE_TORCH_DEVICE")
    if device is not None and device != "cpu" and not _launched():
        os.environ["ACCELERATE_TORCH_DEVICE"] = device
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ACCELERATE_TORCH_DEVICE", None)
        else:
            os.environ["ACCELERATE_TORCH_DEVICE"] = before


def _same_device(have: torch.device, want: str) -> bool:
    wanted = torch.device(want)
    return have.type == wanted.type and (wanted.index is None or have.index in (wanted.index, None))


def make_accelerator(mixed_precision: str | None = None, device: str | None = None) -> Accelerator:
    """An Accelerator on this process's Accelerate state (device, processes, mixed precision).

    Accelerate keeps one state per process and cannot change its device or mixed precision once set. None takes
    what the state has when it is set, else Accelerate's environment (`accelerate launch --mixed_precision`,
    ACCELERATE_MIXED_PRECISION; a CUDA device when there is one, else the CPU), else "no". Asking for another
    device or precision than the state's raises ValueError instead of resetting Accelerate's internals. A device
    this machine lacks, fp16 on the CPU (Accelerate would run it in fp32 without a word), and a single device for
    a multi-process launch are one-line ValueErrors. Accelerator objects are cheap: each shares the state, so
    callers may make one per run (or per fine-tune) to keep prepared optimizers and loss scalers apart.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState, is_initialized

    device = check_device(device)
    cpu = device == "cpu" if device is not None else not torch.cuda.is_available()
    if mixed_precision == "fp16" and cpu:
        _refuse_fp16_on_cpu()  # before the state is made: it could not be changed afterwards
    if is_initialized():
        current = AcceleratorState().mixed_precision
        if mixed_precision is not None and mixed_precision != current:
            raise ValueError(
                f"this process already runs Accelerate with mixed precision '{current}' (from an earlier run, "
                f"`accelerate launch --mixed_precision` or ACCELERATE_MIXED_PRECISION), and Accelerate cannot "
                f"change it within a process: use mixed_precision=None (follow it) or '{current}', or run the "
                f"'{mixed_precision}' run in a new process"
            )
    # PartialState may exist without AcceleratorState (dcvit.accel.is_main_process makes one): its device holds
    if device is not None and PartialState._shared_state and not _same_device(PartialState().device, device):
        have = PartialState().device
        raise ValueError(
            f"device {device}: this process already runs Accelerate on {have}, and Accelerate cannot change it "
            f"within a process; accepted: {have.type} (or leave the device out), or run in a new process"
        )
    with _device_env(device):
        accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    if device is not None and not _same_device(accelerator.device, device):  # a launcher placed this process
        raise ValueError(
            f"device {device}: under a multi-process launch Accelerate gives each process its own device (this "
            f"one: {accelerator.device}); accepted: {accelerator.device.type}, or leave the device out"
        )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":  # from the environment
        _refuse_fp16_on_cpu()
    return accelerator


def _refuse_fp16_on_cpu() -> None:
    raise ArgumentError(
        "mixed_precision",
        "mixed_precision fp16 needs a GPU (Accelerate would run it in fp32 on the CPU); on cpu accepted: no, bf16",
    )


def run_line(doing: str, accelerator: Accelerator) -> str:
    """The first status line of a command: what it does, on which device, how many processes, which precision."""
    return (
        f"{doing} on {accelerator.device}, {accelerator.num_processes} process(es), "
        f"mixed precision {accelerator.mixed_precision}"
    )


# The line a command has logged first (dcvit.cli.common.start_run), so a run inside it does not repeat it.
_announced: ContextVar[str | None] = ContextVar("dcvit_announced", default=None)


def announce(doing: str, accelerator: Accelerator, remember: bool = False) -> None:
    """Log run_line on the main process, unless the command running this already said that very line.
    remember: the line is the command's own first line (dcvit.cli.common.start_run), held until the command logs
    anything else, so a bad input refused before any work stays a one-line error (dcvit.progress.hold_first_line);
    a run inside the command then stays silent about it until end_command."""
    from .progress import hold_first_line, logger

    line = run_line(doing, accelerator)
    if not accelerator.is_main_process or _announced.get() == line:
        return
    if remember:
        _announced.set(line)
        hold_first_line(line)
    else:
        logger.info(line)


def end_command(succeeded: bool) -> None:
    """A command has ended (dcvit.cli.main calls this): its held first line is logged if it succeeded without
    logging anything else, dropped if it failed; the next run says its own first line again."""
    from .progress import release_first_line

    release_first_line(succeeded)
    _announced.set(None)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously): a timer must not stop before it."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def is_main_process() -> bool:
    """True in a plain process and on the main process under `accelerate launch`: the one that writes shared
    outputs (the model folder, result.json) and prints summaries."""
    from accelerate import PartialState

    return PartialState().is_main_process
