"""tools/bench_recovery.py: its combination syntax and its report (the model work is the benchmark's)."""

import json

import pytest
from helpers.tools import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("bench_recovery")


def test_a_combination_is_parsed_into_typed_config_changes(tool):
    name, changes = tool.parse_combo("best=final_epochs:5,final_select:true,mimic_views:crop-mixup,mimic_logits:0.5")
    assert name == "best"
    assert changes == {"final_epochs": 5, "final_select": True, "mimic_views": "crop-mixup", "mimic_logits": 0.5}
    with pytest.raises(ValueError, match="mimic_views must be one of"):
        tool.parse_combo("bad=mimic_views:rotate")


def test_the_report_pairs_each_variant_with_the_default_of_its_seed(tool, tmp_path, capsys):
    row = lambda cell, seed, top1, seconds: {"cell": cell, "seed": seed, "shots": 100, "budget": 0.4, "top1": top1,
                                             "seconds": seconds}  # fmt: skip
    rows = [
        row("screen/default/f0.4/s100/seed1", 1, 0.88, 100.0),
        row("screen/default/f0.4/s100/seed2", 2, 0.86, 300.0),
        row("screen/final/f0.4/s100/seed1", 1, 0.89, 20.0),
        row("screen/final/f0.4/s100/seed2", 2, 0.88, 30.0),
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tool.report(tmp_path)
    out = capsys.readouterr().out
    assert "screen, auto, 100 shots" in out and "| default (no final recovery) | 2 | 87.00 | 1.00 |" in out
    assert "| final | 2 | 88.50 (+1.50) | 1.15 |" in out  # (1.2 + 1.1) / 2


def test_a_saved_member_goes_through_the_final_recovery(tool, tmp_path):
    # the screen recovers members read back from disk: what it builds must be what final_recovery takes
    from helpers.models import tiny_data, tiny_vit

    import synth
    from dcvit.config import CompressConfig
    from dcvit.driver import compress, final_recovery
    from dcvit.engine import Engine

    model, data = tiny_vit(depth=3), tiny_data()
    metric_set = synth.synthesize(model, 8, iterations=5, seed=0, image_size=(1, 16, 16), progress=False)
    config = CompressConfig(epochs=2, batch_size=8, structure="dcvit", progress=False, final_epochs=0)
    compress(model, 0.8, data, config, metric_set=metric_set).save(tmp_path / "member")
    member, summary = tool.saved_member(tmp_path / "member")
    engine = Engine(model, data, config.replace(final_epochs=1, final_average=0.5), metric_set=metric_set)
    try:
        done = final_recovery(engine, member)
    finally:
        engine.workspace.cleanup()
    assert done.history[-1]["final"] and done.history[-1]["averaged_epochs"] >= 1
    assert done.structure == tuple(summary["structure"]) and done.macs == summary["macs"]
