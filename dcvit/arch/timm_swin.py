"""Adapter for timm's SwinTransformer: blocks are flattened across stages in forward order.

Compressing a Swin block removes its (shifted-)window attention, the DC-ViT analogue of the paper's
Swin experiments, which removed whole pairs of blocks.
"""
from __future__ import annotations

from torch import nn
from timm.models.swin_transformer import SwinTransformer

from . import register_adapter
from .base import Adapter, MlpParts
from .timm_vit import build_timm, patch_embed_input_size, timm_spec


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
        kwargs = {"img_size": list(model.patch_embed.img_size), "in_chans": model.patch_embed.proj.in_channels,
                  "num_classes": model.num_classes}
        return timm_spec(model, "SwinTransformer", kwargs)

    @staticmethod
    def build(spec):
        return build_timm(spec)
