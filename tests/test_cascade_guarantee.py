"""cascade.guarantee and cascade.certify: the committee exit against a brute-force evaluation, the shared-threshold
walk against a per-threshold recount, the guarantee against simulated populations with a known answer, and
committee cascades through save / load / export."""

from __future__ import annotations

import pytest
import torch
from helpers.tools import load_tool
from torch import nn

import cascade
from cascade._checks import conf_correct
from cascade.guarantee import certified, committee_probs, committee_settings, walk_path


def _probs(n: int, k: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=g) * scale, dim=1)


class Fixed(nn.Module):
    """A 'model' whose logits are a fixed function of the input: row i of the table for input value i."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.num_classes = table.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def _brute_force(tables, thresholds, committee, x):
    """Per sample, by hand: run members in order, answer with the mean of the softmaxes so far where the
    committee flag is on, stop at the first stage whose answer's max probability >= its threshold."""
    rows = []
    for value in x[:, 0].long().tolist():
        seen = []
        for i, table in enumerate(tables):
            seen.append(torch.softmax(table[value].float(), dim=0))
            answer = torch.stack(seen).sum(0) / len(seen) if committee[i] else seen[-1]
            if i == len(tables) - 1 or answer.max() >= thresholds[i]:
                rows.append(answer)
                break
    return torch.stack(rows)


@pytest.mark.parametrize("committee", [(False, True), (False, False, True), (False, True, True)])
def test_committee_cascade_matches_brute_force(committee):
    n, k = 64, 5
    tables = [torch.randn(n, k) * 2 for _ in committee]
    thresholds = (0.6,) * (len(committee) - 1)
    x = torch.arange(n)[:, None].float()
    model = cascade.Cascade([Fixed(t) for t in tables], thresholds, [1.0] * len(tables), committee)
    expected = _brute_force(tables, thresholds, committee, x)
    with torch.no_grad():
        forward = torch.softmax(model(x), dim=1)
        staged, _ = cascade.predict_staged(model, x, batch_size=7)
    assert torch.allclose(forward, expected, atol=1e-6)
    assert torch.allclose(torch.softmax(staged, dim=1), expected, atol=1e-6)


def test_committee_probs_is_the_running_mean():
    probs = [_probs(10, 3, seed=s) for s in range(3)]
    out = committee_probs(probs, (False, True, True))
    assert torch.equal(out[0], probs[0])
    assert torch.allclose(out[1], (probs[0] + probs[1]) / 2)
    assert torch.allclose(out[2], (probs[0] + probs[1] + probs[2]) / 3)
    assert len(committee_settings(3, "auto")) == 4
    with pytest.raises(ValueError, match="first"):
        committee_probs(probs, (True, False, False))


@pytest.mark.parametrize("stages", [2, 3])
def test_walk_counts_equal_a_recount_at_every_threshold(stages):
    n, k = 200, 4
    probs = [_probs(n, k, seed=s) for s in range(stages)]
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(9))
    costs = [1.0, 4.0, 9.0][:stages]
    flags = (False,) * (stages - 1) + (True,)
    conf, correct = conf_correct(committee_probs(probs, flags), labels)
    big = probs[-1].argmax(1) == labels
    path = walk_path(conf, correct, big, costs)
    assert bool((path.lambdas[:-1] > path.lambdas[1:]).all())  # strictly descending
    for j, lam in enumerate(path.lambdas.tolist()):
        stage = torch.full((n,), stages - 1)
        for i in reversed(range(stages - 1)):
            stage = torch.where(conf[i] >= lam, i, stage)
        answer = correct.gather(0, stage[None])[0]
        assert int(path.wins[j]) == int((answer & ~big).sum())
        assert int(path.losses[j]) == int((~answer & big).sum())
        assert float(path.cost[j]) == pytest.approx(sum(sum(costs[: s + 1]) for s in stage.tolist()))


def test_certified_test_is_exact_at_known_counts():
    # eps = 0: the exact one-sided sign test. 15 wins, 3 losses: P(Bin(18, 1/2) <= 3) = 0.0038.
    assert bool(certified(torch.tensor([15]), torch.tensor([3]), 1000, 0.0, 0.01))
    assert not bool(certified(torch.tensor([15]), torch.tensor([3]), 1000, 0.0, 0.003))
    assert not bool(certified(torch.tensor([0]), torch.tensor([0]), 1000, 0.0, 0.05))  # no evidence of a gain
    # eps > 0: no disagreement in 5000 samples bounds the risk below 0.1 points.
    assert bool(certified(torch.tensor([0]), torch.tensor([0]), 5000, 0.001, 0.05))
    assert not bool(certified(torch.tensor([0]), torch.tensor([0]), 500, 0.001, 0.05))


def _population(n: int, gain: float, seed: int):
    """Little/big probabilities over a finite population: the little model's confidence tracks being right,
    and it is right more often than the big model where it is confident by `gain` (negative: worse)."""
    g = torch.Generator().manual_seed(seed)
    k = 10
    labels = torch.randint(0, k, (n,), generator=g)
    conf = torch.rand(n, generator=g)
    big_right = torch.rand(n, generator=g) < 0.85
    little_right = torch.rand(n, generator=g) < (0.55 + 0.4 * conf + gain * conf).clamp(0, 1)

    def probs(right, c):
        guess = torch.where(right, labels, (labels + 1) % k)
        p = torch.full((n, k), 0.0)
        p.scatter_(1, guess[:, None], (0.15 + 0.85 * c)[:, None])
        rest = (1 - p.sum(1, keepdim=True)) / (k - 1)
        return torch.where(p > 0, p, rest)

    return [probs(little_right, conf), probs(big_right, torch.rand(n, generator=g))], labels


def test_guarantee_holds_on_simulated_draws():
    """The population is known: draw calibration sets from it, certify, and count how often the chosen
    cascade's population accuracy falls below the big model's - eps. It must stay near or below delta."""
    probs, labels = _population(20000, gain=-0.05, seed=3)
    n_pop, eps, delta, draws = labels.numel(), 0.005, 0.2, 60
    big_acc = (probs[1].argmax(1) == labels).double().mean()
    violations, saved = 0, []
    g = torch.Generator().manual_seed(0)
    for _ in range(draws):
        idx = torch.randint(0, n_pop, (1000,), generator=g)
        cal = cascade.certify([p[idx] for p in probs], labels[idx], [1.0, 10.0], eps, delta, committee=False)
        conf = probs[0].max(1).values
        answer = torch.where(conf >= cal.thresholds[0], probs[0].argmax(1), probs[1].argmax(1))
        acc = (answer == labels).double().mean()
        violations += bool(acc < big_acc - eps)
        saved.append(cal.calib_cost_reduction)
    # 60 draws at delta 0.2: the binomial 99% upper quantile is 21; the test fails if the walk had no control.
    assert violations <= 21
    assert max(saved) > 0.2  # and it is not vacuous: it does let samples exit


def test_certify_without_gain_falls_back_and_committee_is_chosen_on_data():
    probs, labels = _population(4000, gain=-0.3, seed=5)
    worse = cascade.certify(probs, labels, [1.0, 10.0], 0.0, 0.05, committee=False)
    assert worse.fallback and worse.committee == (False, False) and worse.thresholds == (1.0,)
    # A second opinion that is right where the big model is wrong gives the committee a real gain.
    big = probs[1]
    helper = torch.nn.functional.one_hot(labels, 10).float() * 0.6 + 0.04
    cal = cascade.certify([helper, big], labels, [1.0, 10.0], 0.0, 0.05, committee="auto")
    assert not cal.fallback and cal.guaranteed and cal.families == 2


def test_committee_cascade_saves_loads_and_exports(tmp_path):
    n, k = 16, 4
    tables = [torch.randn(n, k) for _ in range(2)]
    model = cascade.Cascade([Fixed(t) for t in tables], (0.5,), [1.0, 5.0], committee=(False, True))
    x = torch.arange(n)[:, None].float()
    folder = cascade.save(
        tmp_path / "c",
        model,
        lambda m, f: (f.mkdir(), torch.save(m.table, f / "t.pt")),
        preprocessing={"input_size": [1, 1, 1]},
    )
    back = cascade.load(folder, lambda f: Fixed(torch.load(f / "t.pt", weights_only=True)))
    assert back.committee == (False, True) and back.spec.committee == (False, True)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
        exported = cascade.export_stages(model, x).module()
        assert torch.allclose(exported(x), model(x), atol=1e-6)


def test_cascade_json_committee_is_checked(tmp_path):
    import json

    model = cascade.Cascade([Fixed(torch.randn(4, 2)), Fixed(torch.randn(4, 2))], (0.5,), [1.0, 2.0])
    folder = cascade.save(tmp_path / "c", model, lambda m, f: f.mkdir(), preprocessing={"input_size": [1, 1, 1]})
    spec = json.loads((folder / "cascade.json").read_text())
    for bad in ([True, False], [False], "yes", [False, 1]):
        spec["committee"] = bad
        with pytest.raises(cascade.CascadeFileError, match="committee"):
            cascade.files.parse_spec(spec, "x")
    spec.pop("committee")
    spec["version"] = 1
    assert cascade.files.parse_spec(spec, "x").committee == (False, False)


def test_bench_guarantee_runs_on_saved_records(tmp_path):
    """tools/bench_guarantee.py end to end on a tiny pool: a row per rule and saver, the table and the PNG."""
    import json

    from dcvit.studies.guaranteed import save_records

    bench = load_tool("bench_guarantee")
    probs, labels = _population(600, gain=0.0, seed=1)
    split = {"big": probs[1], "fmnist_cnn": probs[0]}
    records = {
        part: {n: cascade.Recorded(p[rows], labels[rows]) for n, p in split.items()}
        for part, rows in (("calibration", slice(0, 300)), ("test", slice(300, 600)))
    }
    path = save_records(tmp_path / "r.safetensors", records, {"big": 10.0, "fmnist_cnn": 1.0},
                        {"big": "teacher", "fmnist_cnn": "companion"})  # fmt: skip
    out = tmp_path / "out"
    assert bench.main(["--records", str(path), "--draws", "4", "--sizes", "200", "--eps", "0", "--out", str(out)]) == 0
    rows = json.loads((out / "guarantee.json").read_text())["rows"]
    assert {r["rule"] for r in rows} == set(bench.RULES) and all(r["draws"] == 4 for r in rows)
    assert (out / "guarantee.png").stat().st_size > 0 and "| off | yes |" in (out / "guarantee.md").read_text()


def test_bench_own_family_prints_an_oracle_bound(tmp_path, capsys):
    """tools/bench_own_family.py: a member that equals the teacher can save exactly its cost's complement."""
    from dcvit.studies.guaranteed import save_records

    bench = load_tool("bench_own_family")
    probs, labels = _population(200, gain=0.0, seed=2)
    recs = {n: cascade.Recorded(p, labels) for n, p in {"big": probs[1], "copy": probs[1].clone()}.items()}
    path = save_records(tmp_path / "r.safetensors", {"calibration": recs, "test": recs},
                        {"big": 10.0, "copy": 4.0}, {"big": "teacher", "copy": "compressed"})  # fmt: skip
    assert bench.main(["--records", str(path), "--eps", "0"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[0] == "copy" and row[2] == "0.00%" and row[3] == "60.0%"
