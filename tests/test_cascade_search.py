"""The exact 3-model threshold search (cascade/_three.py) against brute force over every threshold pair.

Brute force here shares no code with the search: each pair routes every sample one by one in plain Python,
over a grid finer than the search's (every observed confidence, the midpoints between neighbours, 0 and 1),
and picks with the rule written out: feasible, then cheapest, then most accurate, then the largest
thresholds stage by stage. A midpoint routes like the observed value above it, so an exact search must
return the very same thresholds. Small inputs (n = 30-60): runs in seconds on one CPU core.
"""

from __future__ import annotations

import math
import time
from statistics import NormalDist

import pytest
import torch

import cascade
import cascade._three


def three_stages(n: int, seed: int, k: int = 3, levels: int | None = None):
    """Probabilities of 3 models (later ones more accurate); levels rounds the confidences to that many
    steps, so many samples share a confidence and many operating points tie."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(k, (n,), generator=g)
    probs = []
    for s in range(3):
        logits = torch.randn(n, k, generator=g)
        logits[torch.arange(n), y] += (0.8 + 0.9 * s) * 2 * torch.rand(n, generator=g)
        p = torch.softmax(logits * (1 + s), 1)
        if levels is not None:  # the max entry rounded, the rest rescaled to keep a distribution
            top, arg = p.max(1)
            rounded = (top * levels).round().clamp(min=math.ceil(levels / k)) / levels
            rest = (1 - rounded) / (1 - top).clamp_min(1e-9)
            p = p * rest[:, None]
            p[torch.arange(n), arg] = rounded
        probs.append(p)
    return probs, y


def fine_grid(values: list[float]) -> list[float]:
    distinct = sorted(set(values) | {0.0, 1.0})
    return sorted(set(distinct) | {(a + b) / 2 for a, b in zip(distinct, distinct[1:])})


def outcomes(probs, y, costs, thresholds):
    """(correct, wins, losses, early, total cost) of one threshold pair, sample by sample."""
    confs = [p.max(1).values.tolist() for p in probs]
    right = [(p.argmax(1) == y).tolist() for p in probs]
    correct = wins = losses = early = 0
    cost = 0.0
    for i in range(len(y)):
        stage = 0 if confs[0][i] >= thresholds[0] else 1 if confs[1][i] >= thresholds[1] else 2
        cost += sum(costs[: stage + 1])
        correct += right[stage][i]
        wins += right[stage][i] and not right[2][i]
        losses += right[2][i] and not right[stage][i]
        early += stage < 2
    return correct, wins, losses, early, cost


def lower_bound(wins: int, losses: int, n: int, confidence: float) -> float:
    """Adjusted Wald bound on (cascade - big) accuracy, as in cascade.calibrate's docstring."""
    m = n + 2
    p12, p21 = (wins + 0.5) / m, (losses + 0.5) / m
    return p12 - p21 - NormalDist().inv_cdf(confidence) * math.sqrt(max(p12 + p21 - (p12 - p21) ** 2, 0) / m)


def brute_force(probs, y, costs, drop=None, confidence=None, best_accuracy=False):
    """The thresholds of the rule, by trying every pair of the fine grids."""
    n = len(y)
    big = int((probs[2].argmax(1) == y).sum())
    grids = [fine_grid(p.max(1).values.tolist()) for p in probs[:2]]
    best = None
    for t0 in grids[0]:
        for t1 in grids[1]:
            correct, wins, losses, early, cost = outcomes(probs, y, costs, (t0, t1))
            if best_accuracy:
                key = (-correct, cost, -t0, -t1)
            else:
                if confidence is None:
                    ok = correct >= big - drop * n - 1e-9
                else:
                    ok = lower_bound(wins, losses, n, confidence) >= -drop or early == 0
                if not ok:
                    continue
                key = (cost, -correct, -t0, -t1)
            if best is None or key < best[0]:
                best = (key, (t0, t1), correct, cost)
    return best


COSTS = {"integers": [1.0, 2.0, 3.0], "macs": [1.3e6, 4.1e6, 2.9e7]}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n,levels,costs", [(30, None, "macs"), (45, 8, "integers"), (60, 12, "macs")])
@pytest.mark.parametrize("drop", [0.0, 0.05])
def test_three_stage_calibrate_equals_brute_force(seed, n, levels, costs, drop):
    probs, y = three_stages(n, seed, levels=levels)
    key, thresholds, correct, cost = brute_force(probs, y, COSTS[costs], drop=drop)
    cal = cascade.calibrate(probs, y, COSTS[costs], max_acc_drop=drop)
    assert cal.thresholds == pytest.approx(thresholds, abs=0)  # the very same numbers
    assert cal.calib_accuracy == correct / n and cal.calib_avg_cost == pytest.approx(cost / n, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("confidence,drop", [(0.9, 0.05), (0.8, 0.02)])
def test_three_stage_confidence_rule_equals_brute_force(seed, confidence, drop):
    probs, y = three_stages(50, 10 + seed, levels=10)
    _, thresholds, correct, cost = brute_force(probs, y, COSTS["integers"], drop=drop, confidence=confidence)
    cal = cascade.calibrate(probs, y, COSTS["integers"], max_acc_drop=drop, confidence=confidence)
    assert cal.thresholds == thresholds and cal.calib_accuracy == correct / 50
    assert cal.calib_avg_cost == pytest.approx(cost / 50)


@pytest.mark.parametrize("seed", [4, 5])
def test_three_stage_report_table_equals_brute_force(seed):
    probs, y = three_stages(40, seed, levels=9)
    costs = COSTS["integers"]
    rows = cascade.report_table(probs, y, costs, drops=(0.05, 0.0))
    for row, drop in zip(rows[1:3], (0.05, 0.0)):
        found = brute_force(probs, y, costs, drop=drop)
        assert (row["thresholds"], row["feasible"]) == ((found[1], True) if found else (None, False))
    _, thresholds, correct, cost = brute_force(probs, y, costs, best_accuracy=True)
    assert rows[-1]["thresholds"] == thresholds and rows[-1]["accuracy"] == correct / 40


@pytest.mark.parametrize("chunk_cells", [1, 7, 100])
def test_answer_does_not_depend_on_how_the_pairs_are_chunked(monkeypatch, chunk_cells):
    probs, y = three_stages(45, 7, levels=8)
    whole = cascade.report_table(probs, y, COSTS["integers"], drops=(0.05, 0.02, 0.0))
    monkeypatch.setattr(cascade._three, "CHUNK_CELLS", chunk_cells)
    chunked = cascade.report_table(probs, y, COSTS["integers"], drops=(0.05, 0.02, 0.0))
    assert chunked == whole
    assert brute_force(probs, y, COSTS["integers"], drop=0.02)[1] == chunked[2]["thresholds"]


def test_three_stage_search_is_fast_at_5000_calibration_images():
    probs, y = three_stages(5000, 0, k=10)
    assert min(torch.unique(p.max(1).values).numel() for p in probs) > 4000  # about n^2 pairs to try
    start = time.perf_counter()
    cal = cascade.calibrate(probs, y, [1e6, 5e6, 3e7], max_acc_drop=0.01)
    seconds = time.perf_counter() - start
    assert cal.meets_tolerance and not cal.fallback and cal.calib_cost_reduction > 0.3
    assert seconds < 30, f"{seconds:.1f} s"  # about 1 s on one core; generous for a shared CI machine
