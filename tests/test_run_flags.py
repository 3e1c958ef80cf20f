"""Where and how a model runs, and how it is built: --device, --mixed-precision, --model-kwargs, --checkpoint on
every command that builds or runs a model; headless models (num_classes=0) and their metric; --clean.

Tiny random-init models, in-process through dcvit.cli.main; a fresh interpreter where Accelerate's per-process
state must start unset (a precision other than this process's).
"""

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli import one_line_error, run_cli
from helpers.models import tiny_data, tiny_vit
from safetensors.torch import save_file

import dcvit
from dcvit.accel import available_devices, check_device, make_accelerator
from dcvit.cli import build_parser
from dcvit.cli.common import model_kwarg
from dcvit.config import CompressConfig
from dcvit.factory import resolve_model
from dcvit.workspace import remove_checkpoints

ROOT = Path(__file__).resolve().parents[1]
SMOKE = CompressConfig(epochs=1, trial_epochs=1, batch_size=8, synth_images=4, synth_iterations=5, search_steps=1)
TINY = ["img_size=16", "patch_size=4", "embed_dim=32", "depth=3", "num_heads=2", "in_chans=1", "num_classes=10"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def tiny_headless():
    torch.manual_seed(0)
    return dcvit.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, in_chans=1, num_classes=0
    ).eval()


def commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices


# --- 1. every command that builds or runs a model takes the same options --------------------------------------
@pytest.mark.parametrize("command", ["macs", "plan", "bench", "eval", "synth", "compress", "family", "cascade"])
def test_model_commands_share_the_options(command):
    options = commands()[command]._option_string_actions
    assert {"--device", "--model-kwargs", "--checkpoint"} <= set(options)
    # MACs do not depend on the precision: macs and plan count, the others run the model
    assert ("--mixed-precision" in options) == (command not in ("macs", "plan"))


def test_model_kwargs_read_json_literals_else_strings():
    assert model_kwarg("img_size=224") == ("img_size", 224)
    assert model_kwarg("drop_rate=0.1") == ("drop_rate", 0.1)
    assert model_kwarg("dynamic_img_size=true") == ("dynamic_img_size", True)
    assert model_kwarg("init_values=null") == ("init_values", None)
    assert model_kwarg("img_size=[32, 48]") == ("img_size", [32, 48])
    assert model_kwarg("global_pool=avg") == ("global_pool", "avg")
    assert model_kwarg("act=a=b") == ("act", "a=b")
    for bad in ("img_size", "=3", "2x=3"):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            model_kwarg(bad)


# --- 2. --device and --mixed-precision -------------------------------------------------------------------------
def test_devices_are_checked_in_one_line():
    assert check_device("cpu") == "cpu" and check_device(None) is None and "cpu" in available_devices()
    with pytest.raises(ValueError, match=r"'gpu' is not a device; accepted: cpu, cuda, cuda:N, mps"):
        check_device("gpu")
    with pytest.raises(ValueError, match="is not a device"):
        check_device("cpu:1")
    with pytest.raises(ValueError, match="CompressConfig.device"):
        CompressConfig(device="tpu")
    assert CompressConfig(device=" CPU ").device == "cpu"


@NO_CUDA
def test_a_missing_cuda_device_is_a_one_line_error(capsys):
    with pytest.raises(ValueError, match="device cuda:1: no CUDA device here; accepted: cpu"):
        make_accelerator(device="cuda:1")
    code, _, err = run_cli(capsys, "eval", "--model", "fmnist_vit12", "--device", "cuda")
    one_line_error(code, err, "dcvit eval: error: --device cuda: no CUDA device here; accepted: cpu")
    code, _, err = run_cli(capsys, "macs", "--model", "fmnist_vit12", "--device", "gpu")
    one_line_error(code, err, "--device 'gpu' is not a device; accepted: cpu, cuda, cuda:N, mps")


@NO_CUDA
def test_fp16_on_the_cpu_is_refused_rather_than_silently_fp32(capsys):
    code, _, err = run_cli(capsys, "bench", "--model", "fmnist_vit12", "--mixed-precision", "fp16")
    one_line_error(code, err, "--mixed-precision fp16 needs a GPU", "accepted: no, bf16")


def test_eval_runs_on_the_chosen_device_and_says_so_first(capsys):
    code, out, err = run_cli(capsys, "eval", "--model", "fmnist_vit12", "--device", "cpu", "--limit", "16", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["device"] == "cpu" and result["mixed_precision"] == "no" and result["n"] == 16
    assert err.splitlines()[0] == "dcvit: evaluating on cpu, 1 process(es), mixed precision no"


def test_macs_and_plan_say_where_they_count(capsys):
    for argv in (["macs", "--model", "fmnist_vit12"], ["plan", "--model", "fmnist_vit12", "--target-macs", "0.7"]):
        code, _, err = run_cli(capsys, *argv, "--device", "cpu")
        assert code == 0 and err.splitlines()[0].endswith("on cpu, 1 process(es), mixed precision no"), err


def test_bf16_eval_says_its_precision(tmp_path):
    """A fresh process: this one's Accelerate state already holds precision 'no'."""
    model = dcvit.save(tiny_vit(depth=2), tmp_path / "m")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")} | {"OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "dcvit", "eval", "--model", str(model), "--limit", "8", "--json"]
    done = subprocess.run([*argv, "--mixed-precision", "bf16"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mixed_precision"] == "bf16"
    assert done.stderr.splitlines()[0] == "dcvit: evaluating on cpu, 1 process(es), mixed precision bf16"


# --- 3. --model-kwargs and --checkpoint ------------------------------------------------------------------------
def test_model_kwargs_reach_the_builder(capsys):
    code, out, _ = run_cli(capsys, "macs", "--model", "vit_tiny_patch16_224", "--model-kwargs", *TINY, "--json")
    assert code == 0
    tiny = json.loads(out)
    assert tiny["input_size"] == [1, 16, 16] and len(tiny["attn"]) == 3
    assert tiny["total"] == dcvit.count_macs(tiny_vit(depth=3))  # helpers' tiny ViT, built from its name
    code, _, err = run_cli(capsys, "macs", "--model", "vit_tiny_patch16_224", "--model-kwargs", "depth=2", "depth=3")
    one_line_error(code, err, "--model-kwargs sets depth more than once")
    code, _, err = run_cli(capsys, "plan", "--model", "vit_tiny_patch16_224", "--target-macs", "0.7",
                           "--model-kwargs", "pretrained=true")  # fmt: skip
    one_line_error(code, err, "model kwarg 'pretrained' would load weights", "--checkpoint")
    code, _, err = run_cli(capsys, "macs", "--model", "vit_tiny_patch16_224", "--model-kwargs", "no_such_setting=1")
    one_line_error(code, err, "cannot be built with no_such_setting=1")


def test_a_saved_model_takes_no_kwargs(capsys, tmp_path):
    model = dcvit.save(tiny_vit(depth=2), tmp_path / "m")
    code, _, err = run_cli(capsys, "macs", "--model", model, "--model-kwargs", "img_size=32")
    one_line_error(code, err, "apply to a model name", "saved model")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny 10-class ViT's weights as safetensors, and as a training script's torch checkpoint (wrapped, with
    DDP's prefix), plus the model they came from."""
    root = tmp_path_factory.mktemp("weights")
    model = tiny_vit(depth=3)
    state = model.state_dict()
    save_file(state, root / "w.safetensors")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "w.pth")
    return model, root


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_a_checkpoint_gives_the_model_its_weights(weights, name):
    original, root = weights
    kwargs = dict(model_kwarg(t) for t in TINY)
    model = resolve_model("vit_tiny_patch16_224", model_kwargs=kwargs, checkpoint=root / name)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model.eval()(x), original(x))


def test_a_headless_model_takes_a_classifiers_checkpoint(weights, caplog):
    original, root = weights
    kwargs = dict(model_kwarg(t) for t in TINY) | {"num_classes": 0}
    with caplog.at_level(logging.INFO, logger="dcvit"):
        model = resolve_model("vit_tiny_patch16_224", model_kwargs=kwargs, checkpoint=root / "w.safetensors")
    assert "classifier weights left out (head.bias, head.weight)" in caplog.text
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model.eval()(x), original.forward_head(original.forward_features(x), pre_logits=True))


def test_checkpoints_that_do_not_fit_are_one_line_errors(weights, capsys, tmp_path):
    _, root = weights
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not weights
    base = ["macs", "--model", "vit_tiny_patch16_224", "--model-kwargs"]
    cases = [
        ([*TINY[:3], "depth=2", *TINY[4:], "--checkpoint", root / "w.pth"], "12 unexpected (blocks.2."),
        ([*TINY[:3], "depth=4", *TINY[4:], "--checkpoint", root / "w.pth"], "12 missing (blocks.3."),
        ([*TINY[1:], "img_size=32", "--checkpoint", root / "w.safetensors"], "pos_embed (1, 17, 32) vs (1, 65, 32)"),
        ([*TINY, "--checkpoint", tmp_path / "module.pt"], "cannot be read with weights_only=True"),
        ([*TINY, "--checkpoint", tmp_path / "none.safetensors"], "does not exist"),
    ]
    for argv, fragment in cases:
        code, _, err = run_cli(capsys, *base, *argv)
        one_line_error(code, err, "checkpoint", fragment)


# --- 4. headless models ----------------------------------------------------------------------------------------
def test_a_headless_model_is_ranked_by_mse_and_told(caplog):
    data = tiny_data(8)
    with caplog.at_level(logging.INFO, logger="dcvit"):
        result = dcvit.compress(tiny_headless(), 0.8, data, SMOKE)
    assert "headless model (num_classes=0" in caplog.text and "(metric mse)" in caplog.text
    assert "metric kl on a headless model" not in caplog.text
    # the closing figure is the output MSE to the teacher on the shots, measured here again
    x = torch.stack([data[i][0] for i in range(8)])
    mse = (result.model.eval()(x) - tiny_headless()(x)).pow(2).mean().item()
    assert result.fidelity["shots"] == 8 and result.fidelity["output_mse"] == pytest.approx(mse, rel=1e-4)
    assert f"output MSE to the teacher on the 8 shots: {result.fidelity['output_mse']:.4g}" in caplog.text


def test_kl_asked_for_on_a_headless_model_runs_with_a_warning(caplog):
    with caplog.at_level(logging.INFO, logger="dcvit"):
        result = dcvit.compress(tiny_headless(), 0.8, tiny_data(8), SMOKE.replace(metric="kl"))
    warned = [r for r in caplog.records if "metric kl on a headless model" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "output_mse" in result.fidelity


def test_a_classifier_keeps_kl_and_reports_top1_agreement(caplog):
    data = tiny_data(8)
    teacher = tiny_vit(depth=3)
    with caplog.at_level(logging.INFO, logger="dcvit"):
        result = dcvit.compress(teacher, 0.8, data, SMOKE)
    assert "headless" not in caplog.text
    x = torch.stack([data[i][0] for i in range(8)])
    agree = (result.model.eval()(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert result.fidelity == {"shots": 8, "top1_agreement": agree}
    assert f"top-1 agreement with the teacher on the 8 shots: {100 * agree:.1f}%" in caplog.text


# --- 5. --clean ------------------------------------------------------------------------------------------------
def run_folder(root: Path) -> Path:
    """A run folder as a compression leaves it, with a user's file and folder beside the checkpoints."""
    (root / "trial-b1" / "model").mkdir(parents=True)
    (root / "trial-b1" / "meta.json").write_text("{}")
    (root / "metric_set").mkdir()
    (root / "metric_set" / "meta.json").write_text("{}")
    (root / "settings.json").write_text("{}")
    (root / "notes.txt").write_text("mine")
    (root / "mine" / "model").mkdir(parents=True)
    (root / "mine" / "photo.png").write_bytes(b"x")
    return root


def test_remove_checkpoints_removes_only_what_a_run_writes(tmp_path):
    root = run_folder(tmp_path / "checkpoints")
    assert remove_checkpoints(root) == 3
    assert sorted(p.name for p in root.iterdir()) == ["mine", "notes.txt"]
    assert (root / "mine" / "photo.png").exists()
    for p in (root / "notes.txt", root / "mine" / "photo.png", root / "mine" / "model"):
        p.rmdir() if p.is_dir() else p.unlink()
    (root / "mine").rmdir()
    assert remove_checkpoints(root) == 0  # no settings.json: not a run folder, nothing goes
    run_folder(tmp_path / "only")
    for p in ("notes.txt", "mine/photo.png", "mine/model", "mine"):
        q = tmp_path / "only" / p
        q.rmdir() if q.is_dir() else q.unlink()
    remove_checkpoints(tmp_path / "only")
    assert not (tmp_path / "only").exists()  # emptied: the folder goes too


def test_clean_keeps_the_checkpoints_of_a_failed_run(capsys, tmp_path, monkeypatch):
    model = dcvit.save(tiny_vit(depth=3), tmp_path / "m")

    def full_disk(self, folder, **extra):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dcvit.driver.CompressionResult.save", full_disk)
    argv = ["compress", "--model", model, "--shots", "8", "--target-macs", "0.8", "--out", tmp_path / "run",
            "--epochs", "1", "--trial-epochs", "1", "--synth-iterations", "5", "--clean", "--quiet"]  # fmt: skip
    code, _, err = run_cli(capsys, *argv)
    one_line_error(code, err, "No space left on device")
    assert (tmp_path / "run" / "checkpoints" / "settings.json").is_file()  # there for --resume


# --- 6. documented ---------------------------------------------------------------------------------------------
def test_the_readme_documents_each_flag_and_the_cpu_only_install():
    readme, makefile = (ROOT / "README.md").read_text(), (ROOT / "Makefile").read_text()
    shared = {flag for command in commands().values() for flag in command._option_string_actions}
    for flag in ("--device", "--mixed-precision", "--model-kwargs", "--checkpoint", "--metric", "--clean"):
        assert flag in shared and f"| `{flag}" in readme, flag  # a row of the README's table
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "download.pytorch.org" not in makefile  # make setup keeps pip's default torch


def test_a_run_folder_records_the_decided_metric_but_not_the_device(tmp_path):
    """settings.json fingerprints what decides the result: the metric as decided (kl for a classifier, as before
    the default was None), not the device, so a run may resume on another one."""
    dcvit.compress(tiny_vit(depth=3), 0.8, tiny_data(8), SMOKE.replace(device="cpu"), workdir=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "settings.json").read_text())["config"]
    assert saved["metric"] == "kl" and "device" not in saved
