"""Whole-head pruning as an edit kind: exact against the reference computation, exact MACs, replayed from
files, offered by the search only where the adapter can prune heads."""

import json

import pytest
import torch
from helpers.models import small_vit, tiny_data, tiny_swin, tiny_vit

import dcvit
from dcvit.arch import get_adapter
from dcvit.config import CompressConfig
from dcvit.edits import Edit, block_savings, head_menu
from dcvit.macs import macs_profile
from dcvit.surgery import block_heads, block_state, edit_blocks


def reference_without_heads(model, block, dropped):
    """The same model with the dropped heads' proj input columns zeroed: what head pruning must equal."""
    ref = dcvit.create_model("vit_tiny_patch16_224", **model.dcvit_base["kwargs"]).eval()
    ref.load_state_dict(model.state_dict())
    attn = ref.blocks[block].attn
    with torch.no_grad():
        for h in dropped:
            attn.proj.weight[:, h * attn.head_dim : (h + 1) * attn.head_dim] = 0
    return ref


@pytest.mark.parametrize("units", [None, [1, 4, 9]])
def test_head_edit_equals_the_model_without_those_heads(units):
    torch.manual_seed(0)
    model = small_vit(depth=2, dim=48, heads=3)
    edited = edit_blocks(model, {1: (True, units, [0, 2])})
    assert block_heads(get_adapter(edited), edited.blocks[1]) == 2 and edited.blocks[1].attn.qkv.out_features == 96
    x = torch.randn(2, 3, 32, 32)
    if units is None:
        with torch.no_grad():
            assert torch.allclose(edited(x), reference_without_heads(model, 1, [1])(x), atol=1e-5)
    assert model.blocks[1].attn.num_heads == 3  # the input model is untouched


def test_head_edits_have_exact_macs_and_replay_from_files(tmp_path):
    torch.manual_seed(0)
    model = small_vit(depth=3, dim=48, heads=3, qkv_bias=True)
    profile = macs_profile(model)
    width = block_state(get_adapter(model), model.blocks[1])[1]
    for heads, units in [([1], width), ([0, 2], width // 2)]:
        kept_units = None if units == width else list(range(units))
        edited = edit_blocks(model, {1: (True, kept_units, heads)})
        measured = profile.total - dcvit.count_macs(edited, profile.input_size)
        assert measured == block_savings(profile, 1, True, width, True, units, 3, len(heads))
    dcvit.save(edited, tmp_path / "m")
    loaded = dcvit.load(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), edited(x))
    assert loaded.dcvit_edits[-1]["kept_heads"] == [0, 2]


def test_bad_head_edits_are_refused(tmp_path):
    model = small_vit(depth=2, heads=3)
    for heads, message in [([], "at least one"), ([0, 0], "distinct"), ([3], "distinct indices in")]:
        with pytest.raises(ValueError, match=message):
            edit_blocks(model, {0: (True, None, heads)})
    with pytest.raises(ValueError, match="kept attention"):
        edit_blocks(model, {0: (False, None, [0])})
    with pytest.raises(ValueError, match="changes nothing"):
        edit_blocks(model, {0: (True, None, [0, 1, 2])})
    dcvit.save(edit_blocks(model, {0: (True, None, [1])}), tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    spec["edits"][0]["kept_heads"] = "1"
    (tmp_path / "m" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="kept_heads"):
        dcvit.load(tmp_path / "m")


def test_head_menu_and_adapters_without_head_edits():
    assert head_menu(3, 3) == [2, 1] and head_menu(2, 3) == [1] and head_menu(1, 3) == []
    assert head_menu(12, 12) == [9, 6, 3]
    swin = tiny_swin()
    assert block_heads(get_adapter(swin), get_adapter(swin).blocks(swin)[0]) == 0  # no head edits offered
    assert Edit(0, True, 8, 1, 0.0, heads=1).describe(8) == "1 heads kept"


def test_search_with_head_pruning_offers_and_records_head_edits(tmp_path):
    model = tiny_vit(depth=4)
    config = CompressConfig(
        epochs=1,
        trial_epochs=1,
        batch_size=8,
        synth_images=8,
        synth_iterations=5,
        search_steps=1,
        progress=False,
        prune_heads=True,
    )
    result = dcvit.compress(model, 0.9, tiny_data(), config, workdir=tmp_path / "run")
    assert result.macs <= result.plan.macs_target
    step = json.loads(next((tmp_path / "run").glob("*-step0of*")).joinpath("meta.json").read_text())
    offered = [e for e in step["scored"] if e["heads"] is not None]
    assert offered and all(e["heads"] == 1 and e["attention"] for e in offered)
    assert {s.get("heads") for s in result.structure} <= {1, 2}
