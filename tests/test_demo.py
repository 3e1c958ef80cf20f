"""`dcvit demo --fast` end to end on the shipped teacher (the same code path as `make demo`)."""

import json

import pytest

from dcvit.cli import main


@pytest.mark.slow
def test_fast_demo_writes_a_complete_report(tmp_path, capsys):
    assert main(["demo", "--fast", "--quiet", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"teacher", "auto", "dcvit", "block_drop", "cascade", "seconds"} <= set(report)
    assert {"name", "top1", "macs"} <= set(report["teacher"])
    assert all(
        {"target", "macs", "top1", "blocks", "mlp_hidden", "structure"} <= set(r)
        for r in report["dcvit"] + report["auto"]
    )
    keys = {"members", "kinds", "thresholds", "top1", "macs_reduction", "predicted_speedup", "throughput_speedup"}
    keys.add("committee")
    assert keys <= set(report["cascade"]) and all(keys <= set(c) for c in report["cascades"])
    # one guaranteed entry per scope and tolerance; the shipped cascade is the 'any' one at eps 0
    entries = {(g["scope"], g["eps"]): g for g in report["guaranteed"]}
    assert set(entries) == {(s, e) for s in ("own-family", "any") for e in (0.0, 0.001, 0.005)}
    for g in report["guaranteed"]:
        assert {"delta", "members", "committee", "top1", "macs_reduction"} <= set(g) and g["delta"] == 0.05
        assert g["members"][-1] == report["teacher"]["name"]
        if g["scope"] == "own-family":
            assert all(m not in report["companions"] for m in g["members"])
    assert report["cascade"]["members"] == entries[("any", 0.0)]["members"]
    shapes = {tuple(c["kinds"]) for c in report["cascades"]}
    assert {("companion", "teacher"), ("compressed", "teacher"), ("companion", "compressed", "teacher")} <= shapes
    assert ("compressed", "compressed", "teacher") in shapes
    assert all(len(c["thresholds"]) == len(c["members"]) - 1 for c in report["cascades"])
    assert {r["kind"] for r in report["savers"]} == {"compressed", "companion"}
    refined = [r for r in report["savers"] if r["refined_images"]]  # --fast refines the 83% member on 200 images
    assert [r["refined_images"] for r in refined] == [200] and refined[0]["name"].endswith("-refined")
    teacher_macs = report["teacher"]["macs"]
    # Block dropping and DC-ViT rows are compared at the same MACs (to two decimals of the teacher's).
    for drop, dcvit in zip(report["block_drop"], report["dcvit"]):
        assert round(drop["macs"] / teacher_macs, 2) == round(dcvit["macs"] / teacher_macs, 2)
        assert dcvit["macs"] <= drop["macs"] and len(dcvit["blocks"]) == len(drop["dropped"]) + 1
    # auto runs at the same budgets (and is never above them)
    for drop, auto in zip(report["block_drop"], report["auto"]):
        assert (
            auto["macs"] <= drop["macs"]
            and round(auto["macs"] / teacher_macs, 2) >= round(drop["macs"] / teacher_macs, 2) - 0.01
        )
    assert report["cascade"]["macs_per_sample"] <= teacher_macs
    assert "Three structures at equal MACs" in (tmp_path / "report.md").read_text()
    for name in ("report.md", "accuracy_vs_macs.png", "metric_vs_error.png", "cascade_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "cascade" in capsys.readouterr().out
    # the chosen cascade ships as a folder that `dcvit eval` reproduces (--fast evaluates 2,000 test images)
    assert main(["eval", "--model", str(tmp_path / "cascade"), "--limit", "2000", "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["top1"] == pytest.approx(report["cascade"]["top1"], abs=1e-9)


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--fast", "--quiet", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"
