"""Top-1 / top-5 accuracy of a model or a cascade over a loader, and throughput in images per second."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import cascade

from .data import dataset_classes
from .progress import progress as progress_bar


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | None = None, progress: bool = True) -> dict:
    """{'top1', 'top5', 'n'} of `model` over (images, labels) batches."""
    device = device or next(model.parameters()).device
    model.eval()
    correct1, correct5, n = _top_counts(model, loader, device, progress)
    if n == 0:
        raise ValueError("evaluate got no images from the loader; accepted: a loader of (images, labels) batches")
    return {"top1": correct1 / n, "top5": correct5 / n, "n": n}


@torch.no_grad()
def evaluate_cascade(model: cascade.Cascade, loader, progress: bool = True) -> dict:
    """top1, top5, n, per-member exit fractions, MACs per image and the MACs reduction vs the last member."""
    model.eval().reset_stats()
    correct1, correct5, _ = _top_counts(model, loader, next(model.parameters()).device, progress)
    stats = model.total_stats
    if stats.n == 0:
        raise ValueError("the loader gave no images to evaluate the cascade on")
    big = model.costs[-1] if model.costs else 0
    return {
        "top1": correct1 / stats.n,
        "top5": correct5 / stats.n,
        "n": stats.n,
        "exit_fractions": list(stats.exit_ratios),
        "macs_per_image": stats.avg_cost,
        "macs_reduction": 1.0 - stats.avg_cost / big if big > 0 and stats.avg_cost is not None else None,
        "members": [m.name for m in model.spec.members] if model.spec is not None else None,
    }


def _top_counts(model: nn.Module, loader, device, progress: bool) -> tuple[int, int, int]:
    """(top-1 right, top-5 right, images) of `model` over (images, labels) batches."""
    correct1 = correct5 = n = 0
    for x, y in progress_bar(loader, "evaluating", enabled=progress):
        logits = model(x.to(device))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        n += len(y)
    return correct1, correct5, n


@torch.no_grad()
def output_classes(model: nn.Module) -> int:
    """How many classes `model` predicts, from one forward pass (any architecture, timm or not)."""
    from .macs import default_input_size

    param = next(model.parameters(), None)
    x = torch.zeros(1, *default_input_size(model), device=param.device if param is not None else "cpu")
    return int(model.eval()(x).shape[-1])


def check_classes(model: nn.Module, dataset: Dataset, spec: str, name: str = "the model") -> str | None:
    """Refuse a dataset with more classes than the model predicts: its extra labels could never be right,
    so the accuracy would be silently meaningless (12 classes on a 10-class model scores about 8%). An image
    folder's classes are then matched to the model's (dcvit.labels: by name where the model records names);
    the match in one line is returned, for the caller's output (None: the dataset's own labels)."""
    from .labels import align_classes

    have, need = output_classes(model), dataset_classes(dataset)
    if need > have:
        raise ValueError(f"dataset {spec} has {need} classes but {name} predicts {have}; use a dataset of its classes")
    return align_classes(model, dataset, spec, have)


def loader_for(dataset: Dataset, batch_size: int = 256, limit: int | None = None) -> DataLoader:
    """A plain, ordered loader; `limit` keeps the first images (a fixed subset, not a random one)."""
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


# A split whose images take at most this many bytes is decoded once and kept as batches (eval_batches).
IN_MEMORY_BYTES = 1 << 30


def eval_batches(dataset: Dataset, batch_size: int = 256, limit: int | None = None) -> DataLoader | list:
    """The batches of loader_for(dataset, batch_size, limit), made once and kept in memory when the images fit
    in IN_MEMORY_BYTES, else the loader itself. Several models evaluated on one split then share one pass of
    decoding and transforms (per image, this costs more than a small model's forward pass); the batches are
    the same tensors the loader gives, so every result is the same."""
    loader = loader_for(dataset, batch_size, limit)
    images = len(loader.dataset)  # type: ignore[arg-type]
    first = loader.dataset[0][0] if images else None
    if isinstance(first, torch.Tensor) and first.numel() * first.element_size() * images <= IN_MEMORY_BYTES:
        return list(loader)
    return loader


@torch.no_grad()
def throughput(model: nn.Module, input_size, batch_size: int = 256, seconds: float = 2.0) -> float:
    """Images per second of forward passes on random input (after one warm-up pass)."""
    from .accel import synchronize

    model.eval()
    x = torch.randn(batch_size, *input_size, device=next(model.parameters()).device)
    model(x)
    synchronize(x.device)  # a GPU computes asynchronously: time finished passes only
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or images == 0:
        model(x)
        synchronize(x.device)
        images += batch_size
    return images / (time.perf_counter() - start)
