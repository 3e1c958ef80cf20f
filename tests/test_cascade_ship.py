"""Cascades that ship (cascade/files.py, cascade/export.py, dcvit/cascade_files.py): folders written
atomically and read back equal, untrusted cascade.json refused in one line, per-member export that routes as
the eager cascade, and `dcvit cascade --out` / `dcvit eval` on a cascade folder. Tiny random models only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import tiny_vit
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import cascade
import dcvit
from dcvit.cli import main


# --- torch-only members: a fake save/load pair ------------------------------------------------------
def net(d_in: int = 12, k: int = 5, scale: float = 1.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 16), nn.ReLU(), nn.Linear(16, k))
    with torch.no_grad():
        m[3].weight.mul_(scale)  # sharper later members, so confidences spread over (1/k, 1)
    return m.eval()


def fake_save(module: nn.Module, folder: Path) -> None:
    folder.mkdir()
    arch = {"d_in": module[1].in_features, "k": module[3].out_features}
    (folder / "arch.json").write_text(json.dumps(arch))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "weights.safetensors"))


def fake_load(folder: Path) -> nn.Module:
    arch = json.loads((folder / "arch.json").read_text())
    module = net(arch["d_in"], arch["k"])
    module.load_state_dict(load_file(str(folder / "weights.safetensors")))
    return module


def three_member_cascade() -> cascade.Cascade:
    members = [net(scale=6.0, seed=i) for i in range(3)]
    return cascade.Cascade(members, [0.5, 0.45], costs=[1e5, 4e5, 2e6])


PRE = {"input_size": [1, 3, 4], "mean": [0.5], "std": [0.25], "crop_pct": 1.0, "interpolation": "bilinear"}


def save_three(path: Path, **kwargs) -> cascade.Cascade:
    model = three_member_cascade()
    options = dict(
        preprocessing=PRE, names=["tiny", "runs/little", "big"], kinds=["companion", "compressed", "teacher"]
    )
    cascade.save(path, model, fake_save, **{**options, **kwargs})
    return model


def test_round_trip_with_fake_members(tmp_path):
    model = save_three(tmp_path / "c", info={"calibration": {"seed": 3}})
    spec = json.loads((tmp_path / "c" / "cascade.json").read_text())
    assert spec["thresholds"] == [0.5, 0.45] and [m["macs"] for m in spec["members"]] == [1e5, 4e5, 2e6]
    assert [m["folder"] for m in spec["members"]] == ["stage0-tiny", "stage1-little", "stage2-big"]
    loaded = cascade.load(tmp_path / "c", fake_load)
    assert loaded.thresholds == model.thresholds and loaded.costs == model.costs
    assert [m.kind for m in loaded.spec.members] == ["companion", "compressed", "teacher"]
    assert loaded.spec.preprocessing == PRE and loaded.spec.info == {"calibration": {"seed": 3}}
    x = torch.randn(200, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.last_stats == model.last_stats
    assert min(model.last_stats.exit_counts) > 0  # every member answers some samples: routing is exercised


def test_failed_save_leaves_nothing_and_keeps_the_old_cascade(tmp_path):
    def broken(module, folder):
        if "big" in folder.name:
            raise RuntimeError("disk trouble")
        fake_save(module, folder)

    with pytest.raises(RuntimeError):
        cascade.save(tmp_path / "c", three_member_cascade(), broken, preprocessing=PRE, names=["a", "b", "big"])
    assert os.listdir(tmp_path) == []  # no cascade, no temp folder
    save_three(tmp_path / "c")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "c").rglob("*"))
    with pytest.raises(RuntimeError):
        cascade.save(tmp_path / "c", three_member_cascade(), broken, preprocessing=PRE, names=["a", "b", "big"])
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "c").rglob("*")) == before
    assert os.listdir(tmp_path) == ["c"]
    save_three(tmp_path / "c", names=["x", "y", "z"])  # a whole cascade replaces the old one
    assert sorted(os.listdir(tmp_path / "c")) == ["cascade.json", "stage0-x", "stage1-y", "stage2-z"]


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(preprocessing={"mean": [0.5]}), "input_size"),
        (dict(preprocessing={**PRE, "resize": 3}), "unknown"),
        (dict(kinds=["companion", "big", "teacher"]), "kind"),
        (dict(names=["a", "b"]), "one name and one kind per member"),
        (dict(info={"x": object()}), "plain JSON"),
    ],
)
def test_save_refuses_bad_metadata_before_writing(tmp_path, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        save_three(tmp_path / "c", **kwargs)
    assert os.listdir(tmp_path) == []


def test_save_refuses_a_folder_that_is_not_a_cascade(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a cascade folder"):
        save_three(tmp_path / "c")
    with pytest.raises(ValueError, match="has no costs"):
        cascade.save(tmp_path / "d", cascade.Cascade([net()], []), fake_save, preprocessing=PRE)


def _edit(spec: dict, path: str, value) -> dict:
    """spec with the field at dotted `path` set to value (or removed when value is ...)."""
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


CORRUPTIONS = [
    ("thresholds.0", 1.5, "thresholds[0] must be a number in [0, 1]"),
    ("thresholds.1", -0.1, "thresholds[1] must be a number in [0, 1]"),
    ("thresholds.0", "0.5", "thresholds[0] must be a number"),
    ("thresholds.0", True, "thresholds[0] must be a number"),
    ("thresholds.1", ..., "3 members need 2 thresholds"),
    ("thresholds", 0.5, "field 'thresholds' must be a list"),
    ("members", ..., "field 'members' is missing"),
    ("members.2", ..., "2 members need 1 thresholds"),
    ("members.1.macs", -3, "field 'macs' must be a number >= 0"),
    ("members.1.macs", "lots", "field 'macs' must be a number >= 0"),
    ("members.0.kind", "big", "field 'kind' must be one of teacher, compressed, companion"),
    ("members.0.folder", "../../etc", "field 'folder' must be stageI-NAME"),
    ("members.0.folder", "stage1-little", "members share a folder"),
    ("members.0.name", ..., "field 'name' is missing"),
    ("members.0", "tiny", "members[0] must be an object"),
    ("preprocessing.input_size", [1, 3], "'input_size' must be 3 positive integers"),
    ("preprocessing.mean", [0.5, 0.5], "'mean' must be 1 number(s)"),
    ("format", "dcvit-model", "not a cascade file"),
    ("exit_fractions", [0.5, 0.5], "field 'exit_fractions' must be 3 numbers in [0, 1]"),
    ("exit_fractions", [0.5, 0.6, -0.1], "field 'exit_fractions' must be 3 numbers in [0, 1]"),
    ("exit_fractions", [0.5, 0.2, 0.2], "field 'exit_fractions' must sum to 1"),
]


@pytest.mark.parametrize("path,value,fragment", CORRUPTIONS, ids=[f"{p}={v!r}" for p, v, _ in CORRUPTIONS])
def test_corrupted_cascade_json_is_refused_in_one_line(tmp_path, path, value, fragment):
    save_three(tmp_path / "c")
    file = tmp_path / "c" / "cascade.json"
    file.write_text(json.dumps(_edit(json.loads(file.read_text()), path, value)))
    with pytest.raises(cascade.CascadeFileError) as err:
        cascade.load(tmp_path / "c", fake_load)
    assert fragment in str(err.value) and "\n" not in str(err.value) and str(file) in str(err.value)


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (lambda d: (d / "cascade.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / "cascade.json").write_text("[1, 2]"), "must hold a JSON object, not a list"),
        (lambda d: os.rename(d / "stage1-little", d / "elsewhere"), "has no folder stage1-little"),
        (lambda d: (d / "cascade.json").unlink(), "is not a cascade folder"),
    ],
)
def test_broken_cascade_folders_are_refused_in_one_line(tmp_path, damage, fragment):
    save_three(tmp_path / "c")
    damage(tmp_path / "c")
    with pytest.raises(cascade.CascadeFileError, match=fragment) as err:
        cascade.load(tmp_path / "c", fake_load)
    assert "\n" not in str(err.value)


# --- export -----------------------------------------------------------------------------------------
def test_exported_stages_route_like_the_eager_cascade():
    torch.manual_seed(0)
    members = [
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
        net(64, 5, scale=3.0, seed=1),
        net(64, 5, scale=6.0, seed=2),
    ]  # fmt: skip
    probe = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():  # median confidences: about half the rows go on at each stage
        medians = [float(torch.softmax(m.eval()(probe), 1).amax(1).median()) for m in members[:2]]
    model = cascade.Cascade(members, medians, costs=[1.0, 2.0, 8.0])
    exported = cascade.export_stages(model, torch.randn(4, 1, 8, 8))
    assert all(isinstance(p, torch.export.ExportedProgram) for p in exported.programs)
    served = exported.module()
    for n in (256, 1):
        x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = model(x)
            got = served(x)
        torch.testing.assert_close(got, want)
        assert served.last_stats == model.last_stats
    assert min(model.total_stats.exit_counts) > 0  # every member answered some rows of the big batch


# --- dcvit members ----------------------------------------------------------------------------------
def dcvit_members():
    """A by-name CNN companion, a compressed tiny ViT (one block dropped) and its teacher, all 1 x 16 x 16."""
    torch.manual_seed(0)
    teacher = tiny_vit(depth=3)
    compressed = dcvit.drop_blocks(tiny_vit(depth=3), [1])
    cnn = dcvit.create_model("fmnist_cnn")
    return [cnn.eval(), compressed.eval(), teacher]


def macs(models) -> list[int]:
    """What load_cascade recounts: each member's MACs at the cascade's input."""
    return [dcvit.count_macs(m, (1, 16, 16)) for m in models]


def medians(models, x: torch.Tensor) -> list[float]:
    """Thresholds at each member's median confidence on x: about half the rows go on at every stage."""
    with torch.no_grad():
        return [float(torch.softmax(m(x), 1).amax(1).median()) for m in models[:-1]]


def test_round_trip_with_dcvit_members(tmp_path):
    models = dcvit_members()
    x = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    thresholds = medians(models, x)
    path = dcvit.save_cascade(tmp_path / "c", models, thresholds, macs(models), ["fmnist_cnn", "vit-d1", "vit"])
    assert (path / "stage0-fmnist_cnn" / "member.json").is_file()  # no adapter: saved by name
    assert (path / "stage2-vit" / "spec.json").is_file()  # dcvit.save
    loaded = dcvit.load_cascade(path)
    assert [m.kind for m in loaded.spec.members] == ["companion", "compressed", "teacher"]
    assert loaded.spec.preprocessing["input_size"] == [1, 16, 16]
    assert dcvit.eval_transform(loaded) is not None and loaded.pretrained_cfg["input_size"] == (1, 16, 16)
    original = cascade.Cascade(models, thresholds)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)
    assert loaded.last_stats.exit_counts == original.last_stats.exit_counts
    assert min(loaded.last_stats.exit_counts) > 0


def test_untrusted_member_json_is_refused(tmp_path):
    path = dcvit.save_cascade(tmp_path / "c", dcvit_members(), [0.2, 0.25], [1, 3, 5], ["cnn", "d1", "vit"])
    member = path / "stage0-cnn" / "member.json"
    spec = json.loads(member.read_text())
    member.write_text(json.dumps({**spec, "kwargs": {"checkpoint_path": "/tmp/evil.pth"}}))
    with pytest.raises(ValueError, match="checkpoint_path.*not accepted"):
        dcvit.load_cascade(path)
    member.write_text(json.dumps({**spec, "kwargs": {"num_classes": 7}}))
    with pytest.raises(ValueError, match="does not match fmnist_cnn"):
        dcvit.load_cascade(path)


# --- the command line ------------------------------------------------------------------------------
def image_folder(root: Path, classes: int = 10, per_class: int = 3) -> str:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return f"imagefolder:{root}"


def run_json(capsys, *argv) -> dict:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_eval_on_a_cascade_folder(capsys, tmp_path):
    models = dcvit_members()
    data = image_folder(tmp_path / "images")
    loader = dcvit.loader_for(dcvit.load_dataset(data, transform=dcvit.eval_transform(models[-1])), 7)
    thresholds = medians(models, torch.cat([x for x, _ in loader]))
    costs = macs(models)
    path = dcvit.save_cascade(tmp_path / "c", models, thresholds, costs, ["cnn", "d1", "vit"])
    got = run_json(capsys, "eval", "--model", path, "--data", data, "--json", "--quiet", "--batch-size", "7")
    reference = cascade.Cascade(models, thresholds, costs)
    with torch.no_grad():
        right = sum(int((reference(x).argmax(1) == y).sum()) for x, y in loader)
    stats = reference.total_stats
    assert got["n"] == 30 and got["top1"] == right / 30 and got["exit_fractions"] == list(stats.exit_ratios)
    assert got["macs_per_image"] == pytest.approx(stats.avg_cost)
    assert got["macs_reduction"] == pytest.approx(1 - stats.avg_cost / costs[-1])
    assert got["members"] == ["cnn", "d1", "vit"] and got["thresholds"] == thresholds and min(stats.exit_counts) > 0
    spec = json.loads((path / "cascade.json").read_text())
    (path / "cascade.json").write_text(json.dumps({**spec, "thresholds": [1.6, thresholds[1]]}))
    code = main(["eval", "--model", str(path), "--data", data, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "thresholds[0] must be a number in [0, 1]" in err


@pytest.mark.filterwarnings("ignore:saver fmnist_cnn expects mean/std")
def test_cascade_command_writes_a_cascade_that_eval_reproduces(capsys, tmp_path):
    torch.manual_seed(0)
    big, saver = (str(dcvit.save(tiny_vit(depth=d), tmp_path / f"m{d}")) for d in (3, 2))
    data = image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "out"
    study = run_json(capsys, "cascade", "--big", big, "--savers", saver, "fmnist_cnn", "--data", data,
                     "--calibration-size", "20", "--max-acc-drop", "0.9", "--delta", "0.5", "--out", out,
                     "--json", "--quiet")  # fmt: skip
    assert study["cascade_dir"] == str(out / "cascade") and (out / "report.md").is_file()
    spec = cascade.read_spec(out / "cascade")
    assert [m.name for m in spec.members] == [study["saver"], big] and list(spec.thresholds) == study["thresholds"]
    assert spec.info["test"]["top1"] == study["test_accuracy"]
    got = run_json(capsys, "eval", "--model", out / "cascade", "--data", data, "--json", "--quiet")
    assert got["top1"] == study["test_accuracy"] and got["macs_per_image"] == pytest.approx(study["test_avg_macs"])
    assert 0 < got["exit_fractions"][0] < 1  # the saver answers some test images, the big model the others
    assert list(spec.exit_fractions) == got["exit_fractions"]  # recorded for `dcvit macs`: the test split's
