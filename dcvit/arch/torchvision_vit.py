"""Adapter for torchvision's VisionTransformer (vit_b_16 and friends)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from . import register_adapter
from .base import NOTHING, Adapter, MlpParts, Setting, check_keys, check_kwargs, either, integer

# A model file may pass torchvision's VisionTransformer its sizes only (no norm_layer or conv stem objects).
TV_SETTINGS: dict[str, Setting] = {
    "image_size": integer(1, 1 << 16),
    "patch_size": integer(1, 1 << 16),
    "num_layers": integer(0, 1000),
    "num_heads": integer(1, 1 << 12),
    "hidden_dim": integer(1),
    "mlp_dim": integer(1),
    "num_classes": integer(),
    "representation_size": either(NOTHING, integer(1)),
}


@register_adapter
class TorchvisionViTAdapter(Adapter):
    name = "torchvision"
    family = "torchvision ViT"
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

    def head(self, model, tokens):
        return model.heads(tokens[:, 0])

    def tail_modules(self, model):
        return [model.encoder.ln, model.heads]

    def class_token_index(self, model):
        return 0

    def input_size(self, model):
        return (3, model.image_size, model.image_size)

    def base_spec(self, model):
        first = next(b for b in model.encoder.layers if hasattr(b, "self_attention"))
        return {
            "source": "torchvision",
            "kwargs": {
                "image_size": model.image_size,
                "patch_size": model.patch_size,
                "num_layers": len(model.encoder.layers),
                "num_heads": first.self_attention.num_heads,
                "hidden_dim": model.hidden_dim,
                "mlp_dim": model.mlp_dim,
                "num_classes": model.num_classes,
                "representation_size": model.representation_size,
            },
        }

    @staticmethod
    def build(spec):
        check_keys("torchvision base", spec, ("source", "kwargs"))
        if spec.get("source", "torchvision") != "torchvision":
            raise ValueError("torchvision base must have source 'torchvision'")
        return VisionTransformer(**check_kwargs("torchvision VisionTransformer", spec.get("kwargs"), TV_SETTINGS))
