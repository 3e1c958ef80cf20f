"""Serving cascades (cascade/serve.py, cascade/programs.py, dcvit/exporting.py, `dcvit export`, `dcvit macs` on a
cascade folder): a scriptable Cascade, cascade.load without a loader, exported programs that answer as
`dcvit eval` on Fashion-MNIST test images (served with torch alone), and the refusals."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.cli import one_line_error, run_cli
from helpers.models import tiny_vit
from safetensors.torch import load_file, save_file
from torch import nn

import cascade
import dcvit

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
ROOT = Path(__file__).resolve().parents[1]
HAS_ONNX = all(importlib.util.find_spec(p) for p in cascade.programs.ONNX_PACKAGES)


def tiny_members() -> list[nn.Module]:
    """A by-name CNN companion, a compressed tiny ViT (one block dropped) and its teacher, all 1 x 16 x 16."""
    torch.manual_seed(0)
    return [dcvit.create_model("fmnist_cnn").eval(), dcvit.drop_blocks(tiny_vit(depth=3), [1]).eval(), tiny_vit(3)]


def medians(models, x: torch.Tensor) -> list[float]:
    """Thresholds at each member's median confidence on x: about half the rows go on at every stage."""
    with torch.no_grad():
        return [float(torch.softmax(m(x), 1).amax(1).median()) for m in models[:-1]]


def batch(n: int, seed: int = 0, size=(1, 16, 16)) -> torch.Tensor:
    return torch.randn(n, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_cascade_dir(tmp_path_factory) -> Path:
    models = tiny_members()
    costs = [dcvit.count_macs(m, (1, 16, 16)) for m in models]
    path = tmp_path_factory.mktemp("c") / "c"
    return dcvit.save_cascade(
        path, models, medians(models, batch(64)), costs, ["cnn", "d1", "vit"], committee=[False, False, True]
    )


# --- TorchScript and cascade.load without a loader ----------------------------------------------------
def test_script_of_a_loaded_cascade_answers_as_the_cascade(tiny_cascade_dir):
    model = dcvit.load_cascade(tiny_cascade_dir)
    scripted = torch.jit.script(model)
    for x in (batch(200, 1), batch(3, 2)):
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
        assert scripted._last_counts == list(model.last_stats.exit_counts)
    assert min(model.total_stats.exit_counts) > 0 and scripted._total_counts == list(model.total_stats.exit_counts)
    assert model.committee == (False, False, True)  # the committee's averaging is compiled in too


def test_script_stops_where_every_row_has_left():
    """Threshold 0: every row leaves at the first member, and the later ones are never called (as in Python)."""
    calls = []
    first, second = nn.Linear(4, 3), nn.Linear(4, 3)
    model = cascade.Cascade([first, second], [0.0])
    scripted = torch.jit.script(model)
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), first(x))
    assert scripted._last_counts == [5, 0]
    second.register_forward_hook(lambda *args: calls.append(1))
    model(x)
    assert calls == [] and model.last_stats.exit_counts == (5, 0)


def test_load_needs_no_loader_for_dcvit_members(tiny_cascade_dir):
    x = batch(100, 3)
    plain, checked = cascade.load(tiny_cascade_dir), dcvit.load_cascade(tiny_cascade_dir)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), checked(x), rtol=0, atol=0)
    assert plain.spec == checked.spec and plain.last_stats == checked.last_stats


def test_load_without_dcvit_says_what_is_needed(tiny_cascade_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "dcvit.cascade_files", None)  # import dcvit.cascade_files now fails
    with pytest.raises(cascade.CascadeFileError, match="needs the dcvit package") as err:
        cascade.load(tiny_cascade_dir)
    assert "\n" not in str(err.value) and "dcvit export" in str(err.value)


def test_load_refuses_a_folder_of_unknown_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"x")
    with pytest.raises(cascade.CascadeFileError, match="holds no member cascade.load can read"):
        cascade.programs.load_member(tmp_path / "m")


# --- dcvit export of a cascade folder: routed answers equal dcvit eval's --------------------------------
@pytest.fixture(scope="module")
def fmnist_cascade(tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """fmnist_cnn -> fmnist_vit_tiny (shipped weights) with the committee exit, its threshold the CNN's median
    confidence on Fashion-MNIST test images 300-399 (so both members answer), and test images 0-299 with their
    labels (no confidence among them sits exactly on the threshold, where float rounding would decide)."""
    cnn, vit = (dcvit.create_model(n, pretrained=True).eval() for n in ("fmnist_cnn", "fmnist_vit_tiny"))
    test = dcvit.load_dataset("fashion-mnist", train=False, transform=dcvit.eval_transform(vit))
    x, y = (torch.cat(t) for t in zip(*dcvit.loader_for(test, 100, limit=400)))
    costs = [dcvit.count_macs(m) for m in (cnn, vit)]
    path = tmp_path_factory.mktemp("fmnist") / "cascade"
    dcvit.save_cascade(path, [cnn, vit], medians([cnn, vit], x[300:]), costs, ["fmnist_cnn", "fmnist_vit_tiny"],
                       committee=[False, True])  # fmt: skip
    return path, x[:300], y[:300]


FORMATS = [
    pytest.param("pt2", marks=pytest.mark.slow),
    "torchscript",
    pytest.param("onnx", marks=[pytest.mark.slow, pytest.mark.skipif(not HAS_ONNX, reason="onnx not installed")]),
]


@pytest.mark.parametrize("format", FORMATS)
def test_exported_cascade_answers_as_dcvit_eval(capsys, tmp_path, fmnist_cascade, format):
    path, x, y = fmnist_cascade
    code, out, err = run_cli(capsys, "export", "--model", path, "--format", format, "--out", tmp_path / "x", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["kind"] == "cascade" and len(report["programs"]) == 2
    exported, source = cascade.read_spec(tmp_path / "x"), cascade.read_spec(path)
    assert replace(exported, info=source.info) == source  # the routing file, unchanged; info says from where
    assert exported.info == {"exported_from": str(path), "program_format": format}
    code, out, err = run_cli(capsys, "eval", "--model", path, "--limit", 300, "--batch-size", 100, "--json", "--quiet")
    assert code == 0, err
    evaluated = json.loads(out)
    served = cascade.load_exported(tmp_path / "x")
    answers = torch.cat([served.predict(x[i : i + 100]) for i in range(0, 300, 100)])  # eval's batches
    with torch.no_grad():
        eager = dcvit.load_cascade(path)(x).argmax(1)
    assert torch.equal(answers, eager)
    assert int((answers == y).sum()) / 300 == evaluated["top1"]
    assert list(served.module.total_stats.exit_ratios) == evaluated["exit_fractions"]
    assert 0 < evaluated["exit_fractions"][0] < 1  # both members answer some images


@pytest.mark.slow
def test_exported_cascade_is_served_with_torch_alone(capsys, tmp_path, fmnist_cascade):
    """A fresh process where importing dcvit or timm fails loads the export and answers as the cascade."""
    path, x, _ = fmnist_cascade
    assert run_cli(capsys, "export", "--model", path, "--out", tmp_path / "x")[0] == 0
    save_file({"x": x}, str(tmp_path / "in.safetensors"))
    code = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dcvit", "timm"):
            raise ImportError("not installed here: " + name)
sys.meta_path.insert(0, Refuse())
import cascade, torch
from safetensors.torch import load_file, save_file
served = cascade.load_exported({str(tmp_path / "x")!r})
x = load_file({str(tmp_path / "in.safetensors")!r})["x"]
save_file({{"logits": served(x)}}, {str(tmp_path / "out.safetensors")!r})
assert not any(m.split(".")[0] in ("dcvit", "timm") for m in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
    with torch.no_grad():
        want = dcvit.load_cascade(path)(x)
    torch.testing.assert_close(load_file(str(tmp_path / "out.safetensors"))["logits"], want)


# --- dcvit export of a model, and the refusals ----------------------------------------------------------
class Shifted(nn.Module):
    """A program whose logits are off by 0.01."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x) + 0.01


def refused(capsys, argv: list, fragment: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    one_line_error(code, err, fragment)


def test_exported_model_answers_as_the_model(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "export", "--model", "fmnist_cnn", "--format", "torchscript", "--out", tmp_path / "m"
    )
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "m")) == [".dcvit-export", "export.json", "model.ts"]
    served = cascade.load_exported(tmp_path / "m")
    model = dcvit.create_model("fmnist_cnn", pretrained=True).eval()
    x = batch(5, 4, (1, 28, 28))
    with torch.no_grad():
        torch.testing.assert_close(served(x), model(x))
    assert served.preprocessing["input_size"] == [1, 28, 28] and "mean" in served.preprocessing
    # an earlier export's folder may be replaced, by another format too
    assert run_cli(capsys, "export", "--model", "fmnist_cnn", "--out", tmp_path / "m")[0] == 0
    assert sorted(os.listdir(tmp_path / "m")) == [".dcvit-export", "export.json", "model.pt2"]


def test_export_refuses_in_one_line_and_writes_nothing(capsys, tmp_path, tiny_cascade_dir, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused(capsys, ["export", "--model", "fmnist_cnn", "--out", tmp_path / "mine"], "did not write")
    refused(capsys, ["export", "--model", tiny_cascade_dir, "--out", tiny_cascade_dir], "overlaps")
    read = cascade.programs.load_program
    monkeypatch.setattr(cascade.programs, "load_program", lambda file: Shifted(read(file)))
    refused(capsys, ["export", "--model", tiny_cascade_dir, "--out", tmp_path / "x"], "does not answer")
    refused(capsys, ["export", "--model", "fmnist_cnn", "--out", tmp_path / "y"], "does not answer")
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no folder, no temporary folder


def test_onnx_without_its_packages_is_one_line(capsys, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = run_cli(capsys, "export", "--model", "fmnist_cnn", "--format", "onnx", "--out", tmp_path / "o")
    one_line_error(code, err, "missing: ", "onnxruntime)", "pip install")
    assert not (tmp_path / "o").exists()


def test_a_pt2_program_with_a_pickled_object_is_refused(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    cascade.save_program(model, torch.randn(2, 4), "pt2", tmp_path / "model.pt2")
    assert isinstance(cascade.load_program(tmp_path / "model.pt2"), nn.Module)
    with zipfile.ZipFile(tmp_path / "model.pt2") as src, zipfile.ZipFile(tmp_path / "bad.pt2", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_constants_config.json"):
                data = json.dumps({"config": {"evil": {"path_name": "opaque_obj_0"}}}).encode()
            dst.writestr(item, data)
    with pytest.raises(cascade.CascadeFileError, match="'evil' is not a tensor"):
        cascade.load_program(tmp_path / "bad.pt2")


# --- dcvit macs of a cascade folder --------------------------------------------------------------------
def test_macs_of_a_cascade_folder(capsys, tmp_path, tiny_cascade_dir):
    models = tiny_members()
    costs = [dcvit.count_macs(m, (1, 16, 16)) for m in models]
    path = dcvit.save_cascade(tmp_path / "c", models, [0.5, 0.5], costs, ["cnn", "d1", "vit"],
                              exit_fractions=[0.5, 0.3, 0.2])  # fmt: skip
    code, out, err = run_cli(capsys, "macs", "--model", path, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert [m["macs"] for m in got["members"]] == costs and got["exit_fractions"] == [0.5, 0.3, 0.2]
    assert got["expected_macs_per_image"] == pytest.approx(costs[0] + 0.5 * costs[1] + 0.2 * costs[2])
    code, out, err = run_cli(capsys, "macs", "--model", tiny_cascade_dir)  # no fractions recorded
    assert code == 0 and "no exit fractions recorded" in out, err
    refused(capsys, ["macs", "--model", path, "--input-size", 1, 8, 8], "--input-size does not apply")
