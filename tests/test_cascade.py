"""Tests for the cascade package (docs/method.md §9): batched routing, statistics, r_match / ΔC, sweeps,
calibration against brute force, reports and input validation. Small tensors only: runs in seconds on CPU."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers.models import tiny_vit
from torch import nn

import cascade
from cascade import Cascade, CascadeStats, calibrate, delta_cost, match_ratio, record, select_saver, sweep

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers
def linear_models(n_stages: int, d: int = 6, k: int = 4, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    models = []
    for s in range(n_stages):
        m = nn.Linear(d, k)
        with torch.no_grad():
            m.weight.mul_(1.5 + s)  # later models sharper, so confidences spread across (1/k, 1)
        models.append(m.eval())
    return models


def reference_route(models, thresholds, x):
    """Per-sample reference: each sample runs the models one by one until one is confident enough."""
    outs, stages = [], []
    for i in range(x.shape[0]):
        for s, m in enumerate(models):
            logits = m(x[i : i + 1])
            if s == len(models) - 1 or torch.softmax(logits.float(), -1).max() >= thresholds[s]:
                outs.append(logits[0])
                stages.append(s)
                break
    return torch.stack(outs), stages


class Spy(nn.Module):
    """Records every batch it sees and refuses empty batches."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        assert x.shape[0] > 0, "a model was called on an empty batch"
        self.seen.append(x.detach().clone())
        return self.inner(x)


class Take(nn.Module):
    """Returns columns [lo, hi) of its input as logits: lets a test dictate every stage's logits."""

    def __init__(self, lo: int, hi: int):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return x[:, self.lo : self.hi]


def probs_from(conf, pred, k: int = 3) -> torch.Tensor:
    """Probability rows with max `conf` on class `pred`, the rest spread evenly (conf > 1/k)."""
    conf = torch.as_tensor(conf, dtype=torch.float32)
    p = ((1 - conf) / (k - 1)).unsqueeze(1).repeat(1, k)
    p[torch.arange(len(conf)), torch.as_tensor(pred)] = conf
    return p


def synthetic(n: int, k: int, n_stages: int, seed: int):
    """Stage probabilities where later stages are more accurate; last = big."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(k, (n,), generator=g)
    probs = []
    for s in range(n_stages):
        logits = torch.randn(n, k, generator=g)
        logits[torch.arange(n), y] += (0.8 + 0.9 * s) * 2 * torch.rand(n, generator=g)
        probs.append(torch.softmax(logits * (1 + s), 1))
    return probs, y


def brute_force(probs, y, costs, thresholds):
    """(correct count, avg cost) of fixed thresholds, sample by sample."""
    confs = [p.max(1).values.tolist() for p in probs]
    right = [(p.argmax(1) == y).tolist() for p in probs]
    correct, cost = 0, 0.0
    for i in range(len(y)):
        for s in range(len(probs)):
            cost += costs[s]
            if s == len(probs) - 1 or confs[s][i] >= thresholds[s]:
                correct += right[s][i]
                break
    return correct, cost / len(y)


# ---------------------------------------------------------------------------------------------- routing
@pytest.mark.parametrize("n_stages", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_routing_matches_per_sample_reference(n_stages, seed):
    models = linear_models(n_stages, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(64, 6, generator=g)
    thresholds = (0.35 + 0.5 * torch.rand(n_stages - 1, generator=g)).tolist()
    costs = [1.0, 3.0, 10.0][-n_stages:]
    casc = Cascade(models, thresholds, costs).eval()
    with torch.no_grad():
        out = casc(x)
        ref, stages = reference_route(models, thresholds, x)
    assert out.shape == (64, 4)
    assert torch.allclose(out, ref, atol=1e-6)
    counts = tuple(stages.count(s) for s in range(n_stages))
    assert sum(c > 0 for c in counts) >= 2, "test data should exercise more than one stage"
    st = casc.last_stats
    assert st.exit_counts == counts and st.n == 64
    assert st.exit_ratios == pytest.approx([c / 64 for c in counts])
    assert st.avg_cost == pytest.approx(sum(sum(costs[: s + 1]) for s in stages) / 64)


@pytest.mark.parametrize("n_stages", [2, 3])
def test_staged_inference_answers_as_the_per_batch_cascade(n_stages):
    models = [Spy(m) for m in linear_models(n_stages, seed=4)]
    x = torch.randn(100, 6, generator=torch.Generator().manual_seed(9))
    casc = Cascade(models, [0.5, 0.6][: n_stages - 1], [1.0, 3.0, 10.0][-n_stages:]).eval()
    with torch.no_grad():
        per_batch = torch.cat([casc(x[i : i + 16]) for i in range(0, 100, 16)])
    expected = casc.total_stats
    for spy in models:
        spy.seen.clear()
    out, stats = cascade.predict_staged(casc, x, batch_size=16)
    assert torch.allclose(out, per_batch, atol=1e-6)
    assert stats.exit_counts == expected.exit_counts and stats.avg_cost == pytest.approx(expected.avg_cost)
    assert 0 < stats.exit_counts[0] < 100
    # every later member sees the undecided inputs of the whole set in full batches, not a few per batch
    assert [len(b) for b in models[1].seen][:-1] == [16] * (len(models[1].seen) - 1)
    assert sum(len(b) for b in models[1].seen) == 100 - stats.exit_counts[0]
    with pytest.raises(ValueError, match="batch_size"):
        cascade.predict_staged(casc, x, batch_size=0)


def test_later_models_see_only_undecided_samples():
    inner = linear_models(3, seed=3)
    spies = [Spy(m) for m in inner]
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(7))
    thresholds = [0.6, 0.7]
    with torch.no_grad():
        Cascade(spies, thresholds)(x)
        c0 = torch.softmax(inner[0](x), -1).max(-1).values
        c1 = torch.softmax(inner[1](x), -1).max(-1).values
    go1 = c0 < thresholds[0]
    go2 = go1 & (c1 < thresholds[1])
    assert 0 < go2.sum() < go1.sum() < 50
    assert [len(s.seen) for s in spies] == [1, 1, 1]
    assert torch.equal(spies[0].seen[0], x)
    assert torch.equal(spies[1].seen[0], x[go1])  # same samples, original order
    assert torch.equal(spies[2].seen[0], x[go2])


def _table_input(rows):
    """Rows of (stage-1 logits, stage-2 logits) -> input for Take models."""
    return torch.tensor([a + b for a, b in rows], dtype=torch.float32)


def test_costs_and_avg_cost_by_hand():
    # stage-1 confidences: ~1.0, e^2/(e^2+2) = 0.787, 1/3
    x = _table_input([([10.0, 0, 0], [0.0, 5, 0]), ([2.0, 0, 0], [0.0, 5, 0]), ([0.0, 0, 0], [0.0, 5, 0])])
    casc = Cascade([Take(0, 3), Take(3, 6)], [0.5], costs=[1.0, 10.0])
    out = casc(x)
    assert casc.last_stats.exit_counts == (2, 1)
    assert casc.last_stats.run_counts == (3, 1)
    assert casc.last_stats.avg_cost == pytest.approx((3 * 1.0 + 1 * 10.0) / 3)
    assert torch.equal(out, torch.cat([x[:2, :3], x[2:, 3:]]))
    # threshold between 0.787 and ~1.0: two go on
    casc.thresholds = [0.9]
    casc(x)
    assert casc.last_stats.exit_counts == (1, 2)
    assert casc.last_stats.avg_cost == pytest.approx((3 + 2 * 10.0) / 3)
    assert Cascade([Take(0, 3), Take(3, 6)], [0.5])(x).shape == (3, 3)


def test_three_stage_costs_by_hand():
    x = torch.tensor(
        [
            [9.0, 0, 0, 0, 0, 0, 0, 0, 7],  # exits at stage 1
            [0.0, 0, 0, 9, 0, 0, 0, 7, 0],  # exits at stage 2
            [0.0, 0, 0, 0, 0, 0, 7, 0, 0],
        ]
    )  # big answers
    casc = Cascade([Take(0, 3), Take(3, 6), Take(6, 9)], [0.9, 0.9], costs=[1, 4, 10])
    out = casc(x)
    assert casc.last_stats.exit_counts == (1, 1, 1)
    assert casc.last_stats.avg_cost == pytest.approx((1 + 5 + 15) / 3)
    assert torch.equal(out.argmax(1), torch.tensor([0, 0, 0]))
    assert torch.equal(out[1], x[1, 3:6]) and torch.equal(out[2], x[2, 6:9])


def test_threshold_zero_sends_everything_out_and_skips_later_models():
    little, big = Spy(Take(0, 3)), Spy(Take(3, 6))
    x = torch.randn(8, 6)
    casc = Cascade([little, big], [0.0], costs=[2.0, 10.0])
    out = casc(x)
    assert big.seen == []  # nothing left: the big model must not run, not even on an empty batch
    assert torch.equal(out, x[:, :3])
    assert casc.last_stats.exit_ratios == (1.0, 0.0)
    assert casc.last_stats.avg_cost == 2.0


def test_threshold_one_only_exact_confidence_one_exits():
    assert torch.softmax(torch.tensor([100.0, 0, 0]), 0).max().item() == 1.0  # precondition of this test
    x = _table_input([([100.0, 0, 0], [0.0, 1, 0]), ([10.0, 0, 0], [0.0, 1, 0]), ([1.0, 0, 0], [0.0, 1, 0])])
    little, big = Spy(Take(0, 3)), Spy(Take(3, 6))
    casc = Cascade([little, big], [1.0], costs=[1.0, 10.0])
    out = casc(x)
    assert casc.last_stats.exit_counts == (1, 2)
    assert torch.equal(big.seen[0], x[1:])
    assert torch.equal(out, torch.cat([x[:1, :3], x[1:, 3:]]))


def test_every_sample_goes_on_and_empty_input():
    x = _table_input([([1.0, 0, 0], [0.0, 1, 0])] * 5)
    little, big = Spy(Take(0, 3)), Spy(Take(3, 6))
    casc = Cascade([little, big], [0.99], costs=[1.0, 10.0])
    assert torch.equal(casc(x), x[:, 3:])
    assert casc.last_stats.exit_counts == (0, 5) and casc.last_stats.avg_cost == 11.0
    big.seen.clear()
    casc2 = Cascade([Take(0, 3), big], [0.5], costs=[1.0, 10.0])
    assert casc2(x[:0]).shape == (0, 3)
    assert big.seen == [] and casc2.last_stats.n == 0 and casc2.last_stats.avg_cost == 0.0


def test_single_model_cascade_is_the_model():
    m = linear_models(1)[0]
    x = torch.randn(5, 6)
    casc = Cascade([m], [], costs=[3.0])
    with torch.no_grad():
        assert torch.equal(casc(x), m(x))
    assert casc.last_stats.exit_counts == (5,) and casc.last_stats.avg_cost == 3.0


def test_total_stats_accumulate_and_reset():
    models = linear_models(2, seed=5)
    casc = Cascade(models, [0.6], costs=[1.0, 10.0])
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        casc(x[:25])
        a = casc.last_stats
        casc(x[25:])
        b = casc.last_stats
    tot = casc.total_stats
    assert tot.n == 40
    assert tot.exit_counts == tuple(i + j for i, j in zip(a.exit_counts, b.exit_counts))
    assert tot.avg_cost == pytest.approx((a.avg_cost * 25 + b.avg_cost * 15) / 40)
    casc.reset_stats()
    assert casc.total_stats.n == 0 and casc.last_stats is None


def test_mixed_precision_outputs_are_promoted():
    little = Take(0, 3)

    class Double(nn.Module):
        def forward(self, x):
            return x[:, 3:6].double()

    x = _table_input([([5.0, 0, 0], [0.0, 1, 0]), ([0.0, 0, 0], [0.0, 1, 0])])
    out = Cascade([little, Double()], [0.9])(x)
    assert out.dtype == torch.float64 and torch.equal(out[1], x[1, 3:].double())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cascade_on_cuda_matches_cpu():
    models = linear_models(3, seed=9)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        cpu = Cascade(models, [0.6, 0.7])
        ref = cpu(x)
        gpu = Cascade([m.cuda() for m in models], [0.6, 0.7])
        out = gpu(x.cuda())
    assert out.device.type == "cuda" and torch.allclose(out.cpu(), ref, atol=1e-4)
    assert gpu.last_stats.exit_counts == cpu.last_stats.exit_counts


def test_stats_from_counts():
    st = CascadeStats.from_counts([3, 1, 0], costs=[1, 2, 4])
    assert st.run_counts == (4, 1, 0) and st.avg_cost == pytest.approx((4 * 1 + 1 * 2) / 4)
    with pytest.raises(AttributeError):  # frozen dataclass
        st.n = 5


# ------------------------------------------------------------------------------------------------ record
def test_record_probs_labels_and_mode_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5))
    model.train()
    x, y = torch.randn(10, 6), torch.randint(4, (10,))
    rec = record(model, [(x[:4], y[:4]), (x[4:], y[4:])], progress=False)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(x), -1)
    assert torch.allclose(rec.probs, expected, atol=1e-6)
    assert torch.equal(rec.labels, y) and rec.labels.dtype == torch.long
    probs, labels = rec  # unpacks like a tuple
    assert probs.shape == (10, 4)
    with pytest.raises(ValueError):
        record(model, [], progress=False)


# -------------------------------------------------------------------------------------- r_match and ΔC
def test_match_ratio_confident_half():
    conf = [0.9, 0.85, 0.8, 0.75, 0.6, 0.55, 0.5, 0.45]
    y = torch.zeros(8, dtype=torch.long)
    saver = probs_from(conf, [0, 0, 0, 0, 1, 1, 1, 1])  # right on its confident half only
    big = probs_from([0.9] * 8, [0] * 8)  # always right
    assert match_ratio(saver, big, y) == 0.5
    assert delta_cost(saver, big, y, saver_cost=1.0, big_cost=10.0) == pytest.approx(0.1 - 0.5)


def test_match_ratio_edge_cases():
    y = torch.zeros(4, dtype=torch.long)
    conf = [0.9, 0.8, 0.7, 0.6]
    wrong, right = probs_from(conf, [1] * 4), probs_from(conf, [0] * 4)
    assert match_ratio(wrong, right, y) == 0.0  # all-wrong saver against a right big model
    assert match_ratio(wrong, wrong, y) == 1.0  # equally wrong: exiting everything loses nothing
    assert match_ratio(right, wrong, y) == 1.0
    # lead: -1 after the first sample, back to 0 after the second: the largest qualifying ratio counts
    saver = probs_from(conf, [1, 0, 1, 1])
    big = probs_from(conf, [0, 1, 0, 0])
    assert match_ratio(saver, big, y) == 0.5


def test_match_ratio_ties_cut_only_between_distinct_confidences():
    y = torch.zeros(4, dtype=torch.long)
    # Three samples tie at 0.9: the first (by position) is a saver win, the other two saver losses.
    saver = probs_from([0.9, 0.9, 0.9, 0.5], [0, 1, 1, 1])
    big = probs_from([0.9] * 4, [1, 0, 0, 0])
    # A cut inside the tie (m = 1) would qualify, but no threshold exits just that one sample.
    assert match_ratio(saver, big, y) == 0.0
    saver2 = probs_from([0.9, 0.9, 0.9, 0.5], [0, 0, 1, 1])  # tie block nets 0, the last sample -1
    assert match_ratio(saver2, big, y) == 0.75


def test_match_ratio_matches_brute_force_with_ties():
    g = torch.Generator().manual_seed(4)
    n, k = 60, 3
    y = torch.randint(k, (n,), generator=g)
    conf = torch.randint(5, 10, (n,), generator=g).float() / 10  # many ties
    saver = probs_from(conf, torch.where(torch.rand(n, generator=g) < conf, y, (y + 1) % k))
    big = probs_from(torch.full((n,), 0.9), torch.where(torch.rand(n, generator=g) < 0.8, y, (y + 1) % k))
    s_ok, b_ok = (saver.argmax(1) == y), (big.argmax(1) == y)
    c = saver.max(1).values
    best = 0.0
    for t in torch.unique(c).tolist():
        ex = c >= t
        if int(s_ok[ex].sum()) >= int(b_ok[ex].sum()):
            best = max(best, int(ex.sum()) / n)
    assert 0.0 < best < 1.0
    assert match_ratio(saver, big, y) == best


def test_select_saver_ranks_by_delta_cost():
    conf = [0.9, 0.85, 0.8, 0.75, 0.6, 0.55, 0.5, 0.45]
    y = torch.zeros(8, dtype=torch.long)
    big = (probs_from([0.9] * 8, [0] * 8), 10.0)
    half = probs_from(conf, [0, 0, 0, 0, 1, 1, 1, 1])  # r = 0.5
    full = probs_from(conf, [0] * 8)  # r = 1
    none = probs_from(conf, [1] * 8)  # r = 0
    rows = select_saver({"a": (half, 1.0), "b": (full, 5.0), "c": (none, 0.5)}, big, y)
    assert [r.name for r in rows] == ["b", "a", "c"]
    assert [r.delta_c for r in rows] == pytest.approx([0.5 - 1.0, 0.1 - 0.5, 0.05])
    assert [r.r_match for r in rows] == [1.0, 0.5, 0.0]


# -------------------------------------------------------------------------------- sweep and calibration
def test_sweep_matches_cascade_module():
    models = linear_models(2, seed=11)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(96, 6, generator=g)
    with torch.no_grad():
        y = models[1](x).argmax(1)
    flip = torch.rand(96, generator=g) < 0.3
    y[flip] = torch.randint(4, (int(flip.sum()),), generator=g)
    loader = [(x[:48], y[:48]), (x[48:], y[48:])]
    recs = [record(m, loader, progress=False) for m in models]
    costs = [2.0, 10.0]
    res = sweep([r.probs for r in recs], recs[0].labels, costs)
    assert res.thresholds[0] == 0.0 and res.thresholds[-1] == 1.0
    assert bool((res.thresholds[1:] > res.thresholds[:-1]).all())
    assert res.exit_ratio[0] == 1.0 and res.exit_ratio[-1] == 0.0
    casc = Cascade(models, [0.5], costs).eval()
    for j in list(range(0, len(res.thresholds), 7)) + [len(res.thresholds) - 1]:
        casc.thresholds = [float(res.thresholds[j])]
        casc.reset_stats()
        right = 0
        with torch.no_grad():
            for xb, yb in loader:
                right += int((casc(xb).argmax(1) == yb).sum())
        st = casc.total_stats
        assert right / 96 == pytest.approx(float(res.accuracy[j]), abs=1e-12), j
        assert st.avg_cost == pytest.approx(float(res.avg_cost[j]))
        assert st.exit_ratios[0] == pytest.approx(float(res.exit_ratio[j]))
    assert len(set(res.accuracy.tolist())) > 3  # the sweep is not flat


def test_sweep_user_grid_and_float32_comparison():
    p, y = synthetic(50, 3, 2, seed=2)
    c = p[0].max(1).values
    t = float(c[7])  # an observed float32 confidence: that sample must exit
    res = sweep(p, y, [1, 4], thresholds_grid=[t, 0.0])
    assert res.exit_ratio.tolist() == [int((c >= t).sum()) / 50, 1.0]
    assert 0 < int((c >= t).sum()) < 50
    # Any order and repeats: each entry equals the default (exact) sweep at the same threshold.
    full = sweep(p, y, [1, 4])
    t2 = float(full.thresholds[len(full.thresholds) // 2])
    grid = [t2, 1.0, 0.0, t2, t]
    mine = sweep(p, y, [1, 4], thresholds_grid=grid)
    at = [int((full.thresholds == v).nonzero()) for v in grid]
    assert torch.equal(mine.accuracy, full.accuracy[at]) and torch.equal(mine.avg_cost, full.avg_cost[at])
    assert torch.equal(mine.exit_ratio, full.exit_ratio[at]) and mine.thresholds.tolist() == grid
    assert len(set(mine.accuracy.tolist())) > 1
    with pytest.raises(ValueError):
        sweep(p, y, [1, 4], thresholds_grid=[1.2])
    with pytest.raises(ValueError):
        sweep(p + p[:1], y, [1, 4, 5])


@pytest.mark.parametrize("drop", [0.0, 0.02, 0.1])
def test_calibrate_two_stage_is_cheapest_feasible(drop):
    p, y = synthetic(120, 4, 2, seed=3)
    costs = [1.0, 6.0]
    cal = calibrate(p, y, costs, max_acc_drop=drop)
    n, big_correct = 120, int((p[1].argmax(1) == y).sum())
    c0 = torch.unique(p[0].max(1).values).tolist()
    grid = sorted(set(c0 + [(a + b) / 2 for a, b in zip(c0, c0[1:])] + [0.0, 1.0]))
    feasible = []
    for t in grid:
        right, cost = brute_force(p, y, costs, [t])
        if right >= big_correct - drop * n - 1e-9:
            feasible.append(cost)
    assert min(feasible) < sum(costs)  # the test data leaves room to save
    right, cost = brute_force(p, y, costs, cal.thresholds)
    assert right / n == cal.calib_accuracy and cost == pytest.approx(cal.calib_avg_cost)
    assert cal.calib_accuracy >= cal.calib_big_accuracy - drop - 1e-12
    assert cal.calib_avg_cost == pytest.approx(min(feasible))
    assert cal.meets_tolerance and not cal.fallback
    assert cal.calib_cost_reduction == pytest.approx(1 - cal.calib_avg_cost / 6.0)


@pytest.mark.parametrize("n_stages,n", [(3, 40), (4, 14)])
def test_calibrate_n_stage_matches_brute_force_grid(n_stages, n):
    # Few samples, so every stage grid holds all observed confidences: the search is exhaustive.
    p, y = synthetic(n, 3, n_stages, seed=5)
    costs = [1.0, 2.0, 3.0, 12.0][-n_stages:]
    drop = 0.075
    cal = calibrate(p, y, costs, max_acc_drop=drop)
    big_correct = int((p[-1].argmax(1) == y).sum())
    grids = [torch.unique(q.max(1).values).tolist() + [0.0, 1.0] for q in p[:-1]]
    best = min(
        cost
        for ts in itertools.product(*grids)
        for right, cost in [brute_force(p, y, costs, ts)]
        if right >= big_correct - drop * n - 1e-9
    )
    assert best < sum(costs)
    assert cal.calib_avg_cost == pytest.approx(best)
    right, cost = brute_force(p, y, costs, cal.thresholds)
    assert right >= big_correct - drop * n - 1e-9 and cost == pytest.approx(best)
    assert right / n == cal.calib_accuracy
    assert len(cal.thresholds) == n_stages - 1 and len(cal.calib_exit_ratios) == n_stages


def test_calibrate_quantile_grid_when_many_confidences():
    # 4 models: the product of per-stage grids, quantiles when a stage has more distinct confidences.
    p, y = synthetic(60, 4, 4, seed=6)
    costs = [1.0, 2.0, 4.0, 8.0]
    cal = calibrate(p, y, costs, max_acc_drop=0.02, grid_size=5)
    right, cost = brute_force(p, y, costs, cal.thresholds)
    big_correct = int((p[-1].argmax(1) == y).sum())
    assert right >= big_correct - 1 and right / 60 == cal.calib_accuracy and cost == pytest.approx(cal.calib_avg_cost)
    assert cal.meets_tolerance and cal.calib_avg_cost < sum(costs)
    # The coarse grid can only be as good as the exhaustive one (grid_size above the distinct count).
    fine = calibrate(p, y, costs, max_acc_drop=0.02, grid_size=70)
    assert fine.calib_avg_cost < cal.calib_avg_cost
    with pytest.raises(ValueError):
        calibrate(p, y, costs, grid_size=1)


def test_calibrate_never_tunes_on_test_and_reports_it():
    p, y = synthetic(100, 4, 2, seed=8)
    pt, yt = synthetic(80, 4, 2, seed=9)
    pt2, yt2 = synthetic(80, 4, 2, seed=10)
    base = calibrate(p, y, [1, 5], 0.01)
    a = calibrate(p, y, [1, 5], 0.01, test_probs=pt, test_labels=yt)
    b = calibrate(p, y, [1, 5], 0.01, test_probs=pt2, test_labels=yt2)
    assert base.thresholds == a.thresholds == b.thresholds
    assert base.test_accuracy is None
    right, cost = brute_force(pt, yt, [1, 5], a.thresholds)
    assert a.test_accuracy == right / 80 and a.test_avg_cost == pytest.approx(cost)
    assert a.test_big_accuracy == int((pt[1].argmax(1) == yt).sum()) / 80
    assert a.test_cost_reduction == pytest.approx(1 - cost / 5)


def test_calibrate_fallback_when_only_big_is_feasible():
    y = torch.zeros(6, dtype=torch.long)
    saver = probs_from([0.99, 0.95, 0.9, 0.8, 0.7, 0.6], [1] * 6)  # confidently wrong everywhere
    big = probs_from([0.9] * 6, [0] * 6)
    cal = calibrate([saver, big], y, [1.0, 4.0])
    assert cal.fallback and cal.meets_tolerance and cal.thresholds == (1.0,)
    assert cal.calib_avg_cost == 5.0 and cal.calib_cost_reduction == pytest.approx(-0.25)
    assert cal.calib_accuracy == 1.0 and "big model" in cal.note
    # A wrong saver with confidence exactly 1.0 exits even at t = 1: nothing meets a 0 tolerance.
    saver1 = saver.clone()
    saver1[0] = torch.tensor([0.0, 1.0, 0.0])
    cal1 = calibrate([saver1, big], y, [1.0, 4.0])
    assert cal1.fallback and not cal1.meets_tolerance and cal1.thresholds == (1.0,)
    assert cal1.calib_exit_ratios[0] == pytest.approx(1 / 6)


def test_calibrate_tie_breaks_prefer_accuracy_then_larger_thresholds():
    y = torch.zeros(5, dtype=torch.long)
    conf = [0.9, 0.8, 0.7, 0.6, 0.5]
    saver = probs_from(conf, [0] * 5)  # always right
    big = probs_from([0.9] * 5, [0, 1, 0, 0, 0])  # wrong once
    cal = calibrate([saver, big], y, [1.0, 4.0])
    # t = 0 and t = 0.5 both send everything out; the larger threshold is the safer choice on new data.
    assert cal.thresholds == (pytest.approx(0.5),) and cal.calib_exit_ratios == (1.0, 0.0)
    # Equal cost, different accuracy: with a free middle stage, exiting at stage 1 or 2 costs the same.
    middle = probs_from(conf, [1] * 5)  # always wrong
    cal3 = calibrate([saver, middle, big], y, [1.0, 0.0, 4.0], max_acc_drop=1.0)
    assert cal3.calib_avg_cost == 1.0 and cal3.calib_accuracy == 1.0
    assert cal3.thresholds == (pytest.approx(0.5), 1.0)


def paired_lower_bound(probs, y, thresholds, confidence):
    """Reference, sample by sample: (adjusted Wald bound of the paired 2 x 2 table with half a sample added
    to each cell, number of samples answered before the last model)."""
    confs = [p.max(1).values.tolist() for p in probs]
    right = [(p.argmax(1) == y).tolist() for p in probs]
    wins = losses = early = 0
    for i in range(len(y)):
        stage = next(s for s in range(len(probs)) if s == len(probs) - 1 or confs[s][i] >= thresholds[s])
        wins += right[stage][i] and not right[-1][i]
        losses += right[-1][i] and not right[stage][i]
        early += stage < len(probs) - 1
    m = len(y) + 2
    p12, p21 = (wins + 0.5) / m, (losses + 0.5) / m
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(confidence, dtype=torch.float64)).item()
    return p12 - p21 - z * math.sqrt((p12 + p21 - (p12 - p21) ** 2) / m), early


@pytest.mark.parametrize("n_stages,confidence,drop", [(2, 0.95, 0.01), (2, 0.8, 0.02), (3, 0.9, 0.05)])
def test_calibrate_with_confidence_matches_brute_force(n_stages, confidence, drop):
    p, y = synthetic(60, 3, n_stages, seed=18)
    costs = [1.0, 3.0, 10.0][-n_stages:]
    cal = calibrate(p, y, costs, max_acc_drop=drop, confidence=confidence)
    grids = [torch.unique(q.max(1).values).tolist() + [0.0, 1.0] for q in p[:-1]]
    feasible = []
    for ts in itertools.product(*grids):
        bound, early = paired_lower_bound(p, y, ts, confidence)
        if bound >= -drop or early == 0:
            feasible.append(brute_force(p, y, costs, ts)[1])
    assert min(feasible) < sum(costs)
    assert cal.calib_avg_cost == pytest.approx(min(feasible))
    assert cal.confidence == confidence and cal.meets_tolerance
    assert cal.calib_lower_bound == pytest.approx(paired_lower_bound(p, y, cal.thresholds, confidence)[0])
    # The bound only removes operating points, so it never picks anything cheaper than the point rule.
    assert cal.calib_avg_cost >= calibrate(p, y, costs, max_acc_drop=drop).calib_avg_cost


def test_calibrate_confidence_needs_evidence_not_luck():
    # The saver is right where the big model is wrong on 3 samples and the reverse on 3 others, and agrees
    # with it on 4: the same measured accuracy, so the point rule sends everything to the saver. At 95%
    # confidence neither the 6 disagreements nor 4 agreements rule out a loss: nothing exits.
    y = torch.zeros(10, dtype=torch.long)
    conf = [0.99, 0.98, 0.97, 0.96, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    saver = probs_from(conf, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    big = probs_from([0.9] * 10, [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    point = calibrate([saver, big], y, [1.0, 4.0])
    assert point.calib_exit_ratios == (1.0, 0.0) and point.calib_accuracy == point.calib_big_accuracy
    sure = calibrate([saver, big], y, [1.0, 4.0], confidence=0.95)
    assert sure.thresholds == (1.0,) and sure.fallback and sure.meets_tolerance
    assert sure.calib_exit_ratios == (0.0, 1.0) and sure.calib_lower_bound < 0
    # A clear gain is evidence: 20 of 100 samples right only under the saver let everything exit at 0 drop.
    y = torch.zeros(100, dtype=torch.long)
    saver = probs_from(torch.linspace(0.95, 0.5, 100).tolist(), [0] * 100)
    big = probs_from([0.9] * 100, [1] * 20 + [0] * 80)
    gain = calibrate([saver, big], y, [1.0, 4.0], confidence=0.95)
    assert gain.calib_exit_ratios == (1.0, 0.0) and gain.calib_lower_bound > 0
    assert "95% one-sided confidence" in gain.note


@pytest.mark.parametrize("confidence", [0.3, 1.0, "high", float("nan"), True])
def test_calibrate_rejects_bad_confidence(confidence):
    p, y = synthetic(20, 3, 2, seed=1)
    with pytest.raises(ValueError, match="confidence"):
        calibrate(p, y, [1.0, 2.0], confidence=confidence)


# ------------------------------------------------------------------------------------------------ reports
def test_report_table_rows_and_markdown():
    p, y = synthetic(150, 4, 2, seed=13)
    costs = [1e8, 1e9]
    rows = cascade.report_table(p, y, costs, drops=(0.02, 0.0))
    assert [r["target"] for r in rows] == [
        "big model alone",
        "top-1 within 2 points of the big model",
        "no top-1 loss vs the big model",
        "best accuracy",
    ]
    big_acc = int((p[1].argmax(1) == y).sum()) / 150
    assert rows[0]["accuracy"] == big_acc and rows[0]["cost_frac"] == 1.0
    for r, d in zip(rows[1:3], (0.02, 0.0)):
        cal = calibrate(p, y, costs, max_acc_drop=d)
        assert r["avg_cost"] == pytest.approx(cal.calib_avg_cost) and r["thresholds"] == cal.thresholds
        assert r["cost_frac"] == pytest.approx(r["avg_cost"] / 1e9)
        assert r["accuracy"] >= big_acc - d - 1e-12
    assert rows[1]["avg_cost"] <= rows[2]["avg_cost"]
    res = sweep(p, y, costs)
    best = float(res.accuracy.max())
    assert rows[-1]["accuracy"] == pytest.approx(best)
    assert rows[-1]["avg_cost"] == pytest.approx(float(res.avg_cost[res.accuracy == res.accuracy.max()].min()))
    md = cascade.format_table(rows)
    lines = md.splitlines()
    assert len(lines) == 2 + len(rows) and all(line.startswith("|") for line in lines)
    assert "within 2 points" in md and "best accuracy" in md and "drop <=" not in md


def test_plot_curves_writes_png_atomically(tmp_path):
    p, y = synthetic(60, 3, 2, seed=14)
    res = sweep(p, y, [1.0, 5.0])
    out = cascade.plot_curves({"little": res}, big_acc=0.8, big_cost=5.0, path=tmp_path / "sub" / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "sub")) == ["curve.png"]  # no temp file left behind


def test_import_does_not_load_matplotlib():
    code = "import sys, cascade; sys.exit('matplotlib' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


# ------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(thresholds=[1.5]),
        dict(thresholds=[-0.1]),
        dict(thresholds=[math.nan]),
        dict(thresholds=[0.5, 0.5]),
        dict(thresholds=[]),
        dict(thresholds=["high"]),
        dict(thresholds=[0.5], costs=[1.0]),
        dict(thresholds=[0.5], costs=[1.0, -2.0]),
        dict(thresholds=[0.5], costs=[1.0, math.inf]),
    ],
)
def test_cascade_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError) as e:
        Cascade(linear_models(2), **kwargs)
    assert "\n" not in str(e.value) and str(e.value)


def test_cascade_rejects_no_models_and_bad_setter():
    with pytest.raises(ValueError, match="at least 1 model"):
        Cascade([], [])
    casc = Cascade(linear_models(2), [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        casc.thresholds = [2.0]
    assert casc.thresholds == (0.5,)


def test_calibration_functions_reject_bad_inputs():
    p, y = synthetic(20, 3, 2, seed=1)
    with pytest.raises(ValueError):
        calibrate(p, y, [1.0, 2.0], max_acc_drop=-0.1)
    with pytest.raises(ValueError):
        calibrate(p, y, [1.0])
    with pytest.raises(ValueError):
        calibrate(p, y, [1.0, 0.0])  # big cost 0: no savings to express
    with pytest.raises(ValueError):
        calibrate(p[:1], y, [1.0])
    with pytest.raises(ValueError):
        calibrate(p, y[:10], [1.0, 2.0])
    with pytest.raises(ValueError):
        calibrate(p, y, [1.0, 2.0], test_probs=p)  # labels missing
    with pytest.raises(ValueError):
        match_ratio(p[0], p[1][:, :2], y)
    with pytest.raises(ValueError):
        delta_cost(p[0], p[1], y, saver_cost=1.0, big_cost=0.0)
    with pytest.raises(ValueError):
        cascade.report_table(p, y, [1.0, 2.0], drops=(1.5,))


# ---------------------------------------------------------------------------------------------- inference
class ConvBN(nn.Module):
    """A small CNN with variants that defeat each rewrite prepare_for_inference tries."""

    def __init__(self, variant: str = "plain"):
        super().__init__()
        self.variant = variant
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8 if "view" in variant else 8, 3)

    def forward(self, x):
        if "branchy" in self.variant and x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 1.0
        x = torch.relu(self.bn1(self.conv1(x)))
        if self.variant == "shared":  # one conv feeding two BatchNorms: folding both into it is wrong
            x = x + torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv2(x))))))
        else:
            x = torch.relu(self.bn2(self.conv2(x)))
        if "view" in self.variant:  # .view needs contiguous NCHW memory: channels-last breaks it
            return self.head(x.view(x.shape[0], -1))
        if self.variant == "dict":
            return {"logits": self.head(x.mean((2, 3)))}
        return self.head(x.mean((2, 3)))


def trained_bn_model(variant: str = "plain") -> ConvBN:
    torch.manual_seed(0)
    model = ConvBN(variant)
    with torch.no_grad():
        for _ in range(3):  # give the BatchNorm layers non-trivial running statistics
            model(torch.randn(16, 1, 8, 8) * 2 + 0.5)
    return model.train()


def has_batch_norm(model) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def is_channels_last(model) -> bool:
    # The last conv: the first has one input channel, whose weight is both NCHW- and channels-last-contiguous.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "variant,folded,channels_last",
    [
        ("plain", True, True),
        ("dict", True, True),
        ("branchy", False, True),  # fx cannot trace it: channels-last only
        ("view", True, False),  # channels-last breaks .view: folding only
        ("shared", False, True),  # folding changes the outputs: channels-last only
    ],
)
def test_prepare_for_inference_keeps_outputs(variant, folded, channels_last):
    model = trained_bn_model(variant)
    x = torch.randn(5, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # some rewrite works for each variant: no warning
        prepared = cascade.prepare_for_inference(model, x)
    assert model.training and has_batch_norm(model)  # the original is untouched
    assert not prepared.training and has_batch_norm(prepared) != folded and is_channels_last(prepared) == channels_last
    y = torch.randn(7, 1, 8, 8)  # other data than the check used
    with torch.no_grad():
        torch.testing.assert_close(prepared(y), model.eval()(y), rtol=1e-4, atol=1e-5)


def test_prepare_for_inference_cascade_and_fallback_warning():
    model, x = trained_bn_model().eval(), torch.randn(6, 1, 8, 8)
    fast = cascade.prepare_for_inference(model, x)
    with torch.no_grad():
        torch.testing.assert_close(Cascade([fast, fast], [0.5])(x), model(x), rtol=1e-4, atol=1e-5)
    # A model no rewrite suits (untraceable and .view) comes back as an unchanged eval copy, with a warning.
    stuck = trained_bn_model("branchy+view")
    with pytest.warns(RuntimeWarning, match="left as it was"):
        same = cascade.prepare_for_inference(stuck, x)
    assert has_batch_norm(same) and not is_channels_last(same)
    with pytest.raises(ValueError, match="nn.Module"):
        cascade.prepare_for_inference(lambda inp: inp, x)
    with pytest.raises(ValueError, match="example"):
        cascade.prepare_for_inference(model, [x])


# ------------------------------------------------------------------------------ hostile-input validation
def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("bad", ["logits", "positive_logits", "half_scaled", "nan"])
@pytest.mark.parametrize("where", ["calib", "test"])
def test_calibrate_rejects_logits_and_non_probabilities(bad, where):
    p, y = synthetic(20, 3, 2, seed=21)
    g = torch.Generator().manual_seed(22)
    wrong = {
        "logits": torch.randn(20, 3, generator=g) * 5,
        "positive_logits": torch.rand(20, 3, generator=g) * 60,  # once calibrated to threshold 60.0
        "half_scaled": p[0] * 0.5,  # entries in [0, 1] but rows sum to 0.5
        "nan": p[0].clone().index_fill_(0, torch.tensor([3]), math.nan),
    }[bad]
    args = dict(test_probs=[wrong, p[1]], test_labels=y) if where == "test" else {}
    probs = p if where == "test" else [wrong, p[1]]
    with pytest.raises(ValueError) as e:
        calibrate(probs, y, [1.0, 4.0], **args)
    msg = one_line_error(e)
    assert f"{where}_probs[0]" in msg
    assert ("NaN" in msg) if bad == "nan" else ("not probabilities" in msg and "softmax" in msg)
    with pytest.raises(ValueError, match="not probabilities|NaN"):
        sweep([wrong, p[1]], y, [1.0, 4.0])


def test_probability_check_tolerates_low_precision_softmax():
    # bfloat16 rounding moves a 100-class row sum by up to ~0.004: still probabilities.
    g = torch.Generator().manual_seed(23)
    y = torch.randint(100, (32,), generator=g)
    p = [
        torch.softmax(torch.randn(32, 100, generator=g) * s, 1).to(dt)
        for s, dt in ((1, torch.bfloat16), (3, torch.float16))
    ]
    assert calibrate(p, y, [1.0, 4.0], max_acc_drop=1.0).calib_exit_ratios[0] == 1.0


@pytest.mark.parametrize(
    "labels,match",
    [
        (lambda y: y.clone().index_fill_(0, torch.tensor([0]), 3), r"\[0, 3\)"),  # K = 3: 3 is out of range
        (lambda y: y.clone().index_fill_(0, torch.tensor([0]), -1), r"\[0, 3\)"),
        (lambda y: y.float(), "integer"),
        (lambda y: y[None], "1-D"),
        (lambda y: y[:10], "1-D"),
    ],
)
def test_calibrate_rejects_bad_labels(labels, match):
    p, y = synthetic(20, 3, 2, seed=24)
    with pytest.raises(ValueError, match=match) as e:
        calibrate(p, labels(y), [1.0, 4.0])
    assert "calib_labels" in one_line_error(e)
    with pytest.raises(ValueError, match=match) as e:
        calibrate(p, y, [1.0, 4.0], test_probs=p, test_labels=labels(y))
    assert "test_labels" in one_line_error(e)
    with pytest.raises(ValueError, match=match):
        match_ratio(p[0], p[1], labels(y))


def test_calibrate_rejects_mismatched_stages():
    p, y = synthetic(20, 3, 2, seed=25)
    p4, _ = synthetic(20, 4, 1, seed=26)
    with pytest.raises(ValueError, match=r"calib_probs\[1\] has 10 rows but calib_probs\[0\] has 20") as e:
        calibrate([p[0], p[1][:10]], y, [1.0, 4.0])
    one_line_error(e)
    with pytest.raises(ValueError, match=r"calib_probs\[1\] has 4 classes but calib_probs\[0\] has 3") as e:
        calibrate([p[0], p4[0]], y, [1.0, 4.0])
    one_line_error(e)


@pytest.mark.parametrize(
    "threshold,match",
    [
        (True, "bool"),
        (False, "bool"),
        (torch.tensor(True), "bool"),
        ("0.5", "str"),
        (torch.full((30,), 0.5), "real number"),  # its repr spans lines: the message must not
        (math.inf, "not finite"),
        (-math.inf, "not finite"),
        (math.nan, "not finite"),
    ],
)
def test_cascade_rejects_bool_and_non_real_thresholds(threshold, match):
    with pytest.raises(ValueError, match=match) as e:
        Cascade(linear_models(2), [threshold])
    one_line_error(e)
    casc = Cascade(linear_models(2), [0.5])
    with pytest.raises(ValueError, match=match):
        casc.thresholds = [threshold]
    assert casc.thresholds == (0.5,)
    with pytest.raises(ValueError, match="sequence"):
        Cascade(linear_models(2), "5")  # a string is not a list of thresholds


def test_thresholds_accept_real_number_types():
    casc = Cascade(linear_models(3), [torch.tensor(0.25), 1])
    assert casc.thresholds == (0.25, 1.0)


class Declares(nn.Module):
    """Returns k logits; optionally declares a class count that may disagree with its head."""

    def __init__(self, k: int, num_classes: int | None = None, attr: str = "head", sequential: bool = False):
        super().__init__()
        layer = nn.Linear(6, k)
        setattr(self, attr, nn.Sequential(nn.ReLU(), layer) if sequential else layer)
        self.layer = layer
        if num_classes is not None:
            self.num_classes = num_classes

    def forward(self, x):
        return self.layer(x)


@pytest.mark.parametrize(
    "members",
    [
        lambda: [nn.Linear(6, 3), nn.Linear(6, 4)],
        lambda: [Declares(3, attr="fc"), Declares(4, attr="classifier", sequential=True)],
        lambda: [Declares(3, num_classes=3), Declares(4, num_classes=4)],
        lambda: [Declares(3), Take(0, 3), Declares(4, attr="heads", sequential=True)],  # undeclared one skipped
    ],
)
def test_cascade_checks_declared_class_counts_at_construction(members):
    members = members()
    with pytest.raises(ValueError, match="classes") as e:
        Cascade(members, [0.5] * (len(members) - 1))
    assert "label space" in one_line_error(e)


def test_cascade_class_check_keeps_forward_check_when_undeclared():
    # A stale num_classes (head replaced without updating it) makes the model ambiguous: not refused.
    stale = Declares(3, num_classes=1000)
    casc = Cascade([stale, Declares(3)], [0.99])
    assert casc(torch.randn(4, 6)).shape == (4, 3)
    # Undeclared members still fail, but only at forward time.
    casc = Cascade([Take(0, 3), Take(3, 7)], [0.99])
    with pytest.raises(ValueError, match="share the label space"):
        casc(torch.zeros(4, 7))


def test_predict_staged_on_an_empty_batch_is_empty():
    import cascade

    casc = cascade.Cascade([tiny_vit(1), tiny_vit(2)], [0.5], [1.0, 2.0]).eval()
    logits, stats = cascade.predict_staged(casc, torch.zeros(0, 1, 16, 16))
    assert logits.shape == (0, 10) and stats.exit_counts == (0, 0) and stats.n == 0 and stats.avg_cost == 0.0


def test_calibrate_5_stages_x_2000_samples_stays_bounded():
    """The product of 5 - 1 grids of 102 values was 108 M tuples (tens of GB); it is coarsened to at most
    MAX_CANDIDATES (0.8 GB peak, under 2 s); 12 models cannot be searched even at 2 quantiles per stage."""
    import cascade
    from cascade._search import MAX_CANDIDATES, stage_grid_size

    assert [stage_grid_size(n, 100) for n in (2, 3, 4, 5, 6, 11)] == [100, 100, 100, 36, 16, 2]
    assert all((stage_grid_size(n, 100) + 2) ** (n - 1) <= MAX_CANDIDATES for n in range(4, 12))
    g = torch.Generator().manual_seed(0)
    probs = [torch.softmax(torch.randn(2000, 10, generator=g) * 3, 1) for _ in range(5)]
    labels = torch.randint(0, 10, (2000,), generator=g)
    found = cascade.calibrate(probs, labels, [1, 2, 3, 4, 5], max_acc_drop=0.05)
    assert len(found.thresholds) == 4 and found.meets_tolerance
    with pytest.raises(ValueError, match="12 models.*accepted: at most 11 models"):
        cascade.calibrate([probs[0]] * 12, labels, list(range(1, 13)))
