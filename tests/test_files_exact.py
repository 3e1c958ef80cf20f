"""A model file reloads as the same network, or is not written.

timm models do not record their creation kwargs: the settings that shape a timm ViT are read back from its modules
(also once surgery changed its blocks), and `dcvit.save` rebuilds the model from the spec it is about to write and
refuses, in one line and writing nothing, when the rebuilt model's tensors or outputs differ."""

import json

import pytest
import timm
import torch
from conftest import small_vit, tiny_swin

import dcvit
from dcvit.arch.timm_settings import vit_settings
from dcvit.files import model_spec
from dcvit.surgery import edit_blocks

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=10)


def timm_vit(**kwargs):
    """Made by timm itself, so nothing records the kwargs: the spec must read them from the modules."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", **{**TINY, **kwargs}).eval()


def compressed(model):
    """Every kind of edit: attention removed (MLP narrowed), MLP narrowed, MLP removed, block dropped."""
    return edit_blocks(model, {0: (False, [0, 5, 9]), 1: (True, list(range(0, 64, 2))), 2: (True, []), 3: (False, [])})


def round_trip(model, folder):
    dcvit.save(model, folder)
    loaded = dcvit.load(folder)
    size = dcvit.get_adapter(model).input_size(model)
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return loaded, loaded(x), model.eval()(x)


# The defects of issue 13 (first five) and the other settings timm takes that change the network.
SETTINGS = [
    dict(class_token=False, global_pool="avg"),
    dict(patch_size=4),
    dict(no_embed_class=True),
    dict(qkv_bias=False),
    dict(act_layer="relu"),
    dict(act_layer="gelu_tanh"),
    dict(qk_norm=True),
    dict(proj_bias=False),
    dict(init_values=0.1),
    dict(reg_tokens=2),
    dict(pre_norm=True),
    dict(fc_norm=True),
    dict(final_norm=False),
    dict(global_pool="avg", fc_norm=False),
    dict(pos_embed="none"),
    dict(norm_layer="rmsnorm"),
    dict(embed_norm_layer="layernorm"),
    dict(mlp_ratio=2.6667),
    dict(num_heads=6, embed_dim=48),
    dict(in_chans=3, img_size=(32, 48)),
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_timm_settings_survive_a_round_trip(tmp_path, kwargs):
    model = compressed(timm_vit(**kwargs))
    loaded, got, want = round_trip(model, tmp_path / "m")
    assert torch.equal(got, want)
    assert loaded.state_dict().keys() == model.state_dict().keys()


def test_compressed_model_reads_like_its_base():
    """Edited blocks are read only for what their edits left: the spec of a compressed model names its base."""
    base = timm_vit(act_layer="relu", qkv_bias=False, mlp_ratio=2.0, init_values=0.5)
    every_block = edit_blocks(base, {0: (False, None), 1: (True, [0, 1]), 2: (True, []), 3: (False, [])})
    assert model_spec(every_block)["base"] == model_spec(base)["base"]
    # attention read from block 1 or 2, the MLP's width from block 0 (only its attention went)
    settings = vit_settings(every_block)
    assert settings["act_layer"] == "relu" and settings["qkv_bias"] is False and settings["mlp_ratio"] == 2.0
    assert settings["init_values"] == 0.5


def test_reset_classifier_and_recorded_kwargs(tmp_path):
    model = dcvit.create_model("vit_tiny_patch16_224", **TINY, act_layer="relu")
    model.reset_classifier(3)  # the recorded kwargs say 10 classes; the modules say 3
    spec = model_spec(model)["base"]
    assert spec["kwargs"]["num_classes"] == 3 and spec["kwargs"]["act_layer"] == "relu"
    _, got, want = round_trip(model, tmp_path / "m")
    assert torch.equal(got, want) and got.shape == (2, 3)


def test_recorded_spec_stays_minimal(tmp_path):
    model = dcvit.create_model("fmnist_vit12", num_classes=10)
    assert model_spec(model)["base"] == {"source": "timm", "name": "fmnist_vit12", "kwargs": {"num_classes": 10}}


def entries(folder):
    return sorted(p.name for p in folder.iterdir())


def refused(model, folder):
    with pytest.raises(ValueError) as info:
        dcvit.save(model, folder)
    message = str(info.value)
    assert "\n" not in message and "dcvit.create_model" in message, message
    return message


def test_a_hand_replaced_module_is_refused_and_nothing_written(tmp_path):
    model = timm_vit()
    model.blocks[2].mlp.act = torch.nn.SiLU()  # one block only: no timm setting makes this network
    assert "other outputs" in refused(model, tmp_path / "m")
    assert entries(tmp_path) == []


def test_refused_save_keeps_the_model_already_there(tmp_path):
    dcvit.save(small_vit(depth=2), tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    model = timm_vit()
    model.blocks[0].attn.proj = torch.nn.Linear(48, 48, bias=False)  # block 0 only: no setting describes it
    assert "other tensors" in refused(model, tmp_path / "m")
    assert entries(tmp_path) == ["m"] and {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before


def test_a_norm_without_a_timm_name_is_refused(tmp_path):
    model = timm_vit(norm_layer=torch.nn.LayerNorm)  # eps 1e-5, where timm's named "layernorm" has 1e-6
    assert "norm_layer" in refused(model, tmp_path / "m")
    assert entries(tmp_path) == []


def test_unrecorded_swin_settings_are_refused_recorded_ones_saved(tmp_path):
    kwargs = dict(img_size=56, embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=7, num_classes=5)
    unrecorded = timm.create_model("swin_tiny_patch4_window7_224", **kwargs)
    assert "other tensors" in refused(unrecorded, tmp_path / "a")
    swin = dcvit.drop_blocks(tiny_swin(), [1])
    dcvit.save(swin, tmp_path / "b")
    x = torch.randn(2, 3, 56, 56)
    assert torch.equal(dcvit.load(tmp_path / "b")(x), swin(x))


def test_save_leaves_train_mode_and_weights_alone(tmp_path):
    model = timm_vit(drop_rate=0.5).train()
    model.blocks[1].eval()  # a mixed state must survive too
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dcvit.save(model, tmp_path / "m")
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["base"]["kwargs"]["drop_rate"] == 0.5  # training settings are recorded too


def test_lower_precision_model_saves(tmp_path):
    model = small_vit(depth=2).to(torch.bfloat16)
    dcvit.save(model, tmp_path / "m")
    x = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    assert torch.equal(dcvit.load(tmp_path / "m").to(torch.bfloat16)(x), model(x))
