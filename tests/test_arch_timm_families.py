"""timm's ViT families beyond the plain ViT block: EVA / EVA-02 / rope ViTs, BEiT, CaiT, ViT-RelPos, ResPost
(post-norm) blocks and SwiGLU MLPs. Per family: plans land on their target, every edit computes what the block's
weights say it must, the MACs model is exact, files replay the edits, the search runs; parallel blocks are refused.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers.models import tiny_data
from timm.layers import GatedMlp, GluMlp, SwiGLU
from torch import nn

import dcvit
from dcvit.arch import UnsupportedModelError, get_adapter
from dcvit.config import CompressConfig
from dcvit.edits import block_savings
from dcvit.macs import macs_profile
from dcvit.search import block_inputs, starting_at
from dcvit.surgery import activation_units, block_state, edit_block, edit_blocks

SMALL = dict(embed_dim=48, depth=4, num_heads=3, num_classes=10)
# label: (timm name, adapter, the family's own settings); smallest registered variant, shrunk
FAMILIES = {
    "eva02 packed SwiGLU, rope": ("eva02_tiny_patch14_224", "timm-eva", dict(ref_feat_shape=4)),
    "eva02 SwiGLU, hidden norm": ("eva02_tiny_patch14_224", "timm-eva", dict(scale_mlp=True, init_values=0.5)),
    "eva post-norm": ("eva02_tiny_patch14_224", "timm-eva", dict(use_post_norm=True)),
    "rope vit, mixed": ("vit_small_patch16_rope_mixed_224", "timm-eva", dict(init_values=0.5)),
    "beit": ("beit_base_patch16_224", "timm-beit", dict(init_values=0.5)),
    "beit shared bias": (
        "beit_base_patch16_224",
        "timm-beit",
        dict(use_rel_pos_bias=False, use_shared_rel_pos_bias=True),
    ),
    "cait": ("cait_xxs24_224", "timm-cait", dict(depth_token_only=1, init_values=0.5)),
    "relpos": ("vit_relpos_small_patch16_224", "timm-relpos", dict(init_values=0.5)),
    "relpos post-norm": ("vit_relpos_small_patch16_rpn_224", "timm-relpos", {}),
    "vit ResPost": ("vit_base_patch16_rpn_224", "timm", {}),
    "vit SwiGLU (AIMv2)": ("aimv2_large_patch14_224", "timm", {}),
    "vit SwiGLUPacked (DINOv2-g)": ("vit_giant_patch14_dinov2", "timm", {}),
}
POST_NORM = ("EvaBlockPostNorm", "ResPostRelPosBlock", "ResPostBlock")
EDITS = {
    "narrow MLP": (True, [0, 2, 5, 7, 11]),
    "remove MLP": (True, []),
    "remove attention": (False, None),
    "remove attention, narrow MLP": (False, [1, 3, 4]),
    "drop": (False, []),
}


def family(label, img=32, chans=3):
    name, _, settings = FAMILIES[label]
    torch.manual_seed(0)
    patch = img // 4
    return dcvit.create_model(name, img_size=img, patch_size=patch, in_chans=chans, **SMALL, **settings).eval()


@torch.no_grad()
def scrambled(model):
    """`model` with every parameter random: timm's inits (a gate near 1, LayerScale 1e-5) would hide mistakes."""
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def _scale(block, n):
    """A branch's LayerScale: a module (ls1/ls2), a bare parameter (gamma_1/gamma_2), or none."""
    gamma = getattr(block, f"gamma_{n}", None)
    if gamma is not None:
        return lambda t: t * gamma
    return getattr(block, f"ls{n}", nn.Identity())


def _reference_mlp(mlp, x, units):
    """A timm MLP keeping hidden `units`, written out from its weights (normalising over the kept units)."""
    if isinstance(mlp, SwiGLU):
        h = mlp.act(mlp.fc1_g(x)) * mlp.fc1_x(x)
    elif isinstance(mlp, GluMlp):
        a, b = mlp.fc1(x).chunk(2, dim=-1)
        h = a * mlp.act(b) if mlp.gate_last else mlp.act(a) * b
    else:
        h = mlp.act(mlp.fc1(x))
    w2 = mlp.fc2.weight
    if units is not None:
        h, w2 = h[..., units], w2[:, units]
    if not isinstance(mlp.norm, nn.Identity):
        idx = units if units is not None else slice(None)
        h = F.layer_norm(h, h.shape[-1:], mlp.norm.weight[idx], mlp.norm.bias[idx], mlp.norm.eps)
    return F.linear(h, w2, mlp.fc2.bias)


def reference_block(block, x, kwargs, attention, units):
    """What an edited block must compute from the original block's weights (eval mode: no drop-path)."""
    post = type(block).__name__ in POST_NORM
    out = x
    if attention:
        a = block.attn(x if post else block.norm1(x), **kwargs)
        out = out + (block.norm1(a) if post else _scale(block, 1)(a))
    if units is None or units:
        if post:
            out = out + block.norm2(_reference_mlp(block.mlp, out, units))
        else:
            out = out + _scale(block, 2)(_reference_mlp(block.mlp, block.norm2(out), units))
    return out


@pytest.mark.parametrize("label", list(FAMILIES))
def test_plan_lands_on_target_files_replay_and_blocks_drop(tmp_path, label):
    model = family(label)
    assert get_adapter(model).name == FAMILIES[label][1]
    plan = dcvit.plan(model, 0.75)
    compressed = dcvit.apply_plan(model, plan, plan.candidate_blocks[: plan.n_blocks])
    assert abs(dcvit.count_macs(compressed) / dcvit.count_macs(model) - 0.75) < 0.01
    dropped = dcvit.drop_blocks(compressed, [0])
    dcvit.save(dropped, tmp_path / "m")
    loaded = dcvit.load(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), dropped(x))
        assert not torch.allclose(dropped(x), compressed(x))  # the dropped block did something before


@pytest.mark.parametrize("label", list(FAMILIES))
def test_every_edit_is_the_reference_computation_and_its_macs_are_exact(label):
    model = scrambled(family(label))
    adapter = get_adapter(model)
    profile = macs_profile(model)
    original = adapter.blocks(model)[1]
    width = block_state(adapter, original)[1]
    seen = {}
    hook = original.register_forward_hook(
        lambda m, args, kwargs, out: seen.update(x=args[0], kw=kwargs), with_kwargs=True
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
    hook.remove()
    for kind, (attention, units) in EDITS.items():
        edited = edit_blocks(model, {1: (attention, units)})
        with torch.no_grad():
            got = adapter.blocks(edited)[1](seen["x"], **seen["kw"])
            expected = reference_block(original, seen["x"], seen["kw"], attention, units)
            assert torch.allclose(got, expected, atol=1e-5), kind
            assert edited(x).shape == (2, 10)
        saved = profile.total - dcvit.count_macs(edited)
        kept = width if units is None else len(units)
        assert saved == block_savings(profile, 1, True, width, attention, kept), kind
    assert adapter.mlp_hidden(original) == width and original.mlp.fc2.in_features == width  # input untouched


@pytest.mark.parametrize("label", ["eva02 packed SwiGLU, rope", "beit shared bias", "relpos", "vit ResPost"])
def test_scoring_from_a_cached_block_input_equals_the_full_forward(label):
    """The search scores an edit by running the model from the edited block on; blocks called with keywords
    (rope, shared position bias) must still be found, hooked and restored, a dropped one included."""
    model = family(label)
    adapter = get_adapter(model)
    x = torch.randn(2, 3, 32, 32)
    inputs = block_inputs(model, adapter, x)
    for change in [(False, [0, 1]), (False, []), (True, [])]:
        block = edit_block(adapter, adapter.blocks(model)[2], *change)
        full = edit_blocks(model, {2: change})(x)
        with torch.no_grad(), starting_at(model, adapter, 2, block, inputs[2]):
            assert torch.allclose(model(x), full, atol=1e-5), change
        assert adapter.blocks(model)[2] is not block


def test_gated_units_are_kept_in_both_halves():
    model = family("vit SwiGLUPacked (DINOv2-g)")
    width = get_adapter(model).mlp_hidden(model.blocks[1])
    mlp = edit_blocks(model, {1: (True, [3, 5])}).blocks[1].mlp
    full = model.blocks[1].mlp.fc1.weight
    assert isinstance(mlp, GluMlp) and mlp.fc2.in_features == 2 and full.shape[0] == 2 * width
    assert torch.equal(mlp.fc1.weight, full[[3, 5, 3 + width, 5 + width]])


def test_activation_units_read_a_gated_mlps_hidden_units():
    model = family("eva02 SwiGLU, hidden norm")
    x = torch.randn(4, 3, 32, 32)
    seen = {}
    hook = model.blocks[1].mlp.norm.register_forward_hook(lambda m, args, out: seen.update(h=out))
    with torch.no_grad():
        model(x)
    hook.remove()
    expected = sorted(seen["h"].abs().flatten(0, -2).mean(0).topk(7).indices.tolist())
    assert activation_units(model, 1, x, 7) == expected


SMOKE = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=2, search_steps=1, progress=False
)


@pytest.mark.parametrize("label", ["eva02 SwiGLU, hidden norm", "beit", "cait", "relpos post-norm", "vit ResPost"])
def test_compress_runs(label):
    model = family(label, img=16, chans=1)
    result = dcvit.compress(model, 0.8, tiny_data(), SMOKE)
    assert result.macs <= result.plan.macs_target
    assert result.model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    if label == "cait":  # the class-attention blocks are the head's, never trained
        after = dict(result.model.blocks_token_only.named_parameters())
        assert all(torch.equal(p, after[k]) for k, p in model.blocks_token_only.named_parameters())


@pytest.mark.parametrize(
    "name, block",
    [
        ("vit_small_patch16_18x2_224", "ParallelThingsBlock"),
        ("vit_pwee_patch16_reg1_gap_256", "ParallelScalingBlock"),
        ("vit_base_patch16_xp_224", "ParallelScalingBlock"),
    ],
)
def test_parallel_blocks_are_refused_in_one_line(name, block):
    model = dcvit.create_model(name, img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    with pytest.raises(UnsupportedModelError, match=f"block 0 is a {block}: .*run in parallel") as err:
        dcvit.plan(model, 0.75)
    assert "\n" not in str(err.value) and "supported blocks: Block, ResPostBlock" in str(err.value)


def test_an_mlp_it_cannot_narrow_is_refused_in_one_line():
    model = dcvit.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, mlp_layer=GatedMlp)
    with pytest.raises(UnsupportedModelError, match="block 0 .*its MLP is a GatedMlp; supported MLPs: Mlp") as err:
        get_adapter(model)
    assert "\n" not in str(err.value)
