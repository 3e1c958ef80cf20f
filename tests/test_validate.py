"""Untrusted files against the shared rules (cascade.validate, dcvit.validate): preprocessing bounded by the
model's own input size in spec.json and cascade.json alike, weights whose dtypes differ from the spec's, unknown
versions, specs asking for more blocks than their weights hold, and cascade MACs recounted from the members.
Every refusal is one line naming the file and the field."""

import json
import shutil
import time

import pytest
import torch
from helpers.models import tiny_vit
from safetensors.torch import load_file, save_file

import cascade
import dcvit
from cascade.validate import preprocessing_problem
from dcvit import cascade_files
from dcvit.cli import main
from dcvit.storage import ModelFileError
from dcvit.validate import data_config_problem


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved 1-channel 16-px ViT of one block; each test edits a copy."""
    return dcvit.save(tiny_vit(depth=1), tmp_path_factory.mktemp("saved") / "m")


@pytest.fixture
def model_dir(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "m")


def edit_json(file, change):
    file.write_text(json.dumps(change(json.loads(file.read_text()))))


def refused(folder, *fragments, error=ModelFileError, load=dcvit.load):
    with pytest.raises(error) as info:
        load(folder)
    message = str(info.value)
    assert all(f in message for f in fragments) and "\n" not in message, message
    return message


# --- preprocessing: spec.json -------------------------------------------------------------------------
BAD_PREPROCESSING = [
    ({"crop_pct": 1e-5}, "'crop_pct' must be a number in [0.25, 4], not 1e-05"),
    ({"crop_pct": 1e-300}, "'crop_pct' must be a number in [0.25, 4]"),
    ({"interpolation": "evil"}, "'interpolation' must be one of nearest, bilinear, bicubic"),
    ({"crop_mode": "evil"}, "'crop_mode' must be one of center, squash, border"),
    ({"mean": [0.5] * 16}, "'mean' must be 1 number(s), one per channel"),
    ({"std": [-1e-30]}, "'std' must be 1 number(s), one per channel, each in [0.001, 10]"),
    ({"mean": [1e308]}, "'mean' must be 1 number(s), one per channel, each in [0, 1]"),
    (
        {"input_size": [1, 32, 32]},
        "'input_size' [1, 32, 32] is not the size the model was built for; accepted: [1, 16, 16]",
    ),
    (
        {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3},
        "'input_size' [3, 16, 16] has 3 channel(s), but the model takes 1",
    ),
    ({"input_size": [1, 65536, 65536]}, "'input_size' must be 3 positive integers (C, H, W), C <= 64 and H, W <= 1024"),
]


@pytest.mark.parametrize("fields,fragment", BAD_PREPROCESSING, ids=[f"{f}"[:40] for f, _ in BAD_PREPROCESSING])
def test_tampered_data_config_is_refused_in_one_line(model_dir, fields, fragment):
    edit_json(model_dir / "spec.json", lambda s: {**s, "data_config": {**s["data_config"], **fields}})
    refused(model_dir, "spec.json: data_config", fragment)


def test_a_model_built_for_a_huge_input_is_refused_without_an_input_size_in_its_file():
    """No input_size in data_config: the transforms would use the model's own size, so that is bounded too."""
    assert "H, W <= 1024, not [3, 2048, 2048]" in data_config_problem({}, (3, 2048, 2048))
    assert data_config_problem({}, (3, 1024, 1024)) is None


def test_cli_eval_refuses_a_memory_bomb_without_a_traceback(model_dir, capsys):
    edit_json(model_dir / "spec.json", lambda s: {**s, "data_config": {**s["data_config"], "crop_pct": 1e-5}})
    assert main(["eval", "--model", str(model_dir), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "crop_pct" in err and "spec.json" in err and "Traceback" not in err, err


def test_the_resize_is_bounded_by_the_model_input_side():
    """A model that takes any size (a CNN) may get a larger input, but the resize stays within 4x its side."""
    assert preprocessing_problem({"input_size": [1, 100, 100], "crop_pct": 1.0}, (1, 28, 28), fixed=False) is None
    problem = preprocessing_problem({"input_size": [1, 100, 100], "crop_pct": 0.25}, (1, 28, 28), fixed=False)
    assert "'crop_pct' 0.25 resizes to 400 px before the crop" in problem and "at most 112 px" in problem
    assert "more than 4x" in preprocessing_problem({"input_size": [1, 200, 28]}, (1, 28, 28), fixed=False)


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = tiny_vit(depth=1)
    model.pretrained_cfg = {**model.pretrained_cfg, "interpolation": "evil"}
    with pytest.raises(ValueError, match="refusing to save .*'interpolation' must be one of"):
        dcvit.save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --- weights, versions, structure ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_weights_of_another_dtype_are_refused(model_dir, dtype):
    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors["head.weight"] = tensors["head.weight"].to(dtype)
    save_file(tensors, str(model_dir / "model.safetensors"))
    refused(model_dir, "model.safetensors does not match spec.json", f"wrong dtype: head.weight {str(dtype)[6:]}")


def test_an_unknown_spec_version_is_refused(model_dir):
    edit_json(model_dir / "spec.json", lambda s: {**s, "version": 999})
    refused(model_dir, "spec.json: spec version 999 is not one this dcvit reads (accepted: 1)")
    edit_json(model_dir / "spec.json", lambda s: {**s, "version": 1, "dtype": "int8"})
    refused(model_dir, "spec.json: field 'dtype' must be one of float32")


def test_a_deep_spec_is_refused_before_any_build(model_dir):
    edit_json(
        model_dir / "spec.json",
        lambda s: {**s, "base": {**s["base"], "kwargs": {**s["base"]["kwargs"], "depth": 1000}}},
    )
    start = time.perf_counter()
    refused(model_dir, "spec.json: base asks for 1000 blocks (depth=1000)", "accepted: at most")
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_comes_back_in_its_dtype(tmp_path, dtype):
    model = tiny_vit(depth=1).to(dtype)
    dcvit.save(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "spec.json").read_text())["dtype"] == str(dtype)[6:]
    loaded = dcvit.load(tmp_path / "m")
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    edit_json(tmp_path / "m" / "spec.json", lambda s: {k: v for k, v in s.items() if k != "dtype"})  # older files
    assert next(dcvit.load(tmp_path / "m").parameters()).dtype == dtype


def test_a_model_mixing_dtypes_is_refused_at_save(tmp_path):
    model = tiny_vit(depth=1)
    model.head.half()
    with pytest.raises(ValueError, match=r"mix dtypes \(float16, float32\).*model.to\(torch.float16\)"):
        dcvit.save(model, tmp_path / "m")


# --- cascade folders ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_cascade(tmp_path_factory):
    """A by-name CNN companion (takes any size, states 28 px) and a 16-px ViT, MACs counted at 16 px."""
    torch.manual_seed(0)
    models = [dcvit.create_model("fmnist_cnn").eval(), tiny_vit(depth=1)]
    costs = [dcvit.count_macs(m, (1, 16, 16)) for m in models]
    return dcvit.save_cascade(tmp_path_factory.mktemp("c") / "c", models, [0.5], costs, ["cnn", "vit"])


@pytest.fixture
def cascade_dir(saved_cascade, tmp_path):
    return shutil.copytree(saved_cascade, tmp_path / "c")


def set_pre(**fields):
    return lambda s: {**s, "preprocessing": {**s["preprocessing"], **fields}}


@pytest.mark.parametrize(
    "fields,fragment",
    [
        ({"input_size": [1, 65536, 65536]}, "preprocessing 'input_size' must be 3 positive integers"),
        ({"crop_pct": 1e-5}, "preprocessing 'crop_pct' must be a number in [0.25, 4]"),
        ({"interpolation": "evil"}, "preprocessing 'interpolation' must be one of"),
        ({"std": [-1e-30]}, "preprocessing 'std' must be 1 number(s)"),
        ({"mean": [1e308]}, "preprocessing 'mean' must be 1 number(s)"),
        ({"mean": [0.5] * 16}, "preprocessing 'mean' must be 1 number(s)"),
    ],
)
def test_tampered_cascade_preprocessing_is_refused(cascade_dir, fields, fragment):
    edit_json(cascade_dir / "cascade.json", set_pre(**fields))
    refused(cascade_dir, "cascade.json: ", fragment, error=cascade.CascadeFileError, load=dcvit.load_cascade)


def test_preprocessing_must_fit_every_member(cascade_dir):
    edit_json(cascade_dir / "cascade.json", set_pre(input_size=[3, 16, 16], mean=[0.5] * 3, std=[0.5] * 3))
    refused(
        cascade_dir, "has 3 channel(s), but the model takes 1", "member 'cnn'",
        error=cascade.CascadeFileError, load=dcvit.load_cascade,
    )  # fmt: skip
    edit_json(cascade_dir / "cascade.json", set_pre(input_size=[1, 32, 32], mean=[0.5], std=[0.5]))
    refused(
        cascade_dir, "not the size the model was built for; accepted: [1, 16, 16]", "member 'vit'",
        error=cascade.CascadeFileError, load=dcvit.load_cascade,
    )  # fmt: skip


def test_recorded_macs_must_be_the_members_own(cascade_dir, capsys):
    def tamper(spec):
        spec["members"][0]["macs"], spec["members"][1]["macs"] = 1, 2
        return spec

    edit_json(cascade_dir / "cascade.json", tamper)
    refused(
        cascade_dir, "member 'cnn' (stage0-cnn) records 1 MACs per image, but it counts",
        error=cascade.CascadeFileError, load=dcvit.load_cascade,
    )  # fmt: skip
    assert main(["eval", "--model", str(cascade_dir), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records 1 MACs" in err and "Traceback" not in err, err


def test_by_name_members_keep_their_dtype_and_refuse_others(tmp_path):
    cnn = dcvit.create_model("fmnist_cnn").eval()
    cascade_files.save_member(cnn.half(), tmp_path / "half")
    assert next(cascade_files.load_member(tmp_path / "half").parameters()).dtype == torch.float16
    cascade_files.save_member(dcvit.create_model("fmnist_cnn").eval(), tmp_path / "int8")
    weights = tmp_path / "int8" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors = {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(weights))
    with pytest.raises(ModelFileError, match="does not match fmnist_cnn .*wrong dtype"):
        cascade_files.load_member(tmp_path / "int8")
