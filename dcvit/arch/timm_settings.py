"""The settings that shape a timm VisionTransformer, read back from its modules.

timm models do not keep the kwargs they were created with, so a model made by
``timm.create_model(name, class_token=False, act_layer="relu")`` and described by its name alone would reload
as another network. `complete_vit_spec` adds to a spec every setting in which the model differs from what the
spec's name and kwargs build (that reference is built on the meta device: no memory, no init). Settings are
keyed like VisionTransformer's kwargs. Surgery changes blocks, so a block is read only for the settings its
recorded edits left alone: a compressed model reads like its base.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.layers import create_act, create_norm
from torch import nn

from .base import Setting, check_kwargs, mlp_ratio

# A block's parts an edit can change: attention (with norm1, ls1) removed, heads pruned, MLP (with norm2) removed,
# MLP narrowed. A dropped block changed all of them.
ASPECTS = ("attention", "heads", "mlp", "width")
# Settings rebuilt only together: timm derives fc_norm from global_pool when fc_norm is not given.
GROUPS = (("global_pool", "final_norm", "fc_norm"),)

_ACT_NAMES: dict[type, str] = {}
for _table in (create_act._ACT_LAYER_DEFAULT, create_act._ACT_LAYER_ME):
    for _name, _cls in _table.items():
        _ACT_NAMES.setdefault(_cls, _name)
_NORM_NAMES: dict[type, str] = {}
for _name, _cls in create_norm._NORM_MAP.items():
    _NORM_NAMES.setdefault(_cls, _name)


class Unnamed(str):
    """A module timm has no setting name for (its description): recordable only where it is the default."""


def _act(module: nn.Module) -> str:
    if type(module) is nn.GELU:  # timm's default: the same function as timm's named "gelu" / "gelu_tanh"
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    return _ACT_NAMES.get(type(module)) or Unnamed(type(module).__name__)


def _norm(module: nn.Module) -> str:
    """The timm name of a norm built with its class's defaults; eps and the like cannot be named."""
    eps = getattr(module, "eps", None)
    default = inspect.signature(type(module)).parameters.get("eps")
    name = _NORM_NAMES.get(type(module))
    if name and (default is None or default.default == eps):
        return name
    return Unnamed(f"{type(module).__name__}(eps={eps})")


def _is_set(module: Any) -> bool:
    return module is not None and not isinstance(module, nn.Identity)


def changed_aspects(edits: list[dict], depth: int) -> list[set[str]]:
    """Per block, which of ASPECTS its recorded edits changed."""
    changed: list[set[str]] = [set() for _ in range(depth)]
    for edit in edits:
        block, op = edit.get("block"), edit.get("op")
        if not isinstance(block, int) or not 0 <= block < depth:
            continue
        attention = edit.get("attention", not edit.get("remove_attention", False)) and op != "drop"
        units = [] if op == "drop" else edit.get("kept_units")
        changed[block] |= {"attention"} if not attention else set()
        changed[block] |= {"heads"} if edit.get("kept_heads") is not None else set()
        changed[block] |= set() if units is None else ({"mlp", "width"} if len(units) == 0 else {"width"})
        if not attention and units is not None and len(units) == 0:  # dropped
            changed[block] |= set(ASPECTS)
    return changed


def _first(blocks: list[nn.Module], changed: list[set[str]], *aspects: str) -> nn.Module | None:
    return next((b for b, c in zip(blocks, changed, strict=True) if not c & set(aspects)), None)


def _model_settings(model: nn.Module) -> dict[str, Any]:
    embed = model.patch_embed  # timm's PatchEmbed, or a conv stem that may lack its attributes
    norm, fc_norm = _is_set(model.norm), _is_set(model.fc_norm)
    settings = {
        "in_chans": model.in_chans,
        "dynamic_img_pad": bool(getattr(embed, "dynamic_img_pad", False)),
        "embed_norm_layer": _norm(embed.norm) if _is_set(getattr(embed, "norm", None)) else None,
        "num_classes": model.num_classes,
        "global_pool": model.global_pool,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "class_token": model.cls_token is not None,
        "reg_tokens": model.num_reg_tokens,
        "no_embed_class": model.no_embed_class,
        "pos_embed": "learn" if model.pos_embed is not None else "none",
        "pre_norm": _is_set(model.norm_pre),
        "final_norm": norm or fc_norm,
        "fc_norm": fc_norm if norm or fc_norm else None,
        "pool_include_prefix": model.pool_include_prefix,
        "dynamic_img_size": model.dynamic_img_size,
        "drop_rate": model.head_drop.p,
        "pos_drop_rate": model.pos_drop.p,
        "patch_drop_rate": getattr(model.patch_drop, "prob", 0.0),
    }
    for key in ("img_size", "patch_size"):
        if getattr(embed, key, None) is not None:
            settings[key] = list(getattr(embed, key))
    return settings


def _attention_settings(block: nn.Module | None, heads_intact: nn.Module | None) -> dict[str, Any]:
    attn = getattr(block, "attn", None)
    if attn is None or not isinstance(getattr(attn, "proj", None), nn.Linear):
        return {}
    settings = {
        "qk_norm": _is_set(getattr(attn, "q_norm", None)),
        "proj_bias": attn.proj.bias is not None,
        "attn_drop_rate": attn.attn_drop.p,
        "proj_drop_rate": attn.proj_drop.p,
        "norm_layer": _norm(block.norm1),
    }
    if isinstance(getattr(attn, "qkv", None), nn.Linear):
        settings["qkv_bias"] = attn.qkv.bias is not None
    if hasattr(block, "ls1"):
        settings["init_values"] = getattr(block.ls1, "init_values", None) if _is_set(block.ls1) else None
    if heads_intact is not None and hasattr(heads_intact.attn, "num_heads"):
        settings["num_heads"] = heads_intact.attn.num_heads
    return settings


def _mlp_settings(block: nn.Module | None, width_intact: nn.Module | None, dim: int) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    mlp = getattr(block, "mlp", None)
    if mlp is not None and hasattr(mlp, "act"):
        settings["act_layer"] = _act(mlp.act)
        settings["norm_layer"] = _norm(block.norm2)
        if hasattr(block, "ls2"):
            settings["init_values"] = getattr(block.ls2, "init_values", None) if _is_set(block.ls2) else None
    fc1 = getattr(getattr(width_intact, "mlp", None), "fc1", None)
    if isinstance(fc1, nn.Linear):
        settings["mlp_ratio"] = mlp_ratio(fc1.out_features, dim)
    return settings


def vit_settings(model: nn.Module) -> dict[str, Any]:
    """The settings of timm VisionTransformer `model` that its modules show, keyed like its kwargs."""
    settings = _model_settings(model)
    blocks = list(model.blocks)
    changed = changed_aspects(list(getattr(model, "dcvit_edits", [])), len(blocks))
    mlp_block = _first(blocks, changed, "mlp")
    settings.update(_mlp_settings(mlp_block, _first(blocks, changed, "mlp", "width"), model.embed_dim))
    attn_block = _first(blocks, changed, "attention")  # read last: norm1 and ls1 win over norm2 and ls2
    settings.update(_attention_settings(attn_block, _first(blocks, changed, "attention", "heads")))
    if len(blocks) > 1 and not changed[-1] >= set(ASPECTS):  # timm's drop-path rates rise to the rate at the last
        drop_path = getattr(blocks[-1], "drop_path2", None)
        settings["drop_path_rate"] = getattr(drop_path, "drop_prob", 0.0)
    return settings


def complete_vit_spec(model: nn.Module, spec: dict[str, Any], accepted: Mapping[str, Setting]) -> dict[str, Any]:
    """`spec` (a timm name and kwargs) plus every setting in which `model` differs from what it builds."""
    with torch.device("meta"):  # only the structure is read: skip the weight init (about 5x the build time)
        reference = timm.create_model(
            spec["name"], pretrained=False, **{**spec.get("kwargs", {}), "weight_init": "skip"}
        )
    have, built = vit_settings(model), vit_settings(reference)
    extra = {k: v for k, v in have.items() if k in built and built[k] != v}
    for group in GROUPS:
        if extra.keys() & set(group):
            extra.update({k: have[k] for k in group if k in have})
    for key, value in extra.items():
        if isinstance(value, Unnamed):
            raise ValueError(
                f"cannot record this VisionTransformer's {key}: {value} has no timm name (it differs from "
                f"{spec['name']}'s); create the model with a named one, e.g. dcvit.create_model(name, {key}=...)"
            )
    kwargs = {**spec.get("kwargs", {}), **extra}
    check_kwargs(f"VisionTransformer {spec['name']}", kwargs, accepted)
    return {**spec, "kwargs": kwargs}
