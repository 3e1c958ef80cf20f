"""Two- and three-stage cascades from one pool: which chains are tried, how the choice is made, what the
report says, and that the measured cascade answers as its calibration predicted."""

import pytest
import torch
from torch import nn

import cascade
from dcvit.studies.cascades import candidate_chains, compare_cascades, measure_cascade, options_markdown
from dcvit.studies.guaranteed import guaranteed_cascades, load_records, save_records


def recorded(correct_rate: float, confidence_scale: float, labels: torch.Tensor, gen) -> cascade.Recorded:
    """Probabilities whose argmax is right with about `correct_rate`, more confident when right."""
    n, k = len(labels), 4
    right = torch.rand(n, generator=gen) < correct_rate
    guess = torch.where(right, labels, (labels + 1) % k)
    logits = torch.randn(n, k, generator=gen) * 0.3
    logits[torch.arange(n), guess] += confidence_scale * (1 + right.float())
    return cascade.Recorded(logits.softmax(1), labels)


def pool(seed=0, n=400):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    spec = {"teacher": (0.95, 3.0), "own-big": (0.93, 2.5), "own-small": (0.85, 2.0), "cnn": (0.88, 2.0)}
    kinds = {"teacher": "teacher", "own-big": "compressed", "own-small": "compressed", "cnn": "companion"}
    costs = {"teacher": 100.0, "own-big": 50.0, "own-small": 20.0, "cnn": 5.0}
    calib = {m: recorded(*spec[m], labels, gen) for m in spec}
    test = {m: recorded(*spec[m], labels, gen) for m in spec}
    return kinds, costs, calib, test


def test_chains_cover_the_four_shapes_cheapest_member_first():
    kinds, costs, _, _ = pool()
    ranking = [("cnn", -0.5, 0.6), ("own-small", -0.4, 0.6), ("own-big", -0.2, 0.7)]
    chains = candidate_chains(kinds, ranking, costs)
    assert ("cnn", "teacher") in chains and ("own-small", "teacher") in chains
    assert ("cnn", "own-small", "teacher") in chains and ("cnn", "own-big", "teacher") in chains
    assert ("own-small", "own-big", "teacher") in chains and len(chains) == len(set(chains)) == 5
    assert all(costs[c[0]] <= costs[c[1]] for c in chains if len(c) == 3)


def test_options_are_sorted_lossless_and_cheapest_first_and_reported():
    kinds, costs, calib, test = pool()
    ranking = [("cnn", -0.5, 0.6), ("own-small", -0.4, 0.6), ("own-big", -0.2, 0.7)]
    options = compare_cascades(kinds, costs, calib, test, ranking, max_acc_drop=0.05, delta=0.2)
    lossless = [o for o in options if o.lossless]
    assert lossless and options[: len(lossless)] == lossless
    cost = [o.calibration.calib_avg_cost for o in lossless]
    assert cost == sorted(cost)
    rows = [o.as_json() for o in options]
    assert {len(r["members"]) for r in rows} == {2, 3} and all(r["kinds"][-1] == "teacher" for r in rows)
    assert all(0.0 <= t <= 1.0 for r in rows for t in r["thresholds"])
    text = options_markdown(rows, [{"name": "cnn", "kind": "companion", "macs": 5e6, "top1": 0.88,
                                    "delta_c": -0.5, "r_match": 0.6}])  # fmt: skip
    assert "cnn -> teacher" in text and "[" not in text.split("## Every")[0].split("|---|")[-1]


def test_kinds_must_name_one_teacher():
    kinds, costs, calib, test = pool()
    with pytest.raises(ValueError, match="one teacher"):
        compare_cascades({**kinds, "own-big": "teacher"}, costs, calib, test, [])
    with pytest.raises(ValueError, match="kinds"):
        compare_cascades({**kinds, "cnn": "friend"}, costs, calib, test, [])


def test_measured_cascade_exits_as_the_thresholds_say():
    torch.manual_seed(0)
    small, big = nn.Linear(6, 3), nn.Linear(6, 3)
    x = torch.randn(64, 6)
    with torch.no_grad():
        conf = small(x).softmax(1).max(1).values
    threshold = float(conf.median())
    out = measure_cascade([small, big], [threshold], x, 16, [1.0, 10.0], repeats=1, prepare=False)
    assert out["exit_ratios"][0] == pytest.approx(float((conf >= threshold).float().mean()))
    assert out["predicted_speedup"] == pytest.approx(10.0 / (1.0 + 10.0 * (1 - out["exit_ratios"][0])))
    # every member is timed alone, and their times predict the speed-up for the same exits
    t, exited = out["alone_seconds"], out["exit_ratios"][0]
    assert set(t) == {"0", "1"}
    assert out["time_predicted_speedup"] == pytest.approx(t["1"] / (t["0"] + (1 - exited) * t["1"]))
    assert out["staged_speedup"] > 0  # the same cascade run stage by stage over all the images


def test_guaranteed_cascades_keep_to_their_scope_and_records_round_trip(tmp_path):
    kinds, costs, calib, test = pool(n=600)
    ranking = [("cnn", -0.5, 0.6), ("own-small", -0.4, 0.6), ("own-big", -0.2, 0.7)]
    options = guaranteed_cascades(kinds, costs, calib, test, ranking, delta=0.2, tolerances=(0.0, 0.05))
    assert [(o.scope, o.eps) for o in options] == [(s, e) for s in ("own-family", "any") for e in (0.0, 0.05)]
    for o in options:
        row = o.as_json()
        assert row["members"][-1] == "teacher" and row["delta"] == 0.2
        assert o.scope == "any" or "cnn" not in row["members"]
        assert row["certified"] == (len(row["members"]) > 1)
    loose = [o for o in options if o.eps == 0.05]
    assert any(o.as_json()["certified"] for o in loose)  # a 5-point tolerance certifies something here
    path = save_records(tmp_path / "r.safetensors", {"calibration": calib, "test": test}, costs, kinds)
    back, back_costs, back_kinds = load_records(path)
    assert back_costs == costs and back_kinds == kinds
    assert torch.equal(back["test"]["cnn"].probs, test["cnn"].probs)
    assert torch.equal(back["calibration"]["cnn"].labels, calib["cnn"].labels)
