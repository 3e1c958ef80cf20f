"""Run a model once over a loader and cache its softmax outputs (docs/method.md §9).

Threshold sweeps, calibration and saver selection all work on these cached tensors, so choosing a
threshold never re-runs a network.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn


class Recorded(NamedTuple):
    """probs: N x K float32 softmax probabilities on the CPU; labels: N long."""

    probs: torch.Tensor
    labels: torch.Tensor


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def record(
    model: nn.Module, loader: Iterable, device: torch.device | str | None = None, progress: bool = True
) -> Recorded:
    """Softmax probabilities and labels of `model` over a loader of (x, y) batches.

    Runs under torch.no_grad() in eval mode and restores the model's previous mode afterwards.
    device: where inputs are sent; default: the device of the model's first parameter (CPU if none).
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    probs, labels = [], []
    batches = loader
    if progress:
        from tqdm.auto import tqdm  # imported only when a bar is wanted: cascade otherwise needs torch only

        batches = tqdm(loader, desc="record", leave=False)
    try:
        with torch.no_grad():
            for batch in batches:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError(f"record expects a loader of (x, y) batches, got {type(batch).__name__}")
                x, y = batch[0], batch[1]
                logits = model(x.to(dev, non_blocking=True))
                # float32 softmax, exactly as Cascade computes confidences, so thresholds transfer.
                probs.append(torch.softmax(logits.float(), dim=-1).cpu())
                labels.append(torch.as_tensor(y).long().cpu())
    finally:
        model.train(was_training)
    if not probs:
        raise ValueError("record got an empty loader; accepted: a loader yielding at least one (x, y) batch")
    return Recorded(torch.cat(probs), torch.cat(labels))
