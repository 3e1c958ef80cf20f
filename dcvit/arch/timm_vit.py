"""Adapter for timm's VisionTransformer family (ViT, DeiT, DeiT3 with LayerScale, any size, with or without class token)."""
from __future__ import annotations

from typing import Any

import timm
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from . import register_adapter
from .base import Adapter, MlpParts


def timm_spec(model: nn.Module, name_key: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A timm model is rebuilt from its registered name plus the kwargs that shaped it."""
    recorded = getattr(model, "dcvit_base", None)
    if recorded is not None:
        return dict(recorded)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.get("architecture"):
        raise ValueError(f"cannot describe this {name_key} for saving: it was not created by a registered "
                         f"timm name; create it with dcvit.create_model(name, **kwargs)")
    return {"source": "timm", "name": cfg["architecture"], "kwargs": kwargs}


def patch_embed_input_size(patch_embed: nn.Module) -> tuple[int, int, int] | None:
    if getattr(patch_embed, "img_size", None) is None:
        return None
    return (patch_embed.proj.in_channels, *patch_embed.img_size)


def build_timm(spec: dict[str, Any]) -> nn.Module:
    model = timm.create_model(spec["name"], pretrained=False, **spec.get("kwargs", {}))
    model.dcvit_base = dict(spec)
    return model


@register_adapter
class TimmViTAdapter(Adapter):
    name = "timm"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def block_containers(self, model):
        return [(model.blocks, i) for i in range(len(model.blocks))]

    def block_paths(self, model):
        return [f"blocks.{i}" for i in range(len(model.blocks))]

    def mlp_parts(self, block):
        return MlpParts(norm=block.norm2, mlp=block.mlp, scale=block.ls2, drop_path=block.drop_path2)

    def tail_modules(self, model):
        return [m for m in (model.norm, model.fc_norm, model.head_drop, model.head) if m is not None]

    def class_token_index(self, model):
        return 0 if getattr(model, "cls_token", None) is not None else None

    def input_size(self, model):
        # timm keeps the pretrained config's input size even when img_size/in_chans were overridden.
        return patch_embed_input_size(model.patch_embed)

    def base_spec(self, model):
        kwargs = {
            "img_size": list(model.patch_embed.img_size),
            "in_chans": model.patch_embed.proj.in_channels,
            "num_classes": model.num_classes,
            "global_pool": model.global_pool,
        }
        return timm_spec(model, "VisionTransformer", kwargs)

    @staticmethod
    def build(spec):
        return build_timm(spec)
