"""Accelerate, used the supported way: one state per process, an Accelerator per run or fine-tune."""

from __future__ import annotations

import torch
from accelerate import Accelerator


def make_accelerator(mixed_precision: str | None = None) -> Accelerator:
    """An Accelerator on this process's Accelerate state (device, processes, mixed precision).

    Accelerate keeps one state per process and cannot change its mixed precision once set. None takes that
    precision when the state is set, else Accelerate's environment (`accelerate launch --mixed_precision`,
    ACCELERATE_MIXED_PRECISION), else "no". Asking for another precision than the state's raises ValueError
    instead of resetting Accelerate's internals. Accelerator objects are cheap: each shares the state, so
    callers may make one per run (or per fine-tune) to keep prepared optimizers and loss scalers apart.
    """
    from accelerate.state import AcceleratorState, is_initialized

    if is_initialized():
        current = AcceleratorState().mixed_precision
        if mixed_precision is not None and mixed_precision != current:
            raise ValueError(
                f"this process already runs Accelerate with mixed precision '{current}' (from an earlier run, "
                f"`accelerate launch --mixed_precision` or ACCELERATE_MIXED_PRECISION), and Accelerate cannot "
                f"change it within a process: use mixed_precision=None (follow it) or '{current}', or run the "
                f"'{mixed_precision}' run in a new process"
            )
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)


def is_main_process() -> bool:
    """True in a plain process and on the main process under `accelerate launch`: the one that writes shared
    outputs (the model folder, result.json) and prints summaries."""
    from accelerate import PartialState

    return PartialState().is_main_process
