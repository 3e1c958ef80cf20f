"""Adapter for timm's Beit (BEiT, BEiT v2): pre-norm blocks with a relative position bias in each attention
(or one shared by all blocks, computed by the model and given to every block, which a block without attention
ignores). LayerScale is a bare parameter (gamma_2); MLPs are plain or SwiGLU (see mlps).
"""

from __future__ import annotations

from timm.models.beit import Beit, Block

from . import register_adapter
from .base import FLAG, NOTHING, MlpParts, Setting, choice, either, integer, number
from .timm_common import gamma_scale
from .timm_vit import COUNT, DROP_RATES, RATE, SIZE, TimmFamilyAdapter

# What a model file may pass to timm's Beit (see timm_vit.VIT_SETTINGS for why a whitelist).
BEIT_SETTINGS: dict[str, Setting] = {
    "img_size": SIZE,
    "patch_size": SIZE,
    "in_chans": integer(1, 1 << 12),
    "num_classes": integer(),
    "global_pool": choice("", "avg", "token"),
    "embed_dim": integer(1),
    "depth": COUNT,
    "num_heads": integer(1, 1 << 12),
    "qkv_bias": FLAG,
    "mlp_ratio": number(0.0, 1e3),
    "swiglu_mlp": FLAG,
    "scale_mlp": FLAG,
    "pos_drop_rate": RATE,
    "init_values": either(NOTHING, number(0.0, 1e3)),
    "use_abs_pos_emb": FLAG,
    "use_rel_pos_bias": FLAG,
    "use_shared_rel_pos_bias": FLAG,
    "head_init_scale": number(0.0, 1e3),
    "use_fc_norm": either(NOTHING, FLAG),
    **DROP_RATES,
}


@register_adapter
class TimmBeitAdapter(TimmFamilyAdapter):
    name = "timm-beit"
    family = "timm BEiT"
    pre_norm = (Block,)

    model_class = Beit
    settings = BEIT_SETTINGS

    def pre_norm_parts(self, block):
        return MlpParts(norm=block.norm2, mlp=block.mlp, scale=gamma_scale(block.gamma_2), drop_path=block.drop_path2)

    def tail_modules(self, model):
        return [model.norm, model.fc_norm, model.head_drop, model.head]

    def class_token_index(self, model):
        return 0
