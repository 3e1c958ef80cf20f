"""Adapter for torchvision's VisionTransformer (vit_b_16 and friends)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from . import register_adapter
from .base import Adapter, MlpParts


@register_adapter
class TorchvisionViTAdapter(Adapter):
    name = "torchvision"
    attention_names = ("ln_1", "self_attention")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def block_containers(self, model):
        return [(model.encoder.layers, i) for i in range(len(model.encoder.layers))]

    def block_paths(self, model):
        return [f"encoder.layers.{name}" for name, _ in model.encoder.layers.named_children()]

    def mlp_parts(self, block):
        return MlpParts(norm=block.ln_2, mlp=block.mlp, scale=nn.Identity(), drop_path=nn.Identity())

    def features(self, model, x: torch.Tensor) -> torch.Tensor:
        x = model._process_input(x)
        x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return model.encoder(x)  # the encoder ends with its final LayerNorm

    def tail_modules(self, model):
        return [model.encoder.ln, model.heads]

    def class_token_index(self, model):
        return 0

    def input_size(self, model):
        return (3, model.image_size, model.image_size)

    def base_spec(self, model):
        first = next(b for b in model.encoder.layers if hasattr(b, "self_attention"))
        return {"source": "torchvision", "kwargs": {
            "image_size": model.image_size, "patch_size": model.patch_size,
            "num_layers": len(model.encoder.layers), "num_heads": first.self_attention.num_heads,
            "hidden_dim": model.hidden_dim, "mlp_dim": model.mlp_dim,
            "num_classes": model.num_classes, "representation_size": model.representation_size}}

    @staticmethod
    def build(spec):
        return VisionTransformer(**spec["kwargs"])
