"""Adapter for timm's SwinTransformer: blocks are flattened across stages in forward order.

Compressing a Swin block removes its (shifted-)window attention, the DC-ViT analogue of the paper's
Swin experiments, which removed whole pairs of blocks.
"""

from __future__ import annotations

from timm.models.swin_transformer import SwinTransformer
from torch import nn

from . import register_adapter
from .base import FLAG, NOTHING, Adapter, MlpParts, Setting, choice, either, integer, listed, number
from .timm_vit import DROP_RATES, SIZE, build_timm, patch_embed_input_size, timm_spec

# What a model file may pass to timm's SwinTransformer (see timm_vit.VIT_SETTINGS for why a whitelist).
HEADS = integer(1, 1 << 12)
SWIN_SETTINGS: dict[str, Setting] = {
    "img_size": SIZE,
    "patch_size": integer(1, 1 << 12),
    "in_chans": integer(1, 1 << 12),
    "num_classes": integer(),
    "global_pool": choice("", "avg", "max", "avgmax"),
    "embed_dim": integer(1),
    "depths": listed(integer(0, 250), 4),
    "num_heads": either(HEADS, listed(HEADS)),
    "head_dim": either(NOTHING, integer(1, 1 << 12)),
    "window_size": either(integer(1, 1 << 12), listed(integer(1, 1 << 12), 2)),
    "always_partition": FLAG,
    "strict_img_size": FLAG,
    "dynamic_img_size": FLAG,
    "mlp_ratio": number(0.0, 1e3),
    "qkv_bias": FLAG,
    "weight_init": choice("", "skip", "jax", "jax_nlhb", "moco"),
    **DROP_RATES,
}


@register_adapter
class TimmSwinAdapter(Adapter):
    name = "timm-swin"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def block_containers(self, model):
        return [(stage.blocks, j) for stage in model.layers for j in range(len(stage.blocks))]

    def block_paths(self, model):
        return [f"layers.{s}.blocks.{j}" for s, stage in enumerate(model.layers) for j in range(len(stage.blocks))]

    def mlp_parts(self, block):
        return MlpParts(norm=block.norm2, mlp=block.mlp, scale=nn.Identity(), drop_path=block.drop_path2)

    def tail_modules(self, model):
        return [model.norm, model.head]

    def input_size(self, model):
        # timm keeps the pretrained config's input size even when img_size/in_chans were overridden.
        return patch_embed_input_size(model.patch_embed)

    def base_spec(self, model):
        kwargs = {
            "img_size": list(model.patch_embed.img_size),
            "in_chans": model.patch_embed.proj.in_channels,
            "num_classes": model.num_classes,
        }
        return timm_spec(model, "SwinTransformer", kwargs, SWIN_SETTINGS)

    @staticmethod
    def build(spec):
        return build_timm(spec, "SwinTransformer", SWIN_SETTINGS)
