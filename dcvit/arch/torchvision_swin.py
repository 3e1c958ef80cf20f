"""Adapter for torchvision's SwinTransformer, V1 (swin_t/s/b) and V2 (swin_v2_t/s/b).

model.features is [stem, stage 0, patch merging, stage 1, ...]; the blocks are those of every stage in
forward order, and the stem and patch merging layers are never edited. V1 blocks are pre-norm; V2 blocks
(SwinTransformerBlockV2) are post-norm, x + sd(norm1(attn(x))) and x + sd(norm2(mlp(x))), so their MlpParts
say so and a V2 block without attention keeps that order.

torchvision builds Swin from classes (block, downsample layer, norm layer), so a model file names the
block and patch-merging classes from a fixed table and gives the sizes; the description is read from the
unedited model and kept on it (`dcvit_base`) before its first block is replaced, since an edited model no
longer shows its MLP width or, with every attention of a stage removed, that stage's heads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torchvision.models.swin_transformer import (
    PatchMerging,
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlock,
    SwinTransformerBlockV2,
)

from . import register_adapter
from .base import Adapter, MlpParts, Setting, check_keys, check_kwargs, choice, integer, listed, mlp_ratio, number
from .blocks import is_edited

BLOCKS = {"SwinTransformerBlock": SwinTransformerBlock, "SwinTransformerBlockV2": SwinTransformerBlockV2}
MERGES = {"PatchMerging": PatchMerging, "PatchMergingV2": PatchMergingV2}
RATE = number(0.0, 1.0)
# What a model file may pass to torchvision's SwinTransformer: sizes, rates, and classes from the tables above.
TV_SWIN_SETTINGS: dict[str, Setting] = {
    "patch_size": listed(integer(1, 1 << 12), 2),
    "embed_dim": integer(1),
    "depths": listed(integer(0, 250), 6),
    "num_heads": listed(integer(1, 1 << 12), 6),
    "window_size": listed(integer(1, 1 << 12), 2),
    "mlp_ratio": number(0.0, 1e3),
    "dropout": RATE,
    "attention_dropout": RATE,
    "stochastic_depth_prob": RATE,
    "num_classes": integer(),
    "block": choice(*BLOCKS),
    "downsample_layer": choice(*MERGES),
}
LAYER_NORM_EPS = 1e-5  # torchvision's default norm_layer, the only one a model file can rebuild


def _stages(model: nn.Module) -> list[nn.Sequential]:
    return [model.features[i] for i in range(1, len(model.features), 2)]


@register_adapter
class TorchvisionSwinAdapter(Adapter):
    name = "torchvision-swin"
    family = "torchvision Swin / Swin V2"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        if not isinstance(model, SwinTransformer):
            return False
        # a block class of one's own may compute something else than the forms the surgery rebuilds
        blocks = [b for stage in _stages(model) for b in stage]
        return all(type(b) in BLOCKS.values() or is_edited(b) for b in blocks)

    def block_containers(self, model):
        return [(stage, j) for stage in _stages(model) for j in range(len(stage))]

    def block_paths(self, model):
        return [f"features.{i}.{j}" for i in range(1, len(model.features), 2) for j in range(len(model.features[i]))]

    def set_block(self, model, index, block):
        if getattr(model, "dcvit_base", None) is None:
            model.dcvit_base = _describe(model)  # the last moment the original structure is readable
        super().set_block(model, index, block)

    def mlp_parts(self, block):
        post_norm = type(block) is SwinTransformerBlockV2
        return MlpParts(block.norm2, block.mlp, nn.Identity(), block.stochastic_depth, post_norm=post_norm)

    def features(self, model, x: torch.Tensor) -> torch.Tensor:
        return model.norm(model.features(x))  # (B, H, W, C) tokens, before permute, pooling and head

    def head(self, model, tokens):
        return model.head(model.flatten(model.avgpool(model.permute(tokens))))

    def tail_modules(self, model):
        return [model.norm, model.head]

    def input_size(self, model):
        # torchvision's Swin takes any size; it was designed for the one whose last stage is a single window
        # (224 for swin_t/s/b, 256 for swin_v2_t/s/b), which is also what its weights were trained at.
        kwargs = _describe(model)["kwargs"]
        scale = 2 ** (len(kwargs["depths"]) - 1)
        return (3, *(p * w * scale for p, w in zip(kwargs["patch_size"], kwargs["window_size"])))

    def base_spec(self, model):
        spec = _describe(model)
        _refuse_other_norms(model)
        return spec

    @staticmethod
    def build(spec):
        check_keys("torchvision Swin base", spec, ("source", "kwargs"))
        if spec.get("source", "torchvision") != "torchvision":
            raise ValueError("torchvision Swin base must have source 'torchvision'")
        kwargs = dict(check_kwargs("torchvision SwinTransformer", spec.get("kwargs"), TV_SWIN_SETTINGS))
        for key in ("patch_size", "embed_dim", "depths", "num_heads", "window_size"):
            if key not in kwargs:
                raise ValueError(f"torchvision SwinTransformer setting {key!r} is missing (it has no default)")
        if len(kwargs["num_heads"]) != len(kwargs["depths"]) or sum(kwargs["depths"]) < 2:
            raise ValueError("torchvision SwinTransformer needs one num_heads per stage and at least 2 blocks")
        kwargs["block"] = BLOCKS[kwargs.get("block", "SwinTransformerBlock")]
        kwargs["downsample_layer"] = MERGES[kwargs.get("downsample_layer", "PatchMerging")]
        model = SwinTransformer(**kwargs)
        model.dcvit_base = {"source": "torchvision", "kwargs": dict(spec["kwargs"])}
        return model


def _describe(model: nn.Module) -> dict[str, Any]:
    """The base spec recorded on the model (by build, or before its first edit), else read off its modules."""
    recorded = getattr(model, "dcvit_base", None)
    if recorded is not None:
        return recorded
    if getattr(model, "dcvit_edits", None) or any(is_edited(b) for stage in _stages(model) for b in stage):
        raise ValueError(
            "cannot describe this torchvision SwinTransformer: it was edited without dcvit's surgery, "
            "so its original sizes are unknown; edit it with dcvit.surgery"
        )
    return {"source": "torchvision", "kwargs": _read_kwargs(model)}


def _read_kwargs(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments of an unedited torchvision SwinTransformer, read from its modules."""
    stem, stages = model.features[0][0], _stages(model)
    blocks = [b for stage in stages for b in stage]
    first = blocks[0]
    merges = [model.features[i] for i in range(2, len(model.features), 2)]
    v2 = type(first) is SwinTransformerBlockV2
    return {
        "patch_size": list(stem.kernel_size),
        "embed_dim": stem.out_channels,
        "depths": [len(s) for s in stages],
        "num_heads": [s[0].attn.num_heads if len(s) else 1 for s in stages],  # an empty stage has no heads
        "window_size": list(first.attn.window_size),
        "mlp_ratio": mlp_ratio(first.mlp[0].out_features, first.mlp[0].in_features),
        "dropout": first.attn.dropout,
        "attention_dropout": first.attn.attention_dropout,
        "stochastic_depth_prob": _stochastic_depth_prob(blocks[-1].stochastic_depth.p, len(blocks)),
        "num_classes": model.num_classes,
        "block": "SwinTransformerBlockV2" if v2 else "SwinTransformerBlock",
        "downsample_layer": type(merges[0]).__name__ if merges else ("PatchMergingV2" if v2 else "PatchMerging"),
    }


def _stochastic_depth_prob(last: float, n: int) -> float:
    """torchvision gives the last of n blocks the rate p * float(n - 1) / (n - 1), which is p up to a rounding:
    take whichever of that rate and its float neighbours torchvision maps back onto it."""
    found = [
        p for p in (last, math.nextafter(last, 0.0), math.nextafter(last, 1.0)) if p * float(n - 1) / (n - 1) == last
    ]
    return min(found, key=lambda p: len(repr(p))) if found else last  # 0.1, not 0.10000000000000002


def _refuse_other_norms(model: nn.Module) -> None:
    """Refuse a norm a model file cannot describe. dcvit.save's rebuild check (dcvit/rebuild.py) catches other
    differences too, but an eps of 1e-6 for 1e-5 differs by only 3e-5 of the output, too close to its tolerance."""
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    if any(type(m) is not nn.LayerNorm or m.eps != LAYER_NORM_EPS for m in norms):
        raise ValueError(
            "cannot describe this torchvision SwinTransformer for saving: it has a norm_layer other than "
            f"torchvision's default (nn.LayerNorm, eps={LAYER_NORM_EPS})"
        )
