import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.models import tiny_data, tiny_vit

import dcvit
import synth
from dcvit.config import ABLATIONS, BLOCK_DROP, CompressConfig
from dcvit.driver import compress, compress_family, plan_for
from dcvit.engine import Engine
from dcvit.mimic import refine, trainable_parameters

HELPER = Path(__file__).parent / "helpers" / "rank_candidates.py"


FAST = CompressConfig(epochs=2, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_end_to_end_meets_target_and_is_deterministic():
    model = tiny_vit()
    a = compress(model, 0.7, tiny_data(), FAST)
    b = compress(model, 0.7, tiny_data(), FAST)
    assert a.macs <= a.plan.macs_target and len(a.blocks) == a.plan.n_blocks
    assert a.blocks[0] == min(a.scores, key=a.scores.get)  # progressive starts from the best candidate
    assert same_weights(a.model, b.model)
    assert a.model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_a_ready_plan_is_used_as_given():
    model = tiny_vit()
    plan = plan_for(model, 0.7, FAST)
    a, b = compress(model, plan, tiny_data(), FAST), compress(model, 0.7, tiny_data(), FAST)
    assert a.plan is plan and a.plan == b.plan and a.blocks == b.blocks and same_weights(a.model, b.model)


def test_mimicking_trains_front_only_and_lowers_the_loss():
    model = tiny_vit()
    engine = Engine(model, tiny_data(), FAST.replace(epochs=30))
    plan = dcvit.plan(model, 0.85)
    student = engine.build(model, plan, [1])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    fit = engine.fine_tune(student, [1], 30, "t")
    after = student.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert fit.losses[-1] < fit.losses[0]
    assert any(k.startswith("blocks.2.") for k in changed) and "pos_embed" in changed
    assert not any(k.startswith(("blocks.3.", "blocks.4.", "norm.", "head.")) for k in changed)


def test_refine_trains_every_block_but_not_the_tail_and_is_seeded():
    teacher = tiny_vit()
    student = compress(teacher, 0.7, tiny_data(), FAST).model
    before = {k: v.clone() for k, v in student.state_dict().items()}
    a, b = student, copy.deepcopy(student)
    fit = refine(a, teacher, tiny_data(32), FAST, epochs=6)
    refine(b, teacher, tiny_data(32), FAST, epochs=6)
    changed = {k for k, v in a.state_dict().items() if not torch.equal(before[k], v)}
    assert fit.losses[-1] < fit.losses[0] and same_weights(a, b)
    assert any(k.startswith("blocks.4.") for k in changed)  # the last block learns too, unlike Eq. 3 in the driver
    assert not any(k.startswith(("norm.", "head.")) for k in changed)
    with pytest.raises(ValueError, match="epochs"):
        refine(a, teacher, tiny_data(), FAST, epochs=0)


def test_trainable_parameters_never_include_the_head():
    model = tiny_vit()
    head = {id(p) for p in model.head.parameters()}
    assert not head & {id(p) for p in trainable_parameters(model, None)}


def test_resume_after_a_kill_gives_identical_weights(tmp_path, monkeypatch):
    model, data = tiny_vit(), tiny_data()
    whole = compress(model, 0.6, data, FAST, workdir=tmp_path / "whole")
    calls = {"n": 0}
    real = Engine.fine_tune

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # killed inside the progressive phase (3 trials, then steps)
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "fine_tune", dying)
    with pytest.raises(KeyboardInterrupt):
        compress(model, 0.6, data, FAST, workdir=tmp_path / "killed")
    monkeypatch.setattr(Engine, "fine_tune", real)
    with pytest.raises(ValueError, match="resume"):
        compress(model, 0.6, data, FAST, workdir=tmp_path / "killed")
    resumed = compress(model, 0.6, data, FAST, workdir=tmp_path / "killed", resume=True)
    assert resumed.blocks == whole.blocks and same_weights(resumed.model, whole.model)


def test_resume_refuses_changed_settings(tmp_path):
    compress(tiny_vit(), 0.8, tiny_data(), FAST, workdir=tmp_path / "w")
    with pytest.raises(ValueError, match="settings differ"):
        compress(tiny_vit(), 0.8, tiny_data(), FAST.replace(lr=1e-2), workdir=tmp_path / "w", resume=True)


@pytest.mark.parametrize("config", [FAST, FAST.replace(**BLOCK_DROP)], ids=["dcvit", "drop"])
def test_family_reuses_trials_and_the_metric_set_and_is_dense(monkeypatch, config):
    """One synthetic set for the family, and each trial once: a trial is shared by every target whose plan edits
    blocks alike (the baseline's plans all drop whole blocks, so 3 targets share 4 trials)."""
    tuned, synthesized = [], []
    real_tune, real_synth = Engine.fine_tune, synth.synthesize
    monkeypatch.setattr(Engine, "fine_tune", lambda self, *a, **k: tuned.append(a[3]) or real_tune(self, *a, **k))
    monkeypatch.setattr(synth, "synthesize", lambda *a, **k: synthesized.append(1) or real_synth(*a, **k))
    # no cache: a set another test left there would be taken from it (the count below is the family's own)
    results = compress_family(tiny_vit(depth=6), [0.9, 0.8, 0.7], tiny_data(), config, metric_cache=False)
    macs = [r.macs for r in results]
    assert macs == sorted(macs, reverse=True) and all(r.macs <= r.plan.macs_target for r in results)
    trials = [key for key in tuned if key.startswith("trial-")]
    widths = {(r.plan.mlp_hidden, r.plan.remove_attention) for r in results}
    assert len(trials) == len(set(trials)) == len(widths) * len(results[0].plan.candidate_blocks)
    assert len(synthesized) == (1 if config.metric in (None, "kl") else 0)  # None: kl for a classifier
    if config.structure == "drop":
        assert len(widths) == 1  # the sharing case: 4 trials for 3 targets, not 12


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_runs(name):
    result = compress(tiny_vit(), 0.7, tiny_data(), FAST.replace(**ABLATIONS[name]))
    assert result.macs <= result.plan.macs_target
    if name == "extra-block":
        assert result.plan.n_blocks == compress(tiny_vit(), 0.7, tiny_data(), FAST).plan.n_blocks + 1


def test_block_drop_baseline_drops_whole_blocks():
    result = compress(tiny_vit(), 0.8, tiny_data(), FAST.replace(**BLOCK_DROP))
    assert all(isinstance(result.model.blocks[b], torch.nn.Identity) for b in result.blocks)
    assert result.macs <= result.plan.macs_target


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": -1.0}, {"metric": "accuracy"}, {"structure": "prune"}])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        FAST.replace(**bad)


def test_bad_inputs_fail_before_work():
    with pytest.raises(ValueError, match="empty"):
        compress(tiny_vit(), 0.7, torch.utils.data.TensorDataset(torch.zeros(0, 1, 16, 16)), FAST)
    with pytest.raises(ValueError, match="floor"):
        compress(tiny_vit(), 0.01, tiny_data(), FAST)


@pytest.mark.slow
def test_two_process_accelerate_launch_gives_the_same_ranking(tmp_path):
    dcvit.save(tiny_vit(), tmp_path / "model")
    torch.save(tiny_data().tensors[0], tmp_path / "data.pt")
    args = [str(tmp_path / "model"), str(tmp_path / "data.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu on a machine without GPUs starts gloo CPU processes (plain --cpu starts a single process).
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    subprocess.run(
        launcher + [str(HELPER)] + args + [str(tmp_path / "w2"), str(tmp_path / "two.json")],
        check=True,
        env=env,
        capture_output=True,
        timeout=240,
    )
    subprocess.run(
        [sys.executable, str(HELPER)] + args + [str(tmp_path / "w1"), str(tmp_path / "one.json")],
        check=True,
        env=env,
        capture_output=True,
        timeout=240,
    )
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one == two
    processes = {json.loads(p.read_text())["process"] for p in (tmp_path / "w2").glob("trial-*/meta.json")}
    assert processes == {0, 1}  # the candidates really were split


def test_engine_jitter_default_stays_the_measured_one_and_none_follows_the_model():
    assert CompressConfig().synth_jitter == 1 / 28
    with pytest.raises(ValueError, match="synth_jitter"):
        CompressConfig(synth_jitter="wide")
    engine = Engine(tiny_vit(), tiny_data(), FAST.replace(synth_jitter=None))
    assert engine.metric_set.config["jitter"] == pytest.approx(2 / 16)  # tiny_vit: patch 4 at 16 px
