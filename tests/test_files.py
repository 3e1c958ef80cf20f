"""dcvit.save / dcvit.load (dcvit/files.py): a model file reloads as the same network, or is not written.

timm models do not record their creation kwargs: the settings that shape a timm ViT are read back from its modules
(dcvit/arch/timm_settings.py); a model those settings cannot rebuild is refused before anything is written. Saves
never destroy what is not a model, replace atomically and keep the umask; pickles are never read."""

import json
import os
import pickle
import stat

import pytest
import timm
import torch
import torchvision
from helpers.models import small_vit, tiny_swin, tiny_vit

import dcvit
from dcvit.arch.timm_settings import vit_settings
from dcvit.files import model_spec
from dcvit.surgery import edit_blocks


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_compressed_and_dropped(tmp_path):
    model = small_vit(depth=6, init_values=0.1)
    p = dcvit.plan(model, 0.7)
    compressed = dcvit.drop_blocks(dcvit.apply_plan(model, p, [1, 3, 4][: p.n_blocks], seed=5), [5])
    dcvit.save(compressed, tmp_path / "m")
    loaded = dcvit.load(tmp_path / "m")
    assert _same_state(compressed, loaded)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(compressed.eval()(x), loaded(x))
    assert dcvit.count_macs(loaded) == dcvit.count_macs(compressed)
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert [e["op"] for e in spec["edits"]] == ["edit"] * (p.n_blocks + 1)


def test_round_trip_plain_timm_and_torchvision(tmp_path):
    model = timm.create_model("fmnist_vit12")  # created by name only: spec comes from pretrained_cfg
    dcvit.save(model, tmp_path / "a")
    assert _same_state(model, dcvit.load(tmp_path / "a"))
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=7
    )
    tv = dcvit.apply_plan(tv, dcvit.plan(tv, 0.8), [1])
    dcvit.save(tv, tmp_path / "b")
    assert _same_state(tv, dcvit.load(tmp_path / "b"))


def test_data_config_survives(tmp_path):
    model = timm.create_model("fmnist_vit12")
    dcvit.save(model, tmp_path / "m")
    cfg = dcvit.load(tmp_path / "m").pretrained_cfg
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == model.pretrained_cfg["mean"]


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_pickle_is_refused_never_unpickled(tmp_path, suffix):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="pickle"):
        dcvit.load(path)
    assert not (tmp_path / "pwned").exists()


def test_missing_directory_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="dcvit model directory"):
        dcvit.load(tmp_path)


def test_save_replaces_atomically(tmp_path):
    a, b = small_vit(depth=2), small_vit(depth=3)
    dcvit.save(a, tmp_path / "m")
    dcvit.save(b, tmp_path / "m")
    assert len(dcvit.load(tmp_path / "m").blocks) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_models_saved_today_round_trip(tmp_path):
    """Specs written before model files were checked (a timm name plus plain kwargs) still load."""
    torch.manual_seed(0)
    small = dcvit.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=10
    ).eval()
    teacher = dcvit.create_model("fmnist_vit12", num_classes=10).eval()
    swin = tiny_swin().eval()
    cases = (("small", small, (3, 32, 32)), ("teacher", teacher, (1, 28, 28)), ("swin", swin, (3, 56, 56)))
    for name, model, size in cases:
        dcvit.save(model, tmp_path / name)
        loaded = dcvit.load(tmp_path / name)
        x = torch.randn(1, *size)
        assert _same_state(model, loaded) and torch.equal(loaded(x), model(x)), name
    assert json.loads((tmp_path / "teacher" / "spec.json").read_text())["base"] == {
        "source": "timm",
        "name": "fmnist_vit12",
        "kwargs": {"num_classes": 10},
    }


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


# --- save ---------------------------------------------------------------------------------------
def test_save_refuses_a_folder_that_is_not_a_model(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a dcvit model directory") as info:
        dcvit.save(small_vit(depth=2), mine)
    assert "\n" not in str(info.value)
    assert entries(tmp_path) == ["mine"] and entries(mine) == ["notes.txt"]


def test_save_refuses_a_file(tmp_path):
    (tmp_path / "m").write_text("a file")
    with pytest.raises(ValueError, match="not a dcvit model directory"):
        dcvit.save(small_vit(depth=2), tmp_path / "m")
    assert entries(tmp_path) == ["m"] and (tmp_path / "m").read_text() == "a file"


def test_save_into_an_empty_folder(tmp_path):
    (tmp_path / "m").mkdir()
    dcvit.save(small_vit(depth=2), tmp_path / "m")
    assert entries(tmp_path / "m") == ["model.safetensors", "spec.json"]


def test_failed_save_keeps_the_previous_model(tmp_path, monkeypatch):
    dcvit.save(small_vit(depth=2), tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dcvit.storage.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        dcvit.save(small_vit(depth=3), tmp_path / "m")
    assert entries(tmp_path) == ["m"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before


def test_saved_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        dcvit.save(small_vit(depth=2), tmp_path / "m")
        dcvit.save(small_vit(depth=2), tmp_path / "m")  # the replacing path too
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "m") == 0o755
    assert {p.name: mode(p) for p in (tmp_path / "m").iterdir()} == {"model.safetensors": 0o644, "spec.json": 0o644}


# --- API --------------------------------------------------------------------------------------------------
def test_saving_a_meta_model_is_refused_and_writes_nothing(tmp_path):
    with torch.device("meta"):
        model = tiny_vit(1)
    with pytest.raises(ValueError, match="meta device.*accepted: a model with real weights"):
        dcvit.save(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_saving_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file is not a folder"):
        dcvit.save(tiny_vit(1), tmp_path / "file" / "sub" / "m")
    assert (tmp_path / "file").read_text() == "x" and len(list(tmp_path.iterdir())) == 1
