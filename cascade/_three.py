"""Exact threshold search for 3-model cascades (tiny -> little -> big), in chunks (docs/method.md §9).

Why the optimum is found. Every sample's route depends on (t0, t1) only through which side of each
threshold its own confidences fall: t in (g[j-1], g[j]] of a stage's sorted distinct observed confidences
g (with 0 and 1 added, see _grid._exact_grid) lets exactly the samples with confidence >= g[j] exit,
since no observed confidence lies strictly between g[j-1] and g[j]. So every pair (t0, t1) in [0, 1]^2
routes the calibration samples exactly as the grid pair (g0[j0], g1[j1]) that represents its two cells,
and gives the same correct count, disagreement count, early-exit count and cost. The objectives of
calibrate and report_table (feasibility from those counts, then the lowest cost, the largest correct count,
the largest thresholds) are therefore optimal over [0, 1]^2 when optimal over the product of the two exact
grids, and that product is what is evaluated here, every pair, with integer counts (no approximation).

How. For a stage-0 index j0 the samples reaching stage 1 are R(j0) = {b0 <= j0} (b = number of grid
values <= the sample's confidence). A 2-D histogram over (b0, b1) with a cumulative sum over b0 gives, for
all j0 at once, the histogram over b1 of R(j0); a suffix sum over b1 then gives, for every j1, the samples
of R(j0) that exit at stage 1 (b1 > j1), their correct and disagreement counts. Rows of j0 are handled a
chunk at a time with the running total of earlier rows carried over, so time is O(n log n + G0 * G1) and
memory O(CHUNK_CELLS) whatever n is: with every confidence distinct, G ~ n, about n^2 cells (n = 5000:
25M cells, 1-2 s on one CPU core; n = 10000: about 4x that).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ._grid import _Candidates, _exact_grid, _suffix

CHUNK_CELLS = 1 << 20  # threshold pairs evaluated at once: bounds memory to a few tens of MB


def three_stage_chunks(
    conf: torch.Tensor, correct: torch.Tensor, costs: Sequence[float]
) -> Iterator[tuple[int, _Candidates]]:
    """(flat offset, candidates) for every (t0, t1) of the exact grids, a block of t0 rows at a time.

    Flat index j0 * G1 + j1, the C order of the whole product, so ties break as one evaluation would.
    Counts are int32 (n < 2**31): half the memory traffic of int64 on these n^2-cell arrays.
    """
    n = conf.shape[1]
    g0, g1 = _exact_grid(conf[0]), _exact_grid(conf[1])
    size0, size1 = g0.numel(), g1.numel()
    b0 = torch.searchsorted(g0, conf[0], right=True)  # stage 0: exits under j0 iff j0 < b0
    b1 = torch.searchsorted(g1, conf[1], right=True)
    right, differ = correct.int(), (correct != correct[-1]).int()
    ones = torch.ones(n, dtype=torch.int32)

    # Per j0: what exits at stage 0 (b0 > j0) and the big model's correct count over all of R(j0) (b0 <= j0).
    h0 = torch.zeros(4, size0 + 1, dtype=torch.int32).index_add_(
        1, b0, torch.stack([ones, right[0], differ[0], right[2]])
    )
    exit0, right0, differ0 = _suffix(h0[:3], 1)
    big_reach = h0[3].cumsum(0, dtype=torch.int32)[:size0]

    # Stage-1 weights of a sample that reaches it: count, (stage-1 correct - big correct), disagreement.
    # Answered at stage 1 it adds right[1], at stage 2 right[2]: correct = right0 + big_reach + sum of the gains.
    w1 = torch.stack([ones, right[1] - right[2], differ[1]])
    order = torch.argsort(b0, stable=True)
    sorted_b0 = b0[order]
    carry = torch.zeros(3, 1, size1 + 1, dtype=torch.int32)  # histogram over b1 of the samples with b0 < row
    rows = max(1, CHUNK_CELLS // (size1 + 1))
    for lo in range(0, size0, rows):
        hi = min(lo + rows, size0)
        first, last = torch.searchsorted(sorted_b0, torch.tensor([lo, hi])).tolist()
        idx = order[first:last]  # samples whose b0 is in [lo, hi): they join R at row b0
        flat = (b0[idx] - lo) * (size1 + 1) + b1[idx]
        hist = torch.zeros(3, (hi - lo) * (size1 + 1), dtype=torch.int32).index_add_(1, flat, w1[:, idx])
        hist = hist.view(3, hi - lo, size1 + 1).cumsum(1, dtype=torch.int32) + carry  # row r: histogram of R(lo + r)
        carry = hist[:, -1:]
        stage0 = (exit0[lo:hi], right0[lo:hi] + big_reach[lo:hi], differ0[lo:hi])
        yield lo * size1, _chunk(g0[lo:hi], g1, hist, stage0, n, costs)


def _chunk(
    g0: torch.Tensor,
    g1: torch.Tensor,
    hist: torch.Tensor,
    stage0: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    n: int,
    costs: Sequence[float],
) -> _Candidates:
    """Counts of every (row, j1) pair from the reach histograms (3 x rows x (G1 + 1)) of those rows.

    stage0: per row, the samples exiting at stage 0, the correct count if no sample reaching stage 1 exited
    there (stage-0 correct + big correct over the rest), and the stage-0 disagreements."""
    # Samples of R with b1 > j1 exit at stage 1: row total minus the prefix up to j1 (no flipped copies).
    prefix = hist.cumsum(2, dtype=torch.int32)
    exit1, gain1, differ1 = (prefix[:, :, -1:] - prefix[:, :, :-1]).unbind(0)
    exit0, base_right, differ0 = (t[:, None] for t in stage0)
    exit2 = n - exit0 - exit1
    # Sum over samples of the cost of the models each ran, with the terms added in the order of
    # CascadeStats.avg_cost and _grid_candidates, so equal routings give bit-equal costs.
    cost = (n * float(costs[0]) + (n - exit0).double() * costs[1]) + exit2.double() * costs[2]
    exits = torch.stack([exit0.expand_as(exit1), exit1, exit2])
    return _Candidates([g0, g1], base_right + gain1, differ0 + differ1, exits, cost)
