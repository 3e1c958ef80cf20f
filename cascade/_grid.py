"""Threshold grids and the vectorised evaluation of every threshold tuple of a product of grids
(docs/method.md §9): the primitives cascade._search (which tuples to search) and cascade._three (the exact
3-model walk) share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _exact_grid(conf: torch.Tensor) -> torch.Tensor:
    # Accuracy and cost only change where t crosses an observed confidence, so the distinct observed
    # values (plus the end points 0 and 1) reach every achievable operating point; a finer grid cannot
    # find anything better and a coarser one can miss the optimum.
    return torch.unique(torch.cat([conf, conf.new_tensor([0.0, 1.0])]))


def _stage_grid(conf: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Exact grid when it has at most grid_size + 2 values, else grid_size quantiles plus 0 and 1."""
    grid = _exact_grid(conf)
    if grid.numel() <= grid_size + 2:
        return grid
    # Too many distinct values for a product search: observed quantiles keep points where samples are.
    q = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
    picked = torch.quantile(conf.double(), q, interpolation="lower").float()
    return torch.unique(torch.cat([picked, conf.new_tensor([0.0, 1.0])]))


def _suffix(t: torch.Tensor, dim: int) -> torch.Tensor:
    """out[..., j, ...] = sum of t[..., b, ...] over b > j along dim (length shrinks by one)."""
    rev = t.flip(dim).cumsum(dim).flip(dim)  # rev[b] = sum over indices >= b
    return rev.narrow(dim, 1, t.shape[dim] - 1)


def _prefix(t: torch.Tensor, dims: range) -> torch.Tensor:
    """out[..., j, ...] = sum of t[..., b, ...] over b <= j along each dim in dims (length shrinks by one)."""
    for d in dims:
        t = t.cumsum(d).narrow(d, 0, t.shape[d] - 1)
    return t


@dataclass(frozen=True)
class _Candidates:
    """Every threshold tuple of the product of per-stage grids (grids[i]: stage i, ascending), with its
    correct count, per-stage exit counts, total cost (sum over samples) and disagreement count (samples
    whose answering model is right where the big model is wrong or the reverse), all of shape
    G_0 x ... x G_{S-2}."""

    grids: list[torch.Tensor]
    correct: torch.Tensor  # integer counts (int64; int32 from cascade._three)
    differ: torch.Tensor  # integer counts
    exits: torch.Tensor  # integer counts, S x G_0 x ... x G_{S-2}
    cost: torch.Tensor  # float64

    def thresholds(self, k: int) -> tuple[float, ...]:
        """Thresholds of the candidate at flat (C-order) index k."""
        out = []
        for g in reversed(self.grids):
            k, j = divmod(k, g.numel())
            out.append(float(g[j]))
        return tuple(reversed(out))


def _grid_candidates(
    conf: torch.Tensor, correct: torch.Tensor, costs: Sequence[float], grids: list[torch.Tensor]
) -> _Candidates:
    """Evaluate every threshold tuple in the product of grids at once, in O(N + prod(G_i)).

    With b_i = #(grid_i values <= conf_i), threshold grids[i][j] lets a sample exit at stage i iff
    j < b_i. A sample answered by stage i under tuple (j_0, ...) therefore has b_k <= j_k for all
    k < i and b_i > j_i: prefix sums over the earlier axes and a suffix sum over axis i of a histogram of
    (b_0, ..., b_i) count them for all tuples together; no loop over samples or thresholds.
    """
    n_stages, n = conf.shape
    free = n_stages - 1
    sizes = [g.numel() for g in grids]
    bins = [torch.searchsorted(grids[i], conf[i], right=True) for i in range(free)]  # 0..G_i
    exits, right, differ = [], [], []
    for i in range(n_stages):
        axes = min(i + 1, free)  # the last stage is decided by the earlier axes only
        shape = [size + 1 for size in sizes[:axes]]
        flat = torch.zeros(n, dtype=torch.long)
        for a in range(axes):
            flat = flat * shape[a] + bins[a]
        per_stage = []
        weights = (torch.ones(n, dtype=torch.long), correct[i].long(), (correct[i] != correct[-1]).long())
        for weight in weights:
            hist = torch.zeros(math.prod(shape), dtype=torch.long).index_add_(0, flat, weight).view(shape)
            if i < free:
                hist = _suffix(_prefix(hist, range(i)), i)
            else:
                hist = _prefix(hist, range(free))
            per_stage.append(hist.reshape(hist.shape + (1,) * (free - hist.ndim)).expand(sizes))
        exits.append(per_stage[0])
        right.append(per_stage[1])
        differ.append(per_stage[2])
    # Sum of (samples reaching stage i) x cost_i, in the same order as CascadeStats.avg_cost.
    cost = torch.zeros(sizes, dtype=torch.float64)
    reach = torch.full(sizes, n, dtype=torch.long)
    for i in range(n_stages):
        cost = cost + reach.double() * costs[i]
        reach = reach - exits[i]
    return _Candidates(list(grids), torch.stack(right).sum(0), torch.stack(differ).sum(0), torch.stack(exits), cost)
