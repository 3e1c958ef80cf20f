import timm
import torchvision
from helpers.models import small_vit, tiny_vit

import dcvit
from dcvit.macs import count_macs, macs_profile


def test_vit_base_matches_timm_published_gmacs_within_1_percent():
    model = timm.create_model("vit_base_patch16_224")
    assert abs(dcvit.count_macs(model) / 17.58e9 - 1) < 0.01


def test_fused_attention_matmuls_are_counted():
    model = small_vit(depth=2, dim=32, heads=2, img=32, patch=4)  # 64 patches + cls = 65 tokens
    profile = dcvit.macs_profile(model)
    tokens, dim = 65, 32
    linear = tokens * dim * 3 * dim + tokens * dim * dim
    matmuls = 2 * tokens * tokens * dim
    norm1 = 5 * tokens * dim  # fvcore: LayerNorm with affine = 5 per element
    assert profile.attn[0] == linear + matmuls + norm1
    assert profile.mlp[0] == 2 * tokens * dim * 4 * dim


def test_profile_blocks_are_attention_mlp_and_norms_and_total_is_count_macs():
    model = small_vit(depth=4)
    profile = dcvit.macs_profile(model)
    assert profile.input_size == (3, 32, 32)
    assert len(profile.attn) == 4 and sum(profile.blocks) < profile.total
    assert profile.total == dcvit.count_macs(model)
    assert all(b == a + m + 5 * 17 * 48 for a, m, b in zip(profile.attn, profile.mlp, profile.blocks))


def test_torchvision_vit_counts_like_timm():
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128, num_classes=10
    )
    tm = small_vit(depth=2, dim=32, heads=2)
    # Same shapes: identical MACs but for the head/patch embedding, which match too.
    assert dcvit.count_macs(tv, (3, 32, 32)) == dcvit.count_macs(tm)


def test_swin_profile_has_a_value_per_block():
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=56,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(1, 2),
        window_size=7,
        num_classes=10,
    )
    profile = dcvit.macs_profile(model)
    assert len(profile.attn) == 4 and all(a > 0 for a in profile.attn) and all(m > 0 for m in profile.mlp)


# --- counting leaves the model's modes alone --------------------------------------------------
def test_counting_restores_training_flags():
    model = tiny_vit().train()
    model.blocks[1].eval()
    modes = [m.training for m in model.modules()]
    count_macs(model), macs_profile(model), dcvit.plan(model, 0.8)
    assert [m.training for m in model.modules()] == modes
