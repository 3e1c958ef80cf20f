import json
import pickle

import pytest
import timm
import torch
import torchvision
from conftest import small_vit, tiny_swin

import dcvit


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
