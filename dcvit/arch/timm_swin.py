"""Adapters for timm's SwinTransformer and SwinTransformerV2: blocks are flattened across stages in forward order.

Compressing a Swin block removes its (shifted-)window attention, the DC-ViT analogue of the paper's
Swin experiments, which removed whole pairs of blocks. The patch merging between stages is never edited.
Swin V2 blocks are post-norm (x + drop_path(norm1(attn(x))), x + drop_path(norm2(mlp(x)))), so their
MlpParts say so and a block without attention keeps that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Block
from torch import nn

from . import register_adapter
from .base import FLAG, NOTHING, Adapter, MlpParts, Setting, choice, either, integer, listed, number
from .blocks import is_edited
from .timm_vit import ACTIVATION, DROP_RATES, SIZE, build_timm, patch_embed_input_size, timm_spec

# What a model file may pass to timm's Swin models (see timm_vit.VIT_SETTINGS for why a whitelist).
HEADS = integer(1, 1 << 12)
WINDOW = either(integer(1, 1 << 12), listed(integer(1, 1 << 12), 2))  # one window, square or (h, w)
STAGES = 4  # timm's Swin V2 has one pretrained window size per stage, four by default
SWIN_SETTINGS: dict[str, Setting] = {
    "img_size": SIZE,
    "patch_size": integer(1, 1 << 12),
    "in_chans": integer(1, 1 << 12),
    "num_classes": integer(),
    "global_pool": choice("", "avg", "max", "avgmax"),
    "embed_dim": integer(1),
    "depths": listed(integer(0, 250), STAGES),
    "num_heads": either(HEADS, listed(HEADS)),
    "head_dim": either(NOTHING, integer(1, 1 << 12)),
    "window_size": either(WINDOW, listed(WINDOW, STAGES)),  # one for all stages, or one per stage
    "always_partition": FLAG,
    "strict_img_size": FLAG,
    "dynamic_img_size": FLAG,
    "mlp_ratio": number(0.0, 1e3),
    "qkv_bias": FLAG,
    "weight_init": choice("", "skip", "jax", "jax_nlhb", "moco"),
    **DROP_RATES,
}
SWINV2_SETTINGS: dict[str, Setting] = {
    "img_size": SIZE,
    "patch_size": SIZE,
    "in_chans": integer(1, 1 << 12),
    "num_classes": integer(),
    "global_pool": choice("", "avg", "max", "avgmax"),
    "embed_dim": integer(1),  # timm 1.0 reads it as one number (num_features = embed_dim * 2 ** stages)
    "depths": listed(integer(0, 250), STAGES),
    "num_heads": listed(HEADS, STAGES),
    "window_size": either(WINDOW, listed(WINDOW, STAGES)),
    "always_partition": FLAG,
    "strict_img_size": FLAG,
    "dynamic_img_size": FLAG,
    "mlp_ratio": number(0.0, 1e3),
    "qkv_bias": FLAG,
    "act_layer": ACTIVATION,
    "pretrained_window_sizes": listed(integer(0, 1 << 12), STAGES),
    **DROP_RATES,
}


class _TimmSwinBase(Adapter):
    """What timm's Swin V1 and V2 share: stages in model.layers, blocks in stage.blocks, norm + head after;
    rebuilt offline from the registered name plus `settings` (subclasses name the model class)."""

    model_class: ClassVar[type[nn.Module]] = nn.Module
    settings: ClassVar[Mapping[str, Setting]] = {}

    def block_containers(self, model):
        return [(stage.blocks, j) for stage in model.layers for j in range(len(stage.blocks))]

    def block_paths(self, model):
        return [f"layers.{s}.blocks.{j}" for s, stage in enumerate(model.layers) for j in range(len(stage.blocks))]

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
        return timm_spec(model, self.model_class.__name__, kwargs, self.settings)

    @classmethod
    def build(cls, spec):
        return build_timm(spec, cls.model_class.__name__, cls.settings)


@register_adapter
class TimmSwinAdapter(_TimmSwinBase):
    name = "timm-swin"
    family = "timm Swin"
    model_class = SwinTransformer
    settings = SWIN_SETTINGS

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def mlp_parts(self, block):
        return MlpParts(norm=block.norm2, mlp=block.mlp, scale=nn.Identity(), drop_path=block.drop_path2)


@register_adapter
class TimmSwinV2Adapter(_TimmSwinBase):
    name = "timm-swinv2"
    family = "timm Swin V2"
    model_class = SwinTransformerV2
    settings = SWINV2_SETTINGS

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        if not isinstance(model, SwinTransformerV2):
            return False
        # a subclassed block may compute something else than the post-norm form the surgery rebuilds
        return all(type(b) is SwinTransformerV2Block or is_edited(b) for b in cls().blocks(model))

    def mlp_parts(self, block):
        return MlpParts(
            norm=block.norm2, mlp=block.mlp, scale=nn.Identity(), drop_path=block.drop_path2, post_norm=True
        )
