"""Adapter for Hugging Face transformers' ViT: ViTForImageClassification and ViTModel (see hf_common.py for
how an HF model is run, described and rebuilt).

Blocks are transformers 5's `ViTLayer`: x + dropout(attention(layernorm_before(x))), then
x + dropout(mlp(layernorm_after(x))) with `ViTMLP` = fc1 -> act -> fc2, so the generic surgery applies as is.
A bare ViTModel is compressed for its pooled output (dense + tanh on the class token).
"""

from __future__ import annotations

from torch import nn

from . import register_adapter
from .base import NOTHING, MlpParts, Setting, choice, either, integer
from .hf_common import (  # HFImageClassifier, data_config and wrap: this module's public names before hf_common
    ACTIVATIONS,
    COMMON_CONFIG,
    VIT_PROCESSOR,
    HFAdapter,
    HFImageClassifier,
    data_config,
    divisible,
    hf_of,
    wrap,
)

# The ViTConfig fields that shape the network (DeiTConfig has the same ones).
VIT_CONFIG: dict[str, Setting] = {
    **COMMON_CONFIG,
    "hidden_size": integer(1),
    "num_hidden_layers": integer(0, 1000),
    "num_attention_heads": integer(1, 1 << 12),
    "intermediate_size": integer(1),
    "encoder_stride": integer(1, 1 << 16),
    "pooler_output_size": either(NOTHING, integer(1)),  # ViTModel's pooler
    "pooler_act": choice("tanh", *ACTIVATIONS),
}


@register_adapter
class HFViTAdapter(HFAdapter):
    name = "transformers-vit"
    family = "transformers ViT"
    attention_names = ("layernorm_before", "attention")
    classes = ("ViTForImageClassification", "ViTModel")
    config_class = "ViTConfig"
    settings = VIT_CONFIG
    processor = VIT_PROCESSOR

    def blocks_of(self, base):
        return [(base.layers, i) for i in range(len(base.layers))]

    def mlp_parts(self, block):
        return MlpParts(norm=block.layernorm_after, mlp=block.mlp, scale=nn.Identity(), drop_path=block.dropout)

    @classmethod
    def check_config(cls, kwargs):
        divisible(kwargs, "hidden_size", "num_attention_heads", f"transformers {cls.config_class}")


__all__ = ["HFViTAdapter", "HFImageClassifier", "data_config", "hf_of", "wrap", "VIT_CONFIG"]
