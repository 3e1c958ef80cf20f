"""Adapter for timm's VisionTransformer family (ViT, DeiT, DeiT3 with LayerScale, any size, with or without class token).

Pre-norm blocks and ResPost (post-norm) blocks; plain, SwiGLU and packed SwiGLU MLPs (DINOv2-giant, AIMv2);
parallel blocks (ParallelScalingBlock, ParallelThingsBlock) are refused in one line (see timm_common).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import timm
from timm.layers import create_act, create_norm
from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer
from torch import nn

from . import register_adapter
from .base import (
    FLAG,
    NOTHING,
    Setting,
    check_keys,
    check_kwargs,
    choice,
    either,
    integer,
    listed,
    number,
    short,
)
from .heads import keep_attention_heads, prunable_heads
from .timm_common import PARALLEL, TimmBlocksAdapter
from .timm_settings import complete_vit_spec

# What a model file may pass to timm: architecture settings only, never checkpoint_path, pretrained_cfg(_overlay),
# pretrained, features_only, device or classes (those load files, go online, or run code); strings only where
# timm looks them up in its own tables.
SIZE = either(integer(1, 1 << 16), listed(integer(1, 1 << 16), 2))
COUNT = integer(0, 1000)  # blocks: even building on the meta device costs time per block
RATE = number(0.0, 1.0)
ACTIVATION = choice(*sorted(create_act._ACT_LAYER_DEFAULT))
NORM = choice(*sorted(create_norm._NORM_MAP))
DROP_RATES = {k: RATE for k in ("drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")}
VIT_SETTINGS: dict[str, Setting] = {
    "img_size": SIZE,
    "patch_size": SIZE,
    "in_chans": integer(1, 1 << 12),
    "num_classes": integer(),
    "global_pool": choice("", "avg", "avgmax", "max", "token", "map", "prr"),
    "embed_dim": integer(1),
    "depth": COUNT,
    "num_heads": integer(1, 1 << 12),
    "mlp_ratio": number(0.0, 1e3),
    "qkv_bias": FLAG,
    "qk_norm": FLAG,
    "proj_bias": FLAG,
    "init_values": either(NOTHING, number(0.0, 1e3)),
    "class_token": FLAG,
    "pos_embed": choice("", "none", "learn"),
    "no_embed_class": FLAG,
    "reg_tokens": integer(0, 1 << 10),
    "pre_norm": FLAG,
    "final_norm": FLAG,
    "fc_norm": either(NOTHING, FLAG),
    "pool_include_prefix": FLAG,
    "dynamic_img_size": FLAG,
    "dynamic_img_pad": FLAG,
    "pos_drop_rate": RATE,
    "patch_drop_rate": RATE,
    "weight_init": choice("", "skip", "reset", "jax", "jax_nlhb", "moco"),
    "fix_init": FLAG,
    "act_layer": ACTIVATION,
    "norm_layer": NORM,
    "embed_norm_layer": either(NOTHING, NORM),
    **DROP_RATES,
}
# Creation arguments that only say where pretrained weights come from: the saved file has the weights.
LOAD_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "pretrained_strict")


def timm_spec(model: nn.Module, family: str, kwargs: dict[str, Any], accepted: Mapping[str, Setting]) -> dict[str, Any]:
    """A timm model is rebuilt from its registered name plus the kwargs that shaped it; a spec that load
    would refuse is refused here, before anything is written."""
    recorded = getattr(model, "dcvit_base", None)
    if recorded is not None:
        kwargs = {k: v for k, v in recorded.get("kwargs", {}).items() if k not in LOAD_ONLY}
        spec = {"source": "timm", "name": recorded["name"], "kwargs": kwargs}
    else:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if not cfg.get("architecture"):
            raise ValueError(
                f"cannot describe this {family} for saving: it was not created by a registered "
                f"timm name; create it with dcvit.create_model(name, **kwargs)"
            )
        spec = {"source": "timm", "name": cfg["architecture"], "kwargs": kwargs}
    check_timm_spec(spec, family, accepted)
    return spec


def check_timm_spec(spec: Any, family: str, accepted: Mapping[str, Setting]) -> None:
    """A registered timm name (no hub, file or directory prefix: building stays offline) and accepted kwargs."""
    check_keys(f"{family} base", spec, ("source", "name", "kwargs"))
    name = spec.get("name")
    if spec.get("source", "timm") != "timm":
        raise ValueError(f"{family} base has source {short(spec.get('source'))}; expected 'timm'")
    if not isinstance(name, str) or not re.fullmatch(r"\w+", name, re.ASCII) or not timm.is_model(name):
        raise ValueError(
            f"{family} base name {short(name)} is not a registered timm model name "
            f"(hub, file and directory names are refused: model files rebuild offline)"
        )
    check_kwargs(f"{family} {name}", spec.get("kwargs", {}), accepted)


def patch_embed_input_size(patch_embed: nn.Module) -> tuple[int, int, int] | None:
    if getattr(patch_embed, "img_size", None) is None:
        return None
    return (patch_embed.proj.in_channels, *patch_embed.img_size)


def build_timm(spec: dict[str, Any], family: str, accepted: Mapping[str, Setting]) -> nn.Module:
    check_timm_spec(spec, family, accepted)
    model = timm.create_model(spec["name"], pretrained=False, **spec.get("kwargs", {}))
    model.dcvit_base = {"source": "timm", "name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}
    return model


class TimmFamilyAdapter(TimmBlocksAdapter):
    """A timm family whose model class holds `blocks` and a patch embedding, rebuilt offline from its registered
    name plus the settings in `settings` (a checked whitelist). Subclasses name the class and the blocks."""

    model_class: ClassVar[type[nn.Module]] = nn.Module
    settings: ClassVar[Mapping[str, Setting]] = {}

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, cls.model_class) and cls.check_blocks(model)

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
        return timm_spec(model, self.model_class.__name__, kwargs, self.settings)

    @classmethod
    def build(cls, spec):
        return build_timm(spec, cls.model_class.__name__, cls.settings)


@register_adapter
class TimmViTAdapter(TimmFamilyAdapter):
    name = "timm"
    family = "timm ViT/DeiT"

    pre_norm = (Block,)
    post_norm = (ResPostBlock,)
    refused = {"ParallelScalingBlock": PARALLEL, "DiffParallelScalingBlock": PARALLEL, "ParallelThingsBlock": PARALLEL}

    model_class = VisionTransformer
    settings = VIT_SETTINGS

    def tail_modules(self, model):
        tail = (model.norm, getattr(model, "attn_pool", None), model.fc_norm, model.head_drop, model.head)
        return [m for m in tail if m is not None]

    def attention_heads(self, block):
        return prunable_heads(block.attn)

    def keep_heads(self, block, heads):
        keep_attention_heads(block.attn, heads)

    def head_projection(self, block):
        return block.attn.proj

    def base_spec(self, model):
        # timm records no creation kwargs: the settings that shape this ViT are read from its modules
        return complete_vit_spec(model, timm_spec(model, "VisionTransformer", {}, self.settings), self.settings)
