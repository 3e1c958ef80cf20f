"""Adapter for timm's VisionTransformerRelPos (vit_relpos_*, vit_srelpos_*): ViT blocks whose attention has a
relative position bias (per block, or one shared by all and given to every block, which a block without
attention ignores); pre-norm (RelPosBlock) or post-norm (ResPostRelPosBlock, the *_rpn_* models).
"""

from __future__ import annotations

from timm.models.vision_transformer_relpos import RelPosBlock, ResPostRelPosBlock, VisionTransformerRelPos

from . import register_adapter
from .base import FLAG, NOTHING, Setting, choice, either, integer, number
from .timm_vit import COUNT, DROP_RATES, SIZE, TimmFamilyAdapter

# What a model file may pass to timm's VisionTransformerRelPos (see timm_vit.VIT_SETTINGS for why a whitelist).
RELPOS_SETTINGS: dict[str, Setting] = {
    "img_size": SIZE,
    "patch_size": SIZE,
    "in_chans": integer(1, 1 << 12),
    "num_classes": integer(),
    "global_pool": choice("", "avg", "token"),
    "embed_dim": integer(1),
    "depth": COUNT,
    "num_heads": integer(1, 1 << 12),
    "mlp_ratio": number(0.0, 1e3),
    "qkv_bias": FLAG,
    "qk_norm": FLAG,
    "init_values": either(NOTHING, number(0.0, 1e3)),
    "class_token": FLAG,
    "fc_norm": FLAG,
    "rel_pos_type": choice("mlp", "mlp_swin", "bias"),
    "rel_pos_dim": either(NOTHING, integer(1, 1 << 12)),
    "shared_rel_pos": FLAG,
    "weight_init": choice("", "skip", "reset", "jax", "moco"),
    "fix_init": FLAG,
    **DROP_RATES,
}


@register_adapter
class TimmRelPosAdapter(TimmFamilyAdapter):
    name = "timm-relpos"
    family = "timm ViT-RelPos"
    pre_norm = (RelPosBlock,)
    post_norm = (ResPostRelPosBlock,)

    model_class = VisionTransformerRelPos
    settings = RELPOS_SETTINGS

    def tail_modules(self, model):
        return [model.norm, model.fc_norm, model.head_drop, model.head]
