"""Vectorised evaluation of threshold grids on cached confidences (docs/method.md §9).

The engine behind sweep, calibrate and report_table: every threshold tuple of a product of per-stage
grids is evaluated at once from a histogram and cumulative sums, never by re-running a model or
looping over samples. Confidences are float32 and a sample exits when confidence >= t, as in Cascade.

Which thresholds are searched (`search`): 2 and 3 models, every tuple of the exact grids (all observed
confidences, see _exact_grid; the 3-model product is walked in chunks by cascade._three, so memory stays
small); 4 and more models, a product of per-stage grids of at most grid_size + 2 values each, coarser where
the product would pass MAX_CANDIDATES tuples (see stage_grid_size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch

from ._grid import _Candidates, _exact_grid, _grid_candidates, _stage_grid
from ._three import three_stage_chunks
from .routing import CascadeStats


def _min_correct(big_correct: int, max_acc_drop: float, n: int) -> int:
    # Integer counts avoid float noise such as 0.95 - 0.01 < 0.94; the epsilon absorbs drop * n rounding.
    return math.ceil(big_correct - max_acc_drop * n - 1e-9)


def _lower_bound(gain: torch.Tensor, differ: torch.Tensor, n: int, confidence: float) -> torch.Tensor:
    """One-sided lower confidence bound on (cascade accuracy - big accuracy) from paired per-sample outcomes.

    Per sample the two are both right, both wrong, or one right and the other wrong: a paired 2 x 2 table
    whose off-diagonal cells hold W (cascade right, big wrong) and L (the reverse); gain = W - L and
    differ = W + L. An adjusted Wald bound: half a sample is added to each cell (Agresti and Min's
    adjustment for paired proportions), so that few or no disagreements never read as certainty; the bound
    is then diff - z * sqrt(var) with diff = gain / (n + 2) and var = ((differ + 1) / (n + 2) - diff^2) / (n + 2).
    """
    z = NormalDist().inv_cdf(confidence)
    m = n + 2.0
    diff = gain.double() / m
    var = ((differ.double() + 1.0) / m - diff * diff).clamp_min(0.0) / m
    return diff - z * var.sqrt()


def _feasible(
    correct: torch.Tensor,
    differ: torch.Tensor,
    early: torch.Tensor,
    big_correct: int,
    n: int,
    max_acc_drop: float,
    confidence: float | None,
) -> torch.Tensor:
    """Which operating points keep accuracy within max_acc_drop of the big model: as measured (confidence
    None), or with that one-sided confidence given the split's size (see _lower_bound). correct, differ and
    early (samples answered before the last stage) are counts of any one shape; a point where nothing exits
    early is the big model itself, lossless without any evidence."""
    if confidence is None:
        return correct >= _min_correct(big_correct, max_acc_drop, n)
    return (_lower_bound(correct - big_correct, differ, n, confidence) >= -max_acc_drop) | (early == 0)


@dataclass(frozen=True)
class Query:
    """One question to the search: among the operating points `feasible` accepts, the cheapest (ties: more
    accurate), or with most_accurate the most accurate (ties: cheaper); remaining ties go to the largest
    thresholds, compared stage by stage from the first (on unseen data a larger threshold lets fewer
    samples exit early, the safer side). feasible maps a _Candidates to a boolean mask of its shape."""

    feasible: Callable[[_Candidates], torch.Tensor]
    most_accurate: bool = False


def tolerance_query(big_correct: int, n: int, max_acc_drop: float, confidence: float | None) -> Query:
    """The cheapest point within max_acc_drop of the big model (calibrate's rule, see _feasible)."""

    def feasible(c: _Candidates) -> torch.Tensor:
        return _feasible(c.correct, c.differ, n - c.exits[-1], big_correct, n, max_acc_drop, confidence)

    return Query(feasible)


BEST_ACCURACY = Query(lambda c: torch.ones_like(c.correct, dtype=torch.bool), most_accurate=True)


def search(
    conf: torch.Tensor, correct: torch.Tensor, costs: Sequence[float], queries: Sequence[Query], grid_size: int = 100
) -> list[tuple[float, ...] | None]:
    """The thresholds answering each query (None when no point is feasible), from one pass over the
    candidates: they come in chunks, each chunk's best point per query is compared with the best so far by
    (cost, -correct, -flat index) or (-correct, cost, -flat index), flat index in C order over the whole
    product of grids. Those keys do not depend on how the product is cut into chunks, so the answer is the
    one a single evaluation of the whole product would give."""
    best: list[tuple[tuple, tuple[float, ...]] | None] = [None] * len(queries)
    for offset, cands in _chunks(conf, correct, costs, grid_size):
        for q, query in enumerate(queries):
            found = _best_in(cands, query.feasible(cands), query.most_accurate, offset)
            if found is not None and (best[q] is None or found[0] < best[q][0]):
                best[q] = (found[0], cands.thresholds(found[1]))
    return [None if b is None else b[1] for b in best]


# 4 and more models: the product of per-stage grids is evaluated at once, several int64 tensors of its size, so
# it is held to this many threshold tuples (about 0.5 GB at the peak) by coarser grids where needed.
MAX_CANDIDATES = 2**21


def stage_grid_size(n_stages: int, grid_size: int) -> int:
    """grid_size, or less where (grid_size + 2) ** (n_stages - 1) tuples would pass MAX_CANDIDATES (4 models
    keep 100; 5 get 36, 6 get 16); more models than even grids of 2 quantiles allow are a ValueError."""
    free = n_stages - 1
    size = grid_size
    while size > 2 and (size + 2) ** free > MAX_CANDIDATES:
        size -= 1
    if (size + 2) ** free > MAX_CANDIDATES:
        most = 1 + max(k for k in range(1, 64) if 4**k <= MAX_CANDIDATES)
        raise ValueError(
            f"cannot search thresholds for {n_stages} models: even 2 quantiles per stage make more than "
            f"{MAX_CANDIDATES:,} threshold tuples; accepted: at most {most} models"
        )
    return size


def _chunks(conf: torch.Tensor, correct: torch.Tensor, costs: Sequence[float], grid_size: int):
    """(flat offset, _Candidates) pieces of the search space (see the module docstring)."""
    n_stages = conf.shape[0]
    if n_stages == 3:
        yield from three_stage_chunks(conf, correct, costs)
        return
    if n_stages == 2:
        grids = [_exact_grid(conf[0])]
    else:
        size = stage_grid_size(n_stages, grid_size)  # memory bounded: coarser grids for 5 and more models
        grids = [_stage_grid(conf[i], size) for i in range(n_stages - 1)]
    yield 0, _grid_candidates(conf, correct, costs, grids)


def _best_in(cands: _Candidates, feasible: torch.Tensor, most_accurate: bool, offset: int) -> tuple[tuple, int] | None:
    """(ordering key, flat index within cands) of the best feasible candidate of one chunk, or None."""
    correct, cost = cands.correct.flatten(), cands.cost.flatten()
    ok = feasible.flatten()
    if not bool(ok.any()):
        return None
    if most_accurate:
        top = correct[ok].max()
        ok = ok & (correct == top)
        low = cost[ok].min()
        ok &= cost == low
    else:
        low = cost[ok].min()
        ok = ok & (cost == low)
        top = correct[ok].max()
        ok &= correct == top
    k = int(ok.nonzero().max())  # grids ascend, so the largest index has the largest thresholds
    first = (-int(top), float(low)) if most_accurate else (float(low), -int(top))
    return (*first, -(offset + k)), k


def _evaluate(
    conf: torch.Tensor, correct: torch.Tensor, costs: Sequence[float] | None, thresholds: Sequence[float]
) -> tuple[int, int, CascadeStats]:
    """Correct count, disagreement count with the big model and statistics of fixed thresholds,
    vectorised over samples (loop over stages only)."""
    n_stages, n = conf.shape
    stage = torch.full((n,), n_stages - 1, dtype=torch.long)
    for i in reversed(range(n_stages - 1)):  # reversed so the earliest confident stage wins
        stage = torch.where(conf[i] >= thresholds[i], i, stage)
    answered = correct.gather(0, stage[None])[0]
    n_correct, n_differ = int(answered.sum()), int((answered != correct[-1]).sum())
    return n_correct, n_differ, CascadeStats.from_counts(torch.bincount(stage, minlength=n_stages).tolist(), costs)
