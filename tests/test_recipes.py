"""The recipes/ scripts, run in-process in --smoke mode (tiny random ViT, generated images, one thread), plus
one-line errors for bad input. recipes/ is not a package, so the scripts are loaded from their files."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import dcvit

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Smoke runs must never ask timm for pretrained weights (no network here: a download would hang)."""
    create = timm.create_model

    def guarded(*args, pretrained=False, **kwargs):
        assert not pretrained, "a smoke run requested pretrained weights"
        return create(*args, **kwargs)
    monkeypatch.setattr(timm, "create_model", guarded)
    torch.set_num_threads(1)


def check_model_dir(folder: Path, summary: dict) -> None:
    """A dcvit.load-able model whose MACs are what result.json says and no more than its target."""
    model = dcvit.load(folder / "model")
    macs = dcvit.count_macs(model)
    assert macs == summary["macs"] and macs < summary["macs_original"]
    assert macs <= summary["target"] * summary["macs_original"]
    assert json.loads((folder / "result.json").read_text())["macs"] == macs


def assert_one_line_error(capsys, excinfo, fragment: str) -> None:
    err = capsys.readouterr().err
    assert excinfo.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "error:" in err and fragment in err
    assert "Traceback" not in err


def test_vit_imagenet_smoke(tmp_path, capsys):
    out = tmp_path / "vit"
    summary = load_recipe("vit_imagenet").main(["--smoke", "--out", str(out), "--target-macs", "0.75"])
    printed = capsys.readouterr().out
    assert "plan: compress" in printed and "MACs" in printed
    assert summary["target"] == 0.75 and summary["blocks"]
    check_model_dir(out, summary)
    # A finished run is refused without --resume, and --resume reproduces it from the checkpoints.
    with pytest.raises(SystemExit) as excinfo:
        load_recipe("vit_imagenet").main(["--smoke", "--out", str(out)])
    assert_one_line_error(capsys, excinfo, "--resume")
    again = load_recipe("vit_imagenet").main(["--smoke", "--out", str(out), "--resume"])
    assert again["macs"] == summary["macs"] and again["blocks"] == summary["blocks"]


@pytest.mark.parametrize("argv,fragment", [
    (["--smoke", "--target-macs", "0"], "--target-macs"),
    (["--smoke", "--target-macs", "0.2"], "floor"),
    ([], "--data is required"),
    (["--data", "/no/such/imagenet"], "does not exist"),
])
def test_vit_imagenet_bad_input(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as excinfo:
        load_recipe("vit_imagenet").main(argv + ["--out", str(tmp_path / "bad")])
    assert_one_line_error(capsys, excinfo, fragment)
    assert not (tmp_path / "bad").exists()


def test_dense_family_smoke(tmp_path, capsys):
    out = tmp_path / "family"
    summaries = load_recipe("dense_family").main(["--smoke", "--out", str(out)])
    printed = capsys.readouterr().out
    targets = [s["target"] for s in summaries]
    assert targets == [0.9, 0.83, 0.75, 0.67]
    assert "| target | MACs |" in printed and "MLP width" in printed
    macs = [s["macs"] for s in summaries]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)
    for s in summaries:
        check_model_dir(out / f"target-{s['target']:g}", s)
    family = json.loads((out / "family.json").read_text())
    assert [s["macs"] for s in family["family"]] == macs


@pytest.mark.parametrize("argv,fragment", [
    (["--smoke", "--targets", "0.9", "0"], "--targets"),
    (["--smoke", "--targets", "0.9", "0.9"], "duplicates"),
    (["--data", "/no/such/imagenet"], "does not exist"),
])
def test_dense_family_bad_input(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as excinfo:
        load_recipe("dense_family").main(argv + ["--out", str(tmp_path / "bad")])
    assert_one_line_error(capsys, excinfo, fragment)


def test_saver_for_cascade_smoke(tmp_path, capsys):
    extra = dcvit.save(load_recipe("saver_for_cascade")._smoke.tiny_model(depth=2, seed=1), tmp_path / "extra")
    out = tmp_path / "saver"
    result = load_recipe("saver_for_cascade").main(["--smoke", "--out", str(out), "--extra-savers", str(extra)])
    printed = capsys.readouterr().out
    assert f"Chosen saver: {result['saver']}" in printed and "fewer MACs per image" in printed
    assert result["saver"] in {"dcvit-0.75", "dcvit-0.67", str(extra)}
    report = (out / "report.md").read_text()
    assert "Chosen saver" in report and "dcvit-0.67" in report and str(extra) in report
    assert (out / "curves.png").stat().st_size > 0
    study = json.loads((out / "study.json").read_text())
    assert study["saver"] == result["saver"] and len(study["ranking"]) == 3
    for s in result["family"]:
        check_model_dir(out / f"target-{s['target']:g}", s)


@pytest.mark.parametrize("argv,fragment", [
    (["--smoke", "--targets", "0.3"], "floor"),
    (["--smoke", "--extra-savers", "no_such_model"], "unknown model"),
    (["--smoke", "--extra-savers", "vit_tiny_patch16_224"], "does not accept"),
    (["--smoke", "--max-acc-drop", "2"], "--max-acc-drop"),
    (["--data", "/no/such/imagenet"], "does not exist"),
])
def test_saver_for_cascade_bad_input(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as excinfo:
        load_recipe("saver_for_cascade").main(argv + ["--out", str(tmp_path / "bad")])
    assert_one_line_error(capsys, excinfo, fragment)


@pytest.mark.parametrize("name", ["vit_imagenet", "dense_family", "saver_for_cascade"])
def test_help_shows_an_example(capsys, name):
    with pytest.raises(SystemExit) as excinfo:
        load_recipe(name).main(["--help"])
    text = capsys.readouterr().out
    assert excinfo.value.code == 0 and f"python recipes/{name}.py" in text and "--smoke" in text


def test_script_from_the_command_line():
    """Started as a script (helpers found next to it), a bad target exits 2 with one line on stderr."""
    proc = subprocess.run([sys.executable, str(RECIPES / "dense_family.py"), "--smoke", "--out", "unused",
                           "--targets", "1.0"], capture_output=True, text=True, cwd=RECIPES.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--targets" in proc.stderr
