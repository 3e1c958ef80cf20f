"""The structure and metric registries are plug-in points: a structure or a metric defined and registered
here, outside the library, plans, compresses and is offered by CompressConfig and the CLI like the built-ins.
The built-ins keep their names, their settings and their plan types."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from helpers.models import tiny_data, tiny_vit

import dcvit
from dcvit import metrics
from dcvit import structure_registry as registry
from dcvit.cli import main
from dcvit.config import BLOCK_DROP, CompressConfig
from dcvit.metrics import Metric, register_metric
from dcvit.planning import Plan, SearchPlan
from dcvit.result import make_result
from dcvit.structures import Structure, get_structure, register_structure, structure_names

TOY, TOY_METRIC = "test-first-blocks", "test-half-kl"
TINY = CompressConfig(epochs=1, trial_epochs=1, batch_size=8, synth_images=2, synth_iterations=1, progress=False)


class FirstBlocks(Structure):
    """A toy structure: Eq. 1-2's widths on the first n candidate blocks, one fine-tune, no trial."""

    name = TOY
    summary = "a toy: the paper's widths on the first candidate blocks"
    units_by = "random"

    def plan(self, model, target_macs, *, input_size=None, candidate_blocks=None, blocks=None, steps=None):
        paper = dcvit.plan(model, target_macs, input_size=input_size, candidate_blocks=candidate_blocks)
        return replace(paper, structure=self.name)

    def build(self, engine, base, plan, blocks):
        return dcvit.apply_plan(base, plan, blocks, seed=engine.config.seed)

    def run(self, engine, plan):
        blocks = list(plan.candidate_blocks[: plan.n_blocks])
        model, fit, seconds = engine.build_and_tune("toy", engine.teacher, plan, blocks, blocks, engine.config.epochs)
        trial = engine.score(model, blocks[0], fit.final_loss, seconds)
        history = [{"blocks": blocks, "train_loss": fit.final_loss}]
        return make_result(engine, plan, model, blocks=blocks, history=history, seconds={}, scores={0: trial.score})

    def describe(self, plan):
        return f"toy: the first {plan.n_blocks} candidate block(s), MLP {plan.mlp_hidden_original} -> {plan.mlp_hidden}"


class HalfKl(Metric):
    """A toy metric: half of Eq. 6's KL."""

    name = TOY_METRIC

    def score(self, engine, model, x, kl, train_loss):
        return kl / 2


@pytest.fixture
def toys(monkeypatch):
    """Register the toys for one test only: the registries are restored afterwards (the built-ins loaded
    first, so that the copy holds them)."""
    structure_names()
    monkeypatch.setattr(registry, "_STRUCTURES", dict(registry._STRUCTURES))
    monkeypatch.setattr(metrics, "_METRICS", dict(metrics._METRICS))
    register_structure(FirstBlocks)
    register_metric(HalfKl)


def test_a_registered_structure_plans_and_compresses(toys):
    model, config = tiny_vit(), TINY.replace(structure=TOY, metric=TOY_METRIC)
    plan = dcvit.plan_for(model, 0.7, config)
    assert plan.structure == TOY and plan.describe().startswith("toy: the first")
    result = dcvit.compress(model, 0.7, tiny_data(), config)
    assert result.blocks == plan.candidate_blocks[: plan.n_blocks]
    assert result.macs == plan.macs_planned and result.summary()["structure_kind"] == TOY
    assert [s["edit"] != "kept" for s in result.structure] == [b in result.blocks for b in range(5)]
    assert result.scores[0] >= 0  # scored by the toy metric, on the synthetic set


def test_a_registered_structure_is_offered_by_config_and_cli(toys, capsys):
    assert TOY in structure_names() and CompressConfig().for_structure(TOY).units_by == "random"
    assert main(["plan", "--model", "fmnist_vit_tiny", "--target-macs", "0.7", "--structure", TOY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["structure"] == TOY


def test_unknown_names_are_refused_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"structure must be one of \('auto', 'dcvit', 'drop', 'mlp'\)"):
        CompressConfig(structure="nope")
    with pytest.raises(ValueError, match=r"metric must be one of \('kl', 'mse', 'train_loss', None\)"):
        CompressConfig(metric="nope")
    with pytest.raises(ValueError, match="got 'nope'"):
        CompressConfig().for_structure("nope")


def test_built_in_settings_and_plan_types():
    assert BLOCK_DROP == {"structure": "drop", "metric": "train_loss", "progressive": False}
    assert CompressConfig().for_structure("drop") == CompressConfig().replace(**BLOCK_DROP)
    assert [CompressConfig(structure=s).units_by for s in structure_names()] == [
        "activation", "random", "random", "activation"
    ]  # fmt: skip
    model = tiny_vit()
    for name in structure_names():
        plan = get_structure(name).plan(model, 0.7)
        assert plan.structure == name and isinstance(plan, SearchPlan if name in ("auto", "mlp") else Plan)


def test_search_plan_json_keeps_the_keys_plans_had():
    plan = dcvit.plan_for(tiny_vit(), 0.7, CompressConfig())
    assert isinstance(plan, SearchPlan) and not hasattr(plan, "n_blocks")
    payload = plan.as_dict()
    assert payload["n_blocks"] == payload["steps"] == plan.steps and payload["macs_planned"] == plan.macs_target
    assert payload["mlp_hidden"] == plan.mlp_hidden_original and payload["remove_attention"] is False
    width = plan.mlp_hidden_original
    assert plan.record() == {"mlp_hidden": width, "mlp_hidden_original": width, "remove_attention": False, "steps": 2}


def test_plan_search_refuses_a_structure_that_does_not_search():
    with pytest.raises(ValueError, match="plan_search is for the search structures"):
        dcvit.planning.plan_search(tiny_vit(), 0.7, structure="dcvit")


def test_built_ins_load_on_the_first_lookup_and_a_plug_in_keeps_its_name():
    """In a fresh process: importing the registry loads no structure module; a plug-in registered before
    the first lookup keeps its name when the built-ins load."""
    code = (
        "import sys\n"
        "from dcvit.structures import Structure, get_structure, register_structure, structure_names\n"
        "assert 'dcvit.structures.dcvit' not in sys.modules\n"
        "@register_structure\n"
        "class Mine(Structure):\n"
        "    name = 'dcvit'\n"
        "assert type(get_structure('dcvit')) is Mine and structure_names() == ('auto', 'dcvit', 'drop', 'mlp')\n"
        "assert 'dcvit.structures.auto' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
