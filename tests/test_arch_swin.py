"""Swin V2 (timm) and torchvision Swin / Swin V2: adapters, every block edit against the written-out block
computation (post-norm for V2), plans, files, block dropping, MACs model, compression and the CLI."""

import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

import dcvit
from dcvit.arch import UnsupportedModelError, get_adapter
from dcvit.cli import main
from dcvit.config import CompressConfig
from dcvit.edits import block_savings
from dcvit.macs import macs_profile
from dcvit.storage import ModelFileError
from dcvit.surgery import apply_plan, block_state, edit_blocks

torch.set_num_threads(1)


def _random_norms(model):
    """timm's Swin V2 starts its post-norms at zero (every block an identity): give them values, so a wrong
    order of norm and MLP shows."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def timm_v2():
    torch.manual_seed(0)
    model = dcvit.create_model(
        "swinv2_tiny_window8_256",
        img_size=32,
        embed_dim=32,
        depths=(2, 2),
        num_heads=(2, 4),
        window_size=4,
        num_classes=10,
    )
    return _random_norms(model)


def tv_swin(v2=False, **kwargs):
    torch.manual_seed(0)
    layers = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    model = SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10,
        **layers, **kwargs,
    )  # fmt: skip
    return _random_norms(model)


FAMILIES = {"timm Swin V2": timm_v2, "torchvision Swin": tv_swin, "torchvision Swin V2": partial(tv_swin, True)}
ADAPTERS = {
    "timm Swin V2": "timm-swinv2",
    "torchvision Swin": "torchvision-swin",
    "torchvision Swin V2": "torchvision-swin",
}
POST_NORM = {"timm Swin V2": True, "torchvision Swin": False, "torchvision Swin V2": True}
EDITS = {  # (attention kept, kept MLP units: None = all, [] = none)
    "narrow MLP": (True, [0, 2, 5, 7, 11]),
    "remove MLP": (True, []),
    "remove attention": (False, None),
    "remove attention, narrow MLP": (False, [1, 3, 4]),
    "drop": (False, []),
}


def images(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def attention_branch(family, block, x):
    if family == "timm Swin V2":
        return block.norm1(block._attn(x))
    if family == "torchvision Swin V2":
        return block.norm1(block.attn(x))
    return block.attn(block.norm1(x))


def reference_block(family, adapter, block, x, attention, units):
    """What an edited block must compute, written out from the original block's weights."""
    out = x
    if attention:
        out = out + attention_branch(family, block, x)
    if units is None or units:
        fc1, fc2 = adapter.mlp_linears(block)
        h = F.gelu(fc1(out if POST_NORM[family] else block.norm2(out)))
        w2 = fc2.weight
        if units is not None:
            h, w2 = h[..., units], w2[:, units]
        y = h @ w2.T + fc2.bias
        out = out + (block.norm2(y) if POST_NORM[family] else y)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_adapter_lists_every_block_of_every_stage_and_reads_the_model(family):
    model = FAMILIES[family]()
    adapter = get_adapter(model)
    assert adapter.name == ADAPTERS[family]
    blocks = adapter.blocks(model)
    assert len(blocks) == 4 and [model.get_submodule(p) for p in adapter.block_paths(model)] == blocks
    assert adapter.input_size(model) == (3, 32, 32) and adapter.class_token_index(model) is None
    x = images()
    with torch.no_grad():
        tokens = adapter.features(model, x)
        fc = [m for m in adapter.tail_modules(model)[-1].modules() if isinstance(m, nn.Linear)][-1]
        assert tokens.shape == (2, 4, 4, 64)
        assert torch.allclose(fc(tokens.mean((1, 2))), model(x), atol=1e-5)  # features feed the frozen tail


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plan_lands_within_one_percent_and_leaves_the_rest_untouched(family):
    model = FAMILIES[family]()
    p = dcvit.plan(model, 0.75)
    new = apply_plan(model, p, p.candidate_blocks[: p.n_blocks], seed=3)
    macs = dcvit.count_macs(new)
    assert macs == p.macs_planned and abs(macs - 0.75 * p.macs_original) <= 0.01 * 0.75 * p.macs_original
    assert new(images()).shape == (2, 10)
    paths = get_adapter(model).block_paths(model)
    before, after = model.state_dict(), new.state_dict()
    outside = [k for k in before if not any(k.startswith(f"{path}.") for path in paths)]
    assert any("downsample" in k or k.startswith("features.2.") for k in outside)  # patch merging is there
    assert all(torch.equal(before[k], after[k]) for k in outside)


@pytest.mark.parametrize("kind", list(EDITS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_edit_equals_reference_computation(family, kind):
    model = FAMILIES[family]()
    adapter = get_adapter(model)
    attention, units = EDITS[kind]
    edited = edit_blocks(model, {1: (attention, units)})  # block 1 uses shifted windows
    x = torch.randn(2, 8, 8, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        original = model.get_submodule(adapter.block_paths(model)[1])
        assert torch.allclose(reference_block(family, adapter, original, x, True, None), original(x), atol=1e-5)
        expected = reference_block(family, adapter, original, x, attention, units)
        assert torch.allclose(adapter.blocks(edited)[1](x), expected, atol=1e-5)
        assert kind == "drop" or not torch.allclose(expected, x, atol=1e-3)  # what is left does something
    assert block_state(adapter, adapter.blocks(edited)[1]) == (attention, 128 if units is None else len(units))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_and_load_give_identical_outputs(family, tmp_path):
    model = FAMILIES[family]()
    plain = tmp_path / "plain"
    dcvit.save(model, plain)
    x = images()
    assert torch.equal(dcvit.load(plain)(x), model(x))
    # every block edited: the sizes must come from the description kept before the first edit
    edits = {0: (True, [1, 4, 9]), 1: (False, list(range(0, 64, 2))), 2: (True, []), 3: (False, None)}
    edited = edit_blocks(model, edits)
    dcvit.save(edited, tmp_path / "m")
    loaded = dcvit.load(tmp_path / "m")
    assert torch.equal(loaded(x), edited(x))
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["adapter"] == ADAPTERS[family] and len(spec["edits"]) == 4
    assert spec["base"] == json.loads((plain / "spec.json").read_text())["base"]
    assert 0 < sum(drop_rates(model)) and drop_rates(dcvit.load(plain)) == drop_rates(model)  # training behaves alike


def drop_rates(model):
    """The stochastic-depth rate of every block (torchvision's StochasticDepth.p, timm's DropPath.drop_prob)."""
    kinds = ("StochasticDepth", "DropPath")
    return [getattr(m, "p", getattr(m, "drop_prob", None)) for m in model.modules() if type(m).__name__ in kinds]


def manual_forward(family, model, x, skip):
    """The model's forward written out stage by stage, block `skip` left out."""
    if family == "timm Swin V2":
        x = model.patch_embed(x)
        stages = [(stage.downsample, list(stage.blocks)) for stage in model.layers]
    else:
        x = model.features[0](x)
        merges = [nn.Identity()] + [model.features[i] for i in range(2, len(model.features), 2)]
        stages = list(zip(merges, [list(model.features[i]) for i in range(1, len(model.features), 2)]))
    blocks = [b for _, stage in stages for b in stage]
    for merge, stage in stages:
        x = merge(x)
        for block in stage:
            x = x if block is blocks[skip] else block(x)
    if family == "timm Swin V2":
        return model.forward_head(model.norm(x))
    return model.head(model.flatten(model.avgpool(model.permute(model.norm(x)))))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_drop_blocks_skips_exactly_that_block(family):
    model = FAMILIES[family]()
    profile = macs_profile(model)
    for b in (1, 2):  # the last block of stage 0 and the first of stage 1 (after the patch merging)
        dropped = dcvit.drop_blocks(model, [b])
        with torch.no_grad():
            assert torch.allclose(dropped(images()), manual_forward(family, model, images(), b), atol=1e-5)
        assert dcvit.count_macs(dropped) == profile.total - profile.blocks[b]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_macs_model_is_exact_for_every_edit(family):
    """block_savings (what the search plans with) equals a fresh fvcore count after the edit."""
    model = FAMILIES[family]()
    profile = macs_profile(model)
    for b in (1, 2):
        width = profile.mlp_hidden[b]
        for attention, units in [(True, width // 2), (True, 0), (False, width), (False, width // 4), (False, 0)]:
            kept = None if units == width else list(range(units))
            edited = edit_blocks(model, {b: (attention, kept)})
            measured = profile.total - dcvit.count_macs(edited, profile.input_size)
            assert measured == block_savings(profile, b, True, width, attention, units), (b, attention, units)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_step_compression_runs(family):
    model = FAMILIES[family]()
    data = torch.utils.data.TensorDataset(images(16), torch.zeros(16, dtype=torch.long))
    config = CompressConfig(
        epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False
    )
    result = dcvit.compress(model, 0.8, data, config)
    assert result.plan.n_blocks == 1 and result.macs <= result.plan.macs_target * 1.01
    assert result.model(images()).shape == (2, 10)


def test_cli_counts_torchvision_swin_t_at_its_published_size(capsys):
    assert main(["macs", "--model", "tv:swin_t", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    published = torchvision.models.Swin_T_Weights.DEFAULT.meta["_ops"] * 1e9
    assert out["input_size"] == [3, 224, 224] and len(out["attn"]) == len(out["mlp"]) == 12
    assert abs(out["total"] - published) <= 0.01 * published


def test_torchvision_builders_are_read_at_their_design_size():
    with torch.device("meta"):
        t, v2 = torchvision.models.swin_t(), torchvision.models.swin_v2_t()
    assert get_adapter(t).input_size(t) == (3, 224, 224) and get_adapter(v2).input_size(v2) == (3, 256, 256)
    assert get_adapter(v2).base_spec(v2)["kwargs"]["stochastic_depth_prob"] == 0.2  # torchvision's, exactly


def test_refusal_names_families_not_adapter_ids():
    with pytest.raises(UnsupportedModelError) as err:
        get_adapter(nn.Linear(2, 2))
    message = str(err.value)
    assert "timm Swin V2" in message and "torchvision Swin" in message and "torchvision ViT" in message
    assert "timm-swin" not in message


def test_models_that_cannot_be_rebuilt_are_refused(tmp_path):
    class OwnBlock(torchvision.models.swin_transformer.SwinTransformerBlock):
        pass

    with pytest.raises(UnsupportedModelError):
        get_adapter(tv_swin(block=OwnBlock))
    with pytest.raises(ValueError, match="norm_layer"):
        dcvit.save(tv_swin(norm_layer=partial(nn.LayerNorm, eps=1e-6)), tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "family,change,key",
    [
        ("torchvision Swin V2", {"norm_layer": "torch.nn.LayerNorm"}, "norm_layer"),
        ("torchvision Swin V2", {"block": "torch.nn.Module"}, "block"),
        ("torchvision Swin", {"depths": [2, 2], "num_heads": [2]}, "num_heads"),
        ("timm Swin V2", {"checkpoint_path": "x.pth"}, "checkpoint_path"),
        ("timm Swin V2", {"norm_layer": "layernorm"}, "norm_layer"),
    ],
)
def test_model_files_pass_only_whitelisted_settings(tmp_path, family, change, key):
    dcvit.save(FAMILIES[family](), tmp_path / "m")
    path = tmp_path / "m" / "spec.json"
    spec = json.loads(path.read_text())
    spec["base"]["kwargs"].update(change)
    path.write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match=key):
        dcvit.load(tmp_path / "m")
