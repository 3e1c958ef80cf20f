"""Adapter for timm's Cait (CaiT): the self-attention blocks (`blocks`) are the candidates; the class-attention
blocks after them (`blocks_token_only`) only read the patch tokens into the class token and are left whole,
frozen with the head. LayerScale is a bare parameter (gamma_2) and one drop-path serves both branches.
"""

from __future__ import annotations

from timm.models.cait import Cait, LayerScaleBlock

from . import register_adapter
from .base import FLAG, MlpParts, Setting, choice, integer, number
from .timm_common import gamma_scale
from .timm_vit import COUNT, DROP_RATES, RATE, SIZE, TimmFamilyAdapter

# What a model file may pass to timm's Cait (see timm_vit.VIT_SETTINGS for why a whitelist).
CAIT_SETTINGS: dict[str, Setting] = {
    "img_size": SIZE,
    "patch_size": SIZE,
    "in_chans": integer(1, 1 << 12),
    "num_classes": integer(),
    "global_pool": choice("", "token", "avg"),
    "embed_dim": integer(1),
    "depth": COUNT,
    "num_heads": integer(1, 1 << 12),
    "mlp_ratio": number(0.0, 1e3),
    "qkv_bias": FLAG,
    "pos_drop_rate": RATE,
    "init_values": number(0.0, 1e3),
    "depth_token_only": COUNT,
    "mlp_ratio_token_only": number(0.0, 1e3),
    **DROP_RATES,
}


@register_adapter
class TimmCaitAdapter(TimmFamilyAdapter):
    name = "timm-cait"
    family = "timm CaiT"
    pre_norm = (LayerScaleBlock,)

    model_class = Cait
    settings = CAIT_SETTINGS

    def pre_norm_parts(self, block):
        return MlpParts(norm=block.norm2, mlp=block.mlp, scale=gamma_scale(block.gamma_2), drop_path=block.drop_path)

    def tail_modules(self, model):
        return [model.blocks_token_only, model.norm, model.head_drop, model.head]

    def class_token_index(self, model):
        return 0  # forward_features puts the class token the class-attention blocks made first
