"""Input validation shared by the cascade modules (METHOD.md §9).

Every check raises ValueError with one line saying what was wrong and what is accepted, so a
mistyped threshold list fails at construction time instead of silently routing everything to one model.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def _as_float(value: object, what: str) -> float:
    try:
        return float(value)  # accepts ints, floats, numpy scalars and 0-d tensors
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None


def check_thresholds(thresholds: Sequence[float], n_models: int) -> tuple[float, ...]:
    """One threshold per model except the last, each in [0, 1] (a sample exits when confidence >= t)."""
    try:
        values = list(thresholds)
    except TypeError:
        raise ValueError(f"thresholds must be a sequence of numbers in [0, 1], got {thresholds!r}") from None
    if len(values) != n_models - 1:
        raise ValueError(f"need len(models) - 1 = {n_models - 1} thresholds (the last model always answers), "
                         f"got {len(values)}")
    out = []
    for i, t in enumerate(values):
        t = _as_float(t, f"thresholds[{i}]")
        if not 0.0 <= t <= 1.0:  # also rejects NaN
            raise ValueError(f"thresholds[{i}]={t!r} is outside [0, 1]; accepted: 0 <= t <= 1 "
                             f"(a sample exits when its confidence >= t)")
        out.append(t)
    return tuple(out)


def check_costs(costs: Sequence[float] | None, n_models: int, *, required: bool = False) -> tuple[float, ...] | None:
    """One non-negative, finite cost (MACs per sample) per model, cheapest stage first."""
    if costs is None:
        if required:
            raise ValueError(f"costs are required: one non-negative number (MACs per sample) per model, "
                             f"{n_models} in all")
        return None
    try:
        values = list(costs)
    except TypeError:
        raise ValueError(f"costs must be a sequence of non-negative numbers, got {costs!r}") from None
    if len(values) != n_models:
        raise ValueError(f"need one cost per model ({n_models}), got {len(values)}")
    out = []
    for i, c in enumerate(values):
        c = _as_float(c, f"costs[{i}]")
        if not (math.isfinite(c) and c >= 0.0):
            raise ValueError(f"costs[{i}]={c!r} is not allowed; accepted: finite numbers >= 0 (MACs per sample)")
        out.append(c)
    return tuple(out)


def check_big_cost(costs: tuple[float, ...]) -> float:
    """The last (big) model's cost, which reports divide by, so it must be > 0."""
    if costs[-1] <= 0.0:
        raise ValueError(f"the big (last) model's cost must be > 0 to express savings relative to it, "
                         f"got {costs[-1]!r}")
    return costs[-1]


def check_fraction(value: float, what: str) -> float:
    v = _as_float(value, what)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what}={v!r} is outside [0, 1]; accepted: a fraction, e.g. 0.01 for one accuracy point")
    return v


def check_confidence(confidence: float | None) -> float | None:
    if confidence is None:
        return None
    if isinstance(confidence, bool):
        raise ValueError(f"confidence={confidence!r} is not a level; accepted: None or a number in [0.5, 1)")
    c = _as_float(confidence, "confidence")
    if not 0.5 <= c < 1.0:
        raise ValueError(f"confidence={c!r} is outside [0.5, 1); accepted: None (compare measured accuracies) "
                         f"or a one-sided confidence level such as 0.95")
    return c


def check_grid_size(grid_size: int) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2 (threshold values per stage), got {grid_size!r}")
    return grid_size


def check_probs(probs: torch.Tensor, what: str = "probs") -> torch.Tensor:
    """An N x K matrix of class probabilities, returned as float32 on the CPU.

    float32 is the precision Cascade computes its confidences in, so calibration compares thresholds
    exactly as routing will.
    """
    probs = torch.as_tensor(probs)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"{what} must be an N x K matrix of class probabilities, got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor of probabilities, got dtype {probs.dtype}")
    probs = probs.detach().to("cpu", torch.float32)
    if not torch.isfinite(probs).all():
        raise ValueError(f"{what} contains NaN or inf; accepted: finite probabilities (softmax outputs)")
    return probs


def check_labels(labels: torch.Tensor, n: int, what: str = "labels") -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{what} must be a 1-D tensor with one class index per sample ({n}), "
                         f"got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer class indices, got dtype {labels.dtype}")
    return labels.detach().to("cpu", torch.long)


def check_stage_probs(stage_probs: Sequence[torch.Tensor], labels: torch.Tensor, *, min_stages: int = 1,
                      what: str = "stage_probs") -> tuple[list[torch.Tensor], torch.Tensor]:
    """A list of N x K probability matrices (cheapest model first, big model last) plus N labels."""
    if isinstance(stage_probs, torch.Tensor):
        raise ValueError(f"{what} must be a list of N x K tensors, one per model (cheapest first), got one tensor")
    probs = [check_probs(p, f"{what}[{i}]") for i, p in enumerate(stage_probs)]
    if len(probs) < min_stages:
        raise ValueError(f"{what} needs at least {min_stages} models (cheapest first, big last), got {len(probs)}")
    shapes = {tuple(p.shape) for p in probs}
    if len(shapes) != 1:
        raise ValueError(f"all {what} must have the same N x K shape, got {sorted(shapes)}")
    n = probs[0].shape[0]
    if n == 0:
        raise ValueError(f"{what} has no samples; accepted: at least one sample")
    return probs, check_labels(labels, n)


def conf_correct(probs: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage confidences (S x N float32 max-softmax) and correctness (S x N bool) of each stage's argmax."""
    conf = torch.stack([p.max(dim=1).values for p in probs])
    correct = torch.stack([p.argmax(dim=1) == labels for p in probs])
    return conf, correct
