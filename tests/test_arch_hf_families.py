"""Hugging Face transformers ViT, DeiT, DINOv2 and Swin (dcvit/arch/hf_*.py), each built tiny from a config (random
init, no download): plan -> compress -> save -> load -> torch.export, edits that equal zeroing what they remove,
headless backbones, image-processor statistics. Skipped where transformers is not installed."""

import json

import pytest
import torch

import dcvit
from dcvit.arch import get_adapter
from dcvit.config import CompressConfig
from dcvit.macs import macs_profile
from dcvit.surgery import drop_blocks, edit_blocks

transformers = pytest.importorskip("transformers")
hf_common = pytest.importorskip("dcvit.arch.hf_common")

SMOKE = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=2, search_steps=1, progress=False
)
VIT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=7, num_channels=1)
SWIN = dict(image_size=32, patch_size=4, num_channels=1, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
# family -> (config class, its settings, the classes to build, input side)
FAMILIES = {
    "vit": ("ViTConfig", dict(VIT, intermediate_size=64), ("ViTForImageClassification", "ViTModel"), 28),
    "deit": (
        "DeiTConfig",
        dict(VIT, intermediate_size=64),
        ("DeiTForImageClassificationWithTeacher", "DeiTForImageClassification", "DeiTModel"),
        28,
    ),
    "dinov2": (
        "Dinov2Config",
        dict(VIT, mlp_ratio=4, use_swiglu_ffn=True, layerscale_value=0.5),
        ("Dinov2ForImageClassification", "Dinov2Model"),
        28,
    ),
    "dinov2-mlp": ("Dinov2Config", dict(VIT, mlp_ratio=4), ("Dinov2ForImageClassification",), 28),
    "swin": ("SwinConfig", dict(SWIN, drop_path_rate=0.0), ("SwinForImageClassification", "SwinModel"), 32),
}
MAIN = ("vit", "deit", "dinov2", "swin")


def build(family, which=0):
    config_class, settings, classes, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**settings, num_labels=10)
    return getattr(transformers, classes[which])(config).eval()


def images(family, n=2, seed=0):
    side = FAMILIES[family][3]
    return torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", MAIN)
def test_plan_compress_save_load_export(family, tmp_path):
    model = build(family)
    profile = macs_profile(model)  # what `dcvit macs` shows: every block has an attention side and an MLP
    assert all(a > 0 for a in profile.attn) and all(m > 0 for m in profile.mlp) and profile.total > sum(profile.blocks)
    plan = dcvit.plan(model, 0.7)
    assert plan.n_blocks >= 1 and plan.macs_planned <= plan.macs_target * 1.01
    shots = torch.utils.data.TensorDataset(images(family, 16, seed=1), torch.zeros(16, dtype=torch.long))
    result = dcvit.compress(model, 0.8, shots, SMOKE)
    assert result.macs <= result.plan.macs_target
    dcvit.save(result.model, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["adapter"] == get_adapter(model).name and spec["base"]["class"] == FAMILIES[family][2][0]
    loaded = dcvit.load(tmp_path / "m")
    x = images(family)
    assert torch.equal(loaded(x), result.model(x)) and loaded(x).shape == (2, 10)
    exported = torch.export.export(loaded, (x,))
    torch.testing.assert_close(exported.module()(x), loaded(x))


@torch.no_grad()
def _zero_removed(model, adapter, block, heads_kept=None, units_kept=None, attention=True):
    """`model` with the removed parts' contributions zeroed: what an exact edit must compute."""
    if not attention or heads_kept is not None:
        proj = adapter.head_projection(block)
        attn = block.attention
        kept = heads_kept if attention else []
        for h in set(range(adapter.attention_heads(block))) - set(kept):
            proj.weight[:, h * attn.head_dim : (h + 1) * attn.head_dim] = 0
        if not attention:
            proj.bias.zero_()
    if units_kept is not None:
        fc2 = adapter.mlp_linears(block)[1]
        fc2.weight[:, sorted(set(range(fc2.in_features)) - set(units_kept))] = 0
        if not units_kept:
            fc2.bias.zero_()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_edits_equal_zeroing_what_they_remove(family):
    """Attention removed, heads and MLP units pruned, a block dropped: each equals the original model with the
    removed parts' outputs zeroed (LayerScale, SwiGLU branches, Swin's relative position bias and slots)."""
    model = build(family)
    adapter = get_adapter(model)
    width = adapter.mlp_hidden(adapter.blocks(model)[1])
    units = list(range(0, width, 3))
    edits = {0: (False, None), 1: (True, units, [1]), 2: (False, [])}
    edited = edit_blocks(model, edits)
    blocks = adapter.blocks(model)
    _zero_removed(model, adapter, blocks[0], attention=False)
    _zero_removed(model, adapter, blocks[1], heads_kept=[1], units_kept=units)
    _zero_removed(model, adapter, blocks[2], units_kept=[], attention=False)
    x = images(family)
    torch.testing.assert_close(edited(x), model(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    profile = macs_profile(edited)
    assert profile.attn[0] == 0 and profile.blocks[2] == 0 and profile.mlp_hidden[1] == len(units)


@pytest.mark.parametrize("family", MAIN)
def test_headless_backbones_give_their_pooled_output(family, tmp_path):
    classes = FAMILIES[family][2]
    model = build(family, len(classes) - 1)  # the bare ...Model
    x = images(family)
    wrapped = dcvit.arch.runnable(model)
    assert torch.equal(wrapped(x), model(pixel_values=x).pooler_output)
    small = drop_blocks(model, [1])
    dcvit.save(small, tmp_path / "m")
    assert torch.equal(dcvit.load(tmp_path / "m")(x), small(x))


def test_the_papers_plan_and_block_drops_apply_to_swin():
    """The paper's surgery (attention removed, MLPs narrowed) and dropped blocks, in the stages' slots."""
    model = build("swin")
    plan = dcvit.plan(model, 0.75)
    small = drop_blocks(dcvit.apply_plan(model, plan, plan.candidate_blocks[: plan.n_blocks]), [3])
    assert small(images("swin")).shape == (2, 10)
    assert [type(b).__name__ for b in get_adapter(small).blocks(small)][-1] == "DroppedBlock"


def test_family_statistics_match_transformers_image_processor_defaults():
    for adapter in (dcvit.arch.adapter_for_spec(f"transformers-{f}") for f in ("vit", "deit", "dinov2", "swin")):
        stats = adapter.processor
        actual = hf_common.statistics_of(getattr(transformers, stats.processor)(), stats.processor)
        assert actual == stats


def test_statistics_come_from_the_processor_cached_with_the_checkpoint(tmp_path, caplog):
    build("deit").save_pretrained(tmp_path)
    transformers.DeiTImageProcessor(image_mean=[0.1], image_std=[0.2], resample=2).save_pretrained(tmp_path)
    model = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path)
    cfg = dcvit.arch.runnable(model).pretrained_cfg
    assert cfg["mean"] == (0.1,) and cfg["std"] == (0.2,) and cfg["interpolation"] == "bilinear"
    assert "without an image processor" not in caplog.text


def test_a_bad_swin_spec_is_refused_in_one_line(tmp_path):
    dcvit.save(drop_blocks(build("swin"), [3]), tmp_path / "m")
    spec_file = tmp_path / "m" / "spec.json"
    spec = json.loads(spec_file.read_text())
    spec["base"]["kwargs"]["num_heads"] = [2]
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="one num_heads per stage") as err:
        dcvit.load(tmp_path / "m")
    assert "\n" not in str(err.value)
