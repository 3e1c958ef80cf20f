"""Adapter for timm's Eva class: EVA, EVA-02 and timm's rope ViTs (vit_*_rope_*, Perception Encoder, ...).

EVA-02 blocks use SwiGLU MLPs, packed or split, often with a norm over the hidden units (see mlps); rope is
given to every block by the model, so a block without attention just ignores it. LayerScale is a bare
parameter (gamma_2). Both pre-norm (EvaBlock) and post-norm (EvaBlockPostNorm) blocks are supported.
"""

from __future__ import annotations

from timm.models.eva import Eva, EvaBlock, EvaBlockPostNorm

from . import register_adapter
from .base import FLAG, NOTHING, MlpParts, Setting, choice, either, integer, listed, number
from .timm_common import gamma_scale
from .timm_vit import COUNT, DROP_RATES, RATE, SIZE, TimmFamilyAdapter

HEADS = integer(1, 1 << 12)
# What a model file may pass to timm's Eva (see timm_vit.VIT_SETTINGS for why a whitelist); norm_layer is a
# callable in Eva, so it is not settable from a file.
EVA_SETTINGS: dict[str, Setting] = {
    "img_size": SIZE,
    "patch_size": SIZE,
    "in_chans": integer(1, 1 << 12),
    "num_classes": integer(),
    "global_pool": choice("", "avg", "avgmax", "max", "token", "map"),
    "embed_dim": integer(1),
    "depth": COUNT,
    "num_heads": HEADS,
    "num_kv_heads": either(NOTHING, HEADS, listed(HEADS, 1000)),
    "qkv_bias": FLAG,
    "qkv_fused": FLAG,
    "qk_norm": FLAG,
    "mlp_ratio": number(0.0, 1e3),
    "swiglu_mlp": FLAG,
    "swiglu_align_to": integer(0, 1 << 12),
    "scale_mlp": FLAG,
    "scale_attn_inner": FLAG,
    "attn_type": choice("eva", "rope"),
    "pos_drop_rate": RATE,
    "patch_drop_rate": RATE,
    "init_values": either(NOTHING, number(0.0, 1e3)),
    "attn_only_layer_scale": FLAG,
    "class_token": FLAG,
    "num_reg_tokens": integer(0, 1 << 10),
    "no_embed_class": FLAG,
    "use_abs_pos_emb": FLAG,
    "use_rot_pos_emb": FLAG,
    "rope_type": choice("cat", "mixed", "dinov3", "mrope", None),
    "rope_grid_offset": number(-1e3, 1e3),
    "rope_grid_indexing": choice("ij", "xy"),
    "rope_temperature": number(0.0, 1e9),
    "rope_rotate_half": FLAG,
    "rope_shift_coords": either(NOTHING, number()),
    "rope_jitter_coords": either(NOTHING, number()),
    "rope_rescale_coords": either(NOTHING, number()),
    "rope_mrope_section": either(NOTHING, listed(integer(0, 1 << 12), 3)),
    "use_post_norm": FLAG,
    "use_pre_transformer_norm": FLAG,
    "use_post_transformer_norm": either(NOTHING, FLAG),
    "use_fc_norm": either(NOTHING, FLAG),
    "attn_pool_num_heads": either(NOTHING, HEADS),
    "attn_pool_mlp_ratio": either(NOTHING, number(0.0, 1e3)),
    "dynamic_img_size": FLAG,
    "dynamic_img_pad": FLAG,
    "ref_feat_shape": either(NOTHING, SIZE),
    "head_init_scale": number(0.0, 1e3),
    **DROP_RATES,
}


@register_adapter
class TimmEvaAdapter(TimmFamilyAdapter):
    name = "timm-eva"
    family = "timm EVA / EVA-02 / rope ViT"
    pre_norm = (EvaBlock,)
    post_norm = (EvaBlockPostNorm,)

    model_class = Eva
    settings = EVA_SETTINGS

    def pre_norm_parts(self, block):
        return MlpParts(norm=block.norm2, mlp=block.mlp, scale=gamma_scale(block.gamma_2), drop_path=block.drop_path2)

    def tail_modules(self, model):
        tail = (model.norm, model.attn_pool, model.fc_norm, model.head_drop, model.head)
        return [m for m in tail if m is not None]
