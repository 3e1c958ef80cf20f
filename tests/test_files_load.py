"""dcvit.load (dcvit/files.py) against hostile model files: spec.json stays inert (offline, no checkpoint paths,
no hub names, no allocation before the shapes agree) and every bad file is one line naming the file."""

import json
import os
import pickle
import shutil

import pytest
import torch
import torchvision
from helpers.models import small_vit, tiny_swin
from safetensors.torch import load_file, save_file

import dcvit
from dcvit.arch import timm_vit
from dcvit.cli import main
from dcvit.storage import ModelFileError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small saved ViT with one edit; each test edits a copy."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("saved") / "m"
    dcvit.save(dcvit.drop_blocks(small_vit(depth=3), [1]), folder)
    return folder


@pytest.fixture
def model_dir(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "m")
    return tmp_path / "m"


def edit_spec(folder, change):
    spec = json.loads((folder / "spec.json").read_text())
    (folder / "spec.json").write_text(json.dumps(change(spec)))


def set_base(**fields):
    return lambda spec: {**spec, "base": {**spec["base"], **fields}}


def set_kwargs(**kwargs):
    return lambda spec: {**spec, "base": {**spec["base"], "kwargs": {**spec["base"]["kwargs"], **kwargs}}}


# --- spec.json stays inert ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,value",
    [
        ("checkpoint_path", "evil.pth"),
        ("pretrained_cfg_overlay", {"file": "evil.pth"}),
        ("pretrained", True),
        ("features_only", True),
        ("pretrained_cfg", {"hf_hub_id": "someone/evil"}),
        ("device", "cuda"),
        ("act_layer", "os.system"),
    ],
)
def test_spec_kwargs_that_load_files_or_go_online_are_refused(model_dir, key, value):
    class Boom:
        def __reduce__(self):
            return (open, (str(model_dir / "pwned"), "w"))

    (model_dir / "evil.pth").write_bytes(pickle.dumps({"state_dict": Boom()}))
    edit_spec(model_dir, set_kwargs(**{key: value}))
    with pytest.raises(ModelFileError, match=key) as info:
        dcvit.load(model_dir)
    assert "spec.json" in str(info.value) and "\n" not in str(info.value)
    assert "accepted" in str(info.value) or "must be" in str(info.value)
    assert not (model_dir / "pwned").exists()


@pytest.mark.parametrize(
    "name",
    [
        "hf-hub:timm/vit_tiny_patch16_224",
        "hf_hub:timm/vit_tiny_patch16_224",
        "timm/vit_tiny_patch16_224",
        "local-dir:/tmp/x",
        "../vit_tiny_patch16_224",
        "vit_tiny_patch16_224.augreg_in21k",
        "no_such_model",
        7,
        None,
    ],
)
def test_spec_name_must_be_a_registered_timm_name(model_dir, name):
    edit_spec(model_dir, set_base(name=name))
    with pytest.raises(ModelFileError, match="registered timm model name"):
        dcvit.load(model_dir)


def test_huge_spec_is_refused_before_anything_is_allocated(model_dir, monkeypatch):
    real_build = timm_vit.TimmViTAdapter.build

    def meta_only(spec):  # a real build of this spec would allocate over a terabyte
        assert torch.empty(0).device.type == "meta", "built for real before the shapes were checked"
        return real_build(spec)

    monkeypatch.setattr(timm_vit.TimmViTAdapter, "build", staticmethod(meta_only))
    edit_spec(model_dir, set_kwargs(embed_dim=24576, depth=48, num_heads=48))
    with pytest.raises(ModelFileError, match="spec.json: base asks for 48 blocks"):  # refused before any build
        dcvit.load(model_dir)
    edit_spec(model_dir, set_kwargs(depth=3))
    with pytest.raises(ModelFileError, match="spec.json: base embed_dim=24576 is wider than any tensor"):
        dcvit.load(model_dir)


@pytest.mark.parametrize(
    "family,kwargs,key",
    [
        ("swin", {"checkpoint_path": "x.pth"}, "checkpoint_path"),
        ("torchvision", {"norm_layer": "torch.nn.LayerNorm"}, "norm_layer"),
        ("torchvision", {"hidden_dim": 32.5}, "hidden_dim"),
    ],
)
def test_every_adapter_has_a_whitelist(tmp_path, family, kwargs, key):
    if family == "swin":
        model = tiny_swin()
    else:
        model = torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=7
        )
    dcvit.save(model, tmp_path / "m")
    assert set(dcvit.load(tmp_path / "m").state_dict()) == set(model.state_dict())
    edit_spec(tmp_path / "m", set_kwargs(**kwargs))
    with pytest.raises(ModelFileError, match=key):
        dcvit.load(tmp_path / "m")


def test_load_only_creation_args_are_not_saved(tmp_path):
    model = dcvit.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        num_classes=10,
        pretrained_cfg_overlay={"mean": (0.1, 0.2, 0.3)},
    )
    dcvit.save(model, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert "pretrained_cfg_overlay" not in spec["base"]["kwargs"]
    assert dcvit.load(tmp_path / "m").pretrained_cfg["mean"] == (0.1, 0.2, 0.3)  # kept in the data config


# --- bad files: one line naming the file, from the API and from the CLI --------------------------
def _other_weights(folder):
    dcvit.save(small_vit(depth=2), folder.parent / "other")
    shutil.copy(folder.parent / "other" / "model.safetensors", folder / "model.safetensors")


def _renamed_weight(folder):
    tensors = load_file(folder / "model.safetensors")
    tensors["extra.weight"] = tensors.pop("head.weight")
    save_file(tensors, folder / "model.safetensors")


def _resized_weight(folder):
    tensors = load_file(folder / "model.safetensors")
    tensors["head.bias"] = torch.zeros(11)
    save_file(tensors, folder / "model.safetensors")


BAD_FILES = {
    "spec is a list": (lambda f: edit_spec(f, lambda s: [s]), "spec.json"),
    "spec is null": (lambda f: edit_spec(f, lambda s: None), "spec.json"),
    "spec not JSON": (lambda f: (f / "spec.json").write_text('{"format": '), "spec.json"),
    "spec not UTF-8": (lambda f: (f / "spec.json").write_bytes(b"\xff\xfe{}"), "spec.json"),
    "no adapter": (lambda f: edit_spec(f, lambda s: {k: v for k, v in s.items() if k != "adapter"}), "spec.json"),
    "unknown adapter": (lambda f: edit_spec(f, lambda s: {**s, "adapter": "nope"}), "spec.json"),
    "base not an object": (lambda f: edit_spec(f, lambda s: {**s, "base": "vit"}), "spec.json"),
    "kwargs not an object": (lambda f: edit_spec(f, set_base(kwargs=[1])), "spec.json"),
    "edit without op": (lambda f: edit_spec(f, lambda s: {**s, "edits": [{"block": 1}]}), "spec.json"),
    "edit not an object": (lambda f: edit_spec(f, lambda s: {**s, "edits": [3]}), "spec.json"),
    "edit block out of range": (
        lambda f: edit_spec(f, lambda s: {**s, "edits": [{"op": "drop", "block": 9}]}),
        "spec.json",
    ),
    "edit units mistyped": (
        lambda f: edit_spec(
            f, lambda s: {**s, "edits": [{"op": "edit", "block": 0, "attention": True, "kept_units": "all"}]}
        ),
        "spec.json",
    ),
    "unknown architecture": (lambda f: edit_spec(f, set_base(name="vit_nonexistent_patch1")), "spec.json"),
    "not a ViT": (lambda f: edit_spec(f, set_base(name="fmnist_cnn", kwargs={})), "spec.json"),
    "heads do not divide": (lambda f: edit_spec(f, set_kwargs(num_heads=5)), "spec.json"),
    "depth is a string": (lambda f: edit_spec(f, set_kwargs(depth="3")), "spec.json"),
    "data_config not an object": (lambda f: edit_spec(f, lambda s: {**s, "data_config": [3, 32, 32]}), "spec.json"),
    "input_size not 3 ints": (
        lambda f: edit_spec(f, lambda s: {**s, "data_config": {"input_size": [3, 32]}}),
        "spec.json",
    ),
    "mean not numbers": (lambda f: edit_spec(f, lambda s: {**s, "data_config": {"mean": "0.5"}}), "spec.json"),
    "truncated weights": (lambda f: os.truncate(f / "model.safetensors", 1000), "model.safetensors"),
    "empty weights": (lambda f: os.truncate(f / "model.safetensors", 0), "model.safetensors"),
    "pickle named safetensors": (
        lambda f: (f / "model.safetensors").write_bytes(pickle.dumps({"head.weight": torch.zeros(2)})),
        "model.safetensors",
    ),
    "weights of another model": (_other_weights, "model.safetensors"),
    "unexpected key": (_renamed_weight, "model.safetensors"),
    "wrong shape": (_resized_weight, "model.safetensors"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_model_file_is_one_line_from_the_api(model_dir, case):
    break_it, named = BAD_FILES[case]
    break_it(model_dir)
    with pytest.raises(ModelFileError) as info:
        dcvit.load(model_dir)
    message = str(info.value)
    assert named in message and "\n" not in message, message


@pytest.mark.parametrize(
    "case",
    [
        "spec is a list",
        "no adapter",
        "edit without op",
        "unknown architecture",
        "input_size not 3 ints",
        "truncated weights",
        "pickle named safetensors",
        "weights of another model",
        "wrong shape",
    ],
)
@pytest.mark.parametrize("command", ["macs", "eval"])
def test_bad_model_file_is_one_line_from_the_cli(model_dir, capsys, case, command):
    break_it, named = BAD_FILES[case]
    break_it(model_dir)
    argv = [command, "--model", str(model_dir)] + (["--limit", "1"] if command == "eval" else [])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and named in err and "Traceback" not in err, err


def test_internal_errors_still_raise(model_dir, monkeypatch):
    def bug(spec):
        raise RuntimeError("a bug, not a bad file")

    monkeypatch.setattr(timm_vit.TimmViTAdapter, "build", staticmethod(bug))
    with pytest.raises(RuntimeError, match="a bug"):
        dcvit.load(model_dir)


def test_edited_model_still_loads(model_dir):
    loaded = dcvit.load(model_dir)
    assert len(loaded.dcvit_edits) == 1 and loaded(torch.randn(2, 3, 32, 32)).shape == (2, 10)
