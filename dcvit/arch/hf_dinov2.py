"""Adapter for Hugging Face transformers' DINOv2: Dinov2ForImageClassification and Dinov2Model.

Blocks (`Dinov2Layer`) carry LayerScale: x + drop_path(layer_scale1(attention(norm1(x)))), then
x + drop_path(layer_scale2(mlp(norm2(x)))); a block without attention keeps layer_scale2. The MLP is fc1 -> act ->
fc2 or, with `use_swiglu_ffn`, a SwiGLU down_proj(silu(gate_proj(x)) * up_proj(x)) whose hidden units are
narrowed in gate_proj, up_proj and down_proj together (dcvit.arch.mlps). The classifier reads the class token
and the mean of the patch tokens, both among the tokens compression mimics; Dinov2Model's pooled output is the
class token. Without an image processor the statistics are BitImageProcessor's defaults (DINOv2's class).
"""

from __future__ import annotations

from . import register_adapter
from .base import FLAG, MlpParts, Setting, integer, number
from .hf_common import BIT_PROCESSOR, COMMON_CONFIG, RATE, HFAdapter, divisible

DINOV2_CONFIG: dict[str, Setting] = {
    **COMMON_CONFIG,
    "hidden_size": integer(1),
    "num_hidden_layers": integer(0, 1000),
    "num_attention_heads": integer(1, 1 << 12),
    "mlp_ratio": number(0.0, 1e3),
    "layerscale_value": number(0.0, 1e3),
    "drop_path_rate": RATE,
    "use_swiglu_ffn": FLAG,
    "use_mask_token": FLAG,
}


@register_adapter
class HFDinov2Adapter(HFAdapter):
    name = "transformers-dinov2"
    family = "transformers DINOv2"
    attention_names = ("norm1", "attention")
    classes = ("Dinov2ForImageClassification", "Dinov2Model")
    config_class = "Dinov2Config"
    settings = DINOV2_CONFIG
    processor = BIT_PROCESSOR

    def blocks_of(self, base):
        layers = base.encoder.layer
        return [(layers, i) for i in range(len(layers))]

    def mlp_parts(self, block):
        return MlpParts(norm=block.norm2, mlp=block.mlp, scale=block.layer_scale2, drop_path=block.drop_path)

    @classmethod
    def check_config(cls, kwargs):
        divisible(kwargs, "hidden_size", "num_attention_heads", f"transformers {cls.config_class}")
