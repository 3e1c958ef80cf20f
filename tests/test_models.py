"""The shipped models load offline from the package and are as accurate as BENCHMARKS.md says."""

import socket

import pytest
import timm
import torch

import dcvit
from dcvit.data import eval_transform, load_dataset
from dcvit.evaluation import evaluate, loader_for


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


# Top-1 on the fixed first 2,000 test images (full-test figures are in BENCHMARKS.md).
FLOORS = {"fmnist_vit12": 0.895, "fmnist_vit_tiny": 0.85, "fmnist_cnn": 0.88}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_model_accuracy_on_fixed_subset(name):
    model = timm.create_model(name, pretrained=True)
    assert model.pretrained_cfg["input_size"] == (1, 28, 28) and model.pretrained_cfg["mean"] == (0.286,)
    test = load_dataset("fashion-mnist", train=False, transform=eval_transform(model))
    assert evaluate(model, loader_for(test, 500, limit=2000), progress=False)["top1"] >= FLOORS[name]


def test_companion_costs():
    teacher = dcvit.count_macs(timm.create_model("fmnist_vit12"))
    assert dcvit.count_macs(timm.create_model("fmnist_vit_tiny")) <= 0.25 * teacher
    assert dcvit.count_macs(timm.create_model("fmnist_cnn")) <= 0.1 * teacher


def _hit_rate(model, made):
    with torch.no_grad():
        return (model(made.images).argmax(1) == made.labels).float().mean().item()


@pytest.mark.slow
def test_synthetic_set_from_the_teacher_is_classified_as_its_labels():
    import synth

    teacher = timm.create_model("fmnist_vit12", pretrained=True).eval()
    # jitter 1 px: the setting measured for this 28x28 teacher (CompressConfig.synth_jitter; BENCHMARKS.md)
    made = synth.synthesize(teacher, 20, iterations=100, warmup=5, jitter=1 / 28, seed=0, progress=False)
    control = synth.synthesize(teacher, 20, iterations=100, warmup=5, jitter=1 / 28, seed=0, lr=0.0, progress=False)
    assert _hit_rate(teacher, made) >= 0.85 and _hit_rate(teacher, control) <= 0.3


@pytest.mark.parametrize("name", ["fmnist_cnn", "fmnist_vit12"])
def test_prepared_shipped_model_answers_the_same(name):
    import cascade

    model = timm.create_model(name, pretrained=True).eval()
    test = load_dataset("fashion-mnist", train=False, transform=eval_transform(model))
    x = torch.stack([test[i][0] for i in range(256)])
    prepared = cascade.prepare_for_inference(model, x[:64])  # checked on 64 images, compared on 256
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), rtol=1e-4, atol=1e-4)
        assert (prepared(x).argmax(1) == model(x).argmax(1)).all()


def load_tool(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.slow
def test_bench_calibration_tool_runs(capsys):
    assert (
        load_tool("bench_calibration").main(
            ["--calibration-size", "500", "--test-limit", "500", "--drops", "0", "0.01"]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 + 1 + 2 * 2 * 2 + 1 and lines[-1].startswith("tolerance held on test")


def test_bench_cascade_tool_runs(capsys):
    tool = load_tool("bench_cascade")
    assert (
        tool.main(
            [
                "--calibration-size",
                "400",
                "--images",
                "64",
                "--batch-sizes",
                "32",
                "--repeats",
                "1",
                "--threads",
                str(torch.get_num_threads()),
            ]
        )
        == 0
    )  # keep the suite's thread count
    out = capsys.readouterr().out
    assert "fmnist_cnn -> fmnist_vit12" in out and len(out.strip().splitlines()) == 4
