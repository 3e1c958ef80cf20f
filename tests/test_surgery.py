import pytest
import timm
import torch
import torchvision
from helpers.models import small_vit

import dcvit


def test_compressed_block_reuses_weights_and_drops_attention():
    model = small_vit(depth=4, init_values=0.1)  # DeiT3-style LayerScale
    p = dcvit.plan(model, 0.8)
    new = dcvit.apply_plan(model, p, [1, 2][: p.n_blocks], seed=3)
    edit = new.dcvit_edits[0]
    units = torch.tensor(edit["kept_units"])
    old_block, block = model.blocks[edit["block"]], new.blocks[edit["block"]]
    assert isinstance(block, dcvit.MlpOnlyBlock) and not hasattr(block, "attn")
    assert torch.equal(block.mlp.fc1.weight, old_block.mlp.fc1.weight[units])
    assert torch.equal(block.mlp.fc1.bias, old_block.mlp.fc1.bias[units])
    assert torch.equal(block.mlp.fc2.weight, old_block.mlp.fc2.weight[:, units])
    assert torch.equal(block.mlp.fc2.bias, old_block.mlp.fc2.bias)
    assert torch.equal(block.ls2.gamma, old_block.ls2.gamma)
    # The compressed block computes x + ls2(mlp'(norm2(x))).
    x = torch.randn(2, 17, 48)
    ref = x + old_block.ls2(block.mlp(old_block.norm2(x)))
    assert torch.allclose(block(x), ref)


def test_input_model_untouched_and_seed_reproducible():
    model = small_vit(depth=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = dcvit.plan(model, 0.7)
    a = dcvit.apply_plan(model, p, range(1, 1 + p.n_blocks), seed=1)
    b = dcvit.apply_plan(model, p, range(1, 1 + p.n_blocks), seed=1)
    c = dcvit.apply_plan(model, p, range(1, 1 + p.n_blocks), seed=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert a.dcvit_edits == b.dcvit_edits != c.dcvit_edits
    assert dcvit.count_macs(a) == p.macs_planned


def test_drop_blocks_is_identity():
    model = small_vit(depth=4)
    new = dcvit.drop_blocks(model, [1, 2])
    x = torch.randn(2, 3, 32, 32)
    tokens = model.patch_embed(x)
    tokens = model._pos_embed(tokens)
    manual = model.forward_head(model.norm(model.blocks[3](model.blocks[0](tokens))))
    assert torch.allclose(new(x), manual, atol=1e-5)
    assert dcvit.count_macs(new) < dcvit.count_macs(model)


def test_torchvision_and_swin_surgery_run():
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=128, num_classes=10
    ).eval()
    p = dcvit.plan(tv, 0.75)
    out = dcvit.apply_plan(tv, p, [1, 2][: p.n_blocks])(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=56,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(1, 2),
        window_size=7,
        num_classes=10,
    ).eval()
    p = dcvit.plan(swin, 0.9)
    new = dcvit.apply_plan(swin, p, p.candidate_blocks[: p.n_blocks])
    assert new(torch.randn(1, 3, 56, 56)).shape == (1, 10)
    assert dcvit.count_macs(new) <= p.macs_target


def test_unsupported_model_error_names_what_is_missing():
    with pytest.raises(dcvit.UnsupportedModelError, match="attention"):
        dcvit.plan(torchvision.models.resnet18(), 0.5)


def test_block_compressed_twice_is_refused():
    model = small_vit(depth=4)
    p = dcvit.plan(model, 0.8)
    once = dcvit.apply_plan(model, p, [1])
    with pytest.raises(ValueError, match="already"):
        dcvit.apply_plan(once, p, [1])
