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
