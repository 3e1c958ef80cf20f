"""Input validation shared by the cascade modules (docs/method.md §9).

Every check raises ValueError with one line saying what was wrong and what is accepted, so a
mistyped threshold list fails at construction time instead of silently routing everything to one model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn


def _describe(value: object) -> str:
    # A tensor's repr can span many lines; the messages here must stay on one.
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = " ".join(repr(value).split())  # numpy arrays and other objects may print on several lines too
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _as_float(value: object, what: str) -> float:
    """A real number: ints, floats, numpy scalars and one-element real tensors.

    float() alone would also take True (read as 1.0) and strings such as "0.5": both are almost always a
    mistake upstream, so they are refused rather than silently converted.
    """
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"{what} must be a real number (not bool or str), got {_describe(value)}")
    return float(value)


def check_thresholds(thresholds: Sequence[float], n_models: int) -> tuple[float, ...]:
    """One threshold per model except the last, each in [0, 1] (a sample exits when confidence >= t)."""
    try:
        if isinstance(thresholds, (str, bytes)):
            raise TypeError  # iterable, but its characters are not thresholds
        values = list(thresholds)
    except TypeError:
        raise ValueError(f"thresholds must be a sequence of numbers in [0, 1], got {_describe(thresholds)}") from None
    if len(values) != n_models - 1:
        raise ValueError(
            f"need len(models) - 1 = {n_models - 1} thresholds (the last model always answers), got {len(values)}"
        )
    out = []
    for i, t in enumerate(values):
        t = _as_float(t, f"thresholds[{i}]")
        if not (math.isfinite(t) and 0.0 <= t <= 1.0):
            problem = "is outside [0, 1]" if math.isfinite(t) else "is not finite"
            raise ValueError(
                f"thresholds[{i}]={t!r} {problem}; accepted: finite numbers 0 <= t <= 1 "
                f"(a sample exits when its confidence >= t)"
            )
        out.append(t)
    return tuple(out)


def check_costs(costs: Sequence[float] | None, n_models: int, *, required: bool = False) -> tuple[float, ...] | None:
    """One non-negative, finite cost (MACs per sample) per model, cheapest stage first."""
    if costs is None:
        if required:
            raise ValueError(
                f"costs are required: one non-negative number (MACs per sample) per model, {n_models} in all"
            )
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
        raise ValueError(
            f"the big (last) model's cost must be > 0 to express savings relative to it, got {costs[-1]!r}"
        )
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
        raise ValueError(
            f"confidence={c!r} is outside [0.5, 1); accepted: None (compare measured accuracies) "
            f"or a one-sided confidence level such as 0.95"
        )
    return c


def check_risk(delta: float) -> float:
    """delta of a guarantee: the chance, over the calibration draw, that the promise fails."""
    d = _as_float(delta, "delta")
    if not 0.0 < d < 1.0:
        raise ValueError(f"delta={d!r} is outside (0, 1); accepted: a risk such as 0.05 (the promise holds with 95%)")
    return d


def check_grid_size(grid_size: int) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2 (threshold values per stage), got {grid_size!r}")
    return grid_size


def check_probs(probs: torch.Tensor, what: str = "probs") -> torch.Tensor:
    """An N x K matrix of class probabilities (softmax outputs), returned as float32 on the CPU.

    float32 is the precision Cascade computes its confidences in, so calibration compares thresholds
    exactly as routing will.
    """
    probs = torch.as_tensor(probs)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"{what} must be an N x K matrix of class probabilities, got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor of probabilities, got dtype {probs.dtype}")
    # Rounding each entry moves a row sum by up to eps / 2 of the stored dtype (bfloat16: 0.004).
    tol = max(1e-3, torch.finfo(probs.dtype).eps)
    probs = probs.detach().to("cpu", torch.float32)
    if not torch.isfinite(probs).all():
        raise ValueError(f"{what} contains NaN or inf; accepted: finite probabilities (softmax outputs)")
    _check_simplex(probs, what, tol)
    return probs


def _check_simplex(probs: torch.Tensor, what: str, tol: float) -> None:
    # Logits pass every other check and then calibrate to meaningless thresholds (e.g. 60.0), so the
    # rows themselves must be distributions.
    if probs.numel() == 0:
        return
    lo, hi = probs.aminmax()
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{what} are not probabilities (values {float(lo):.3g} to {float(hi):.3g}, outside [0, 1]): "
            f"pass softmax outputs, not logits"
        )
    sums = probs.sum(dim=1, dtype=torch.float64)
    if bool(((sums - 1.0).abs() > tol).any()):
        raise ValueError(
            f"{what} are not probabilities (row sums {float(sums.min()):.3g}-{float(sums.max()):.3g}, "
            f"not 1 within {tol:g}): pass softmax outputs over the classes, not logits or scores"
        )


def check_labels(labels: torch.Tensor, n: int, what: str = "labels", num_classes: int | None = None) -> torch.Tensor:
    """n integer class indices, each in [0, num_classes) when num_classes is given."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{what} must be a 1-D tensor with one class index per sample ({n}), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.detach().to("cpu", torch.long)
    # An out-of-range label never matches an argmax: it would count as a silent error, not fail.
    if num_classes is not None and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{what} must be class indices in [0, {num_classes}) ({num_classes} probability "
                f"columns), got values {lo} to {hi}"
            )
    return labels


def check_stage_probs(
    stage_probs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    min_stages: int = 1,
    what: str = "stage_probs",
    labels_what: str = "labels",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A list of N x K probability matrices (cheapest model first, big model last) plus N labels in [0, K)."""
    if isinstance(stage_probs, torch.Tensor):
        raise ValueError(f"{what} must be a list of N x K tensors, one per model (cheapest first), got one tensor")
    probs = [check_probs(p, f"{what}[{i}]") for i, p in enumerate(stage_probs)]
    if len(probs) < max(min_stages, 1):
        raise ValueError(f"{what} needs at least {min_stages} models (cheapest first, big last), got {len(probs)}")
    n, k = probs[0].shape
    for i, p in enumerate(probs[1:], start=1):
        if p.shape[0] != n:
            raise ValueError(
                f"{what}[{i}] has {p.shape[0]} rows but {what}[0] has {n}; "
                f"every model must score the same samples, in the same order"
            )
        if p.shape[1] != k:
            raise ValueError(
                f"{what}[{i}] has {p.shape[1]} classes but {what}[0] has {k}; all models must share the label space"
            )
    if n == 0:
        raise ValueError(f"{what} has no samples; accepted: at least one sample")
    return probs, check_labels(labels, n, labels_what, num_classes=k)


def declared_classes(model: nn.Module) -> tuple[int, str] | None:
    """The class count a model declares, with where it was read, or None when it cannot be told.

    Sources: a positive int `num_classes`, the model itself if it is an nn.Linear, or out_features of a
    final Linear `head` / `heads` / `fc` / `classifier` (or the last layer of such an nn.Sequential).
    When num_classes and that layer disagree (e.g. a head replaced for fine-tuning without updating
    num_classes), the model is ambiguous and counts as unknown.
    """
    found = []
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:  # timm uses 0 for "no classifier"
        found.append((n, "num_classes"))
    layer, where = (model, "out_features") if isinstance(model, nn.Linear) else _final_linear(model)
    if layer is not None:
        found.append((layer.out_features, where))
    if not found or len({count for count, _ in found}) > 1:
        return None
    return found[-1]


def _final_linear(model: nn.Module) -> tuple[nn.Linear | None, str]:
    for name in ("head", "heads", "fc", "classifier"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Sequential) and len(layer):
            layer, name = layer[-1], f"{name}[-1]"
        if isinstance(layer, nn.Linear):
            return layer, f"{name}.out_features"
    return None, ""


def check_model_classes(models: Sequence[nn.Module]) -> None:
    """Members that declare a class count must agree, so a mismatch fails at construction rather than on
    the first batch that reaches the odd one out; undeclared ones are checked on their logits in forward."""
    known = [(i, c) for i, m in enumerate(models) if (c := declared_classes(m)) is not None]
    for i, (n, where) in known[1:]:
        j, (n0, where0) = known[0]
        if n != n0:
            raise ValueError(
                f"models[{i}] has {n} classes ({where}) but models[{j}] has {n0} ({where0}); "
                f"all models must share the label space"
            )


def conf_correct(probs: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage confidences (S x N float32 max-softmax) and correctness (S x N bool) of each stage's argmax."""
    conf = torch.stack([p.max(dim=1).values for p in probs])
    correct = torch.stack([p.argmax(dim=1) == labels for p in probs])
    return conf, correct
