"""Adapter for Hugging Face transformers' Swin: SwinForImageClassification and SwinModel.

As with timm's and torchvision's Swin (timm_swin.py, torchvision_swin.py), the blocks are those of every stage
in forward order, a compressed block loses its (shifted-)window attention, and the patch embedding and the
patch merging between stages are never edited. Blocks (`SwinLayer`) are pre-norm: x + drop_path(attention(
layernorm_before(x))) over windows, then x + dropout(mlp(layernorm_after(x))), so the generic surgery makes the
edited blocks. What differs from timm and torchvision is the calling convention: an HF stage calls each block
as block(x, input_dimensions, always_partition=...) and unpacks (hidden_states, attention weights), so an
edited block sits in the stage inside `StageSlot`, which speaks that convention; `blocks()` unwraps it, so the
rest of dcvit sees the edited block itself. Head pruning also keeps the heads' columns of the relative position
bias table. Without an image processor the statistics are ViTImageProcessor's defaults (Swin's class).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import register_adapter
from .base import FLAG, MlpParts, Setting, integer, listed, number
from .blocks import is_edited
from .hf_common import COMMON_CONFIG, RATE, VIT_PROCESSOR, HFAdapter, keep_projection_heads

STAGES = 8
SWIN_CONFIG: dict[str, Setting] = {
    **COMMON_CONFIG,
    "embed_dim": integer(1),
    "depths": listed(integer(0, 250), STAGES),
    "num_heads": listed(integer(1, 1 << 12), STAGES),
    "window_size": integer(1, 1 << 12),
    "mlp_ratio": number(0.0, 1e3),
    "drop_path_rate": RATE,
    "use_absolute_embeddings": FLAG,
    "encoder_stride": integer(1, 1 << 16),
}


class StageSlot(nn.Module):
    """An edited block (attention removed, or dropped) in an HF Swin stage: takes the stage's arguments, runs
    the block on the tokens and gives back (tokens, no attention weights) as a SwinLayer does."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(
        self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int], always_partition: bool = False, **kwargs
    ) -> tuple[torch.Tensor, None]:
        return self.block(hidden_states), None


@register_adapter
class HFSwinAdapter(HFAdapter):
    name = "transformers-swin"
    family = "transformers Swin"
    attention_names = ("layernorm_before", "attention")
    classes = ("SwinForImageClassification", "SwinModel")
    config_class = "SwinConfig"
    settings = SWIN_CONFIG
    processor = VIT_PROCESSOR

    def blocks_of(self, base):
        return [(stage.blocks, j) for stage in base.encoder.layers for j in range(len(stage.blocks))]

    def blocks(self, model):
        return [_unwrap(parent[i]) for parent, i in self.block_containers(model)]

    def set_block(self, model, index, block):
        parent, i = self.block_containers(model)[index]
        parent[i] = StageSlot(block) if is_edited(block) else block

    def mlp_parts(self, block):
        return MlpParts(norm=block.layernorm_after, mlp=block.mlp, scale=nn.Identity(), drop_path=block.dropout)

    def class_token_index(self, model):
        return None

    @torch.no_grad()
    def keep_heads(self, block, heads):
        keep_projection_heads(block.attention, heads)
        bias = block.attention.relative_position_bias
        table = bias.relative_position_bias_table  # (relative positions, heads)
        bias.relative_position_bias_table = nn.Parameter(table[:, heads].clone(), requires_grad=table.requires_grad)

    @classmethod
    def check_config(cls, kwargs: dict[str, Any]) -> None:
        what = f"transformers {cls.config_class}"
        depths, heads = kwargs.get("depths", [2, 2, 6, 2]), kwargs.get("num_heads", [3, 6, 12, 24])
        if len(depths) != len(heads):
            raise ValueError(f"{what} needs one num_heads per stage: depths={depths}, num_heads={heads}")
        dim = kwargs.get("embed_dim", 96)
        for stage, count in enumerate(heads):
            if (dim * 2**stage) % count:
                raise ValueError(f"{what} stage {stage} width {dim * 2**stage} is not a multiple of its {count} heads")


def _unwrap(block: nn.Module) -> nn.Module:
    return block.block if isinstance(block, StageSlot) else block
