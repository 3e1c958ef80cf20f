"""The adapter protocol: the few structural facts about a ViT family that the algorithm needs.

An adapter knows how to list a model's blocks, which sub-modules of a block are its attention (with
norm1) and its MLP (without norm2), how to swap or drop a block, how to reach the output tokens
before pooling and head, and how to describe the base model so it can be rebuilt with no network.
Everything else (planning, surgery, mimicking, selection) is written once against this protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class MlpParts:
    """What a compressed block keeps from an original block: norm2, the MLP, LayerScale and drop-path."""
    norm: nn.Module
    mlp: nn.Module
    scale: nn.Module
    drop_path: nn.Module


class Adapter:
    """Base class; subclasses fill in the structure of one model family and register themselves."""

    name: ClassVar[str] = "base"
    # Attribute names inside a block: the attention side (norm1 + attention) and the MLP (no norm2).
    attention_names: ClassVar[tuple[str, ...]] = ("norm1", "attn")
    mlp_name: ClassVar[str] = "mlp"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    # --- blocks -----------------------------------------------------------------------------
    def block_containers(self, model: nn.Module) -> list[tuple[nn.Module, int]]:
        """(parent container, index in it) for every transformer block, in forward order."""
        raise NotImplementedError

    def block_paths(self, model: nn.Module) -> list[str]:
        """Qualified module names of the blocks (as named_modules() spells them), in forward order."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [parent[i] for parent, i in self.block_containers(model)]

    def set_block(self, model: nn.Module, index: int, block: nn.Module) -> None:
        parent, i = self.block_containers(model)[index]
        parent[i] = block

    def mlp_parts(self, block: nn.Module) -> MlpParts:
        raise NotImplementedError

    def mlp_hidden(self, block: nn.Module) -> int:
        return self.mlp_linears(block)[0].out_features

    def mlp_linears(self, block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
        """fc1 and fc2 of a block's MLP: its first and last Linear (true for timm and torchvision MLPs)."""
        mlp = getattr(block, self.mlp_name)
        linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
        if len(linears) < 2:
            raise ValueError(f"{self.name}: the MLP of a block has {len(linears)} Linear layer(s); expected fc1 and fc2")
        return linears[0], linears[-1]

    # --- forward pieces ---------------------------------------------------------------------
    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """All output tokens after the final norm, before pooling and head (what Eq. 3 mimics)."""
        return model.forward_features(x)

    def tail_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules after the last block (final norm, pooling, head): always frozen in mimicking."""
        raise NotImplementedError

    def class_token_index(self, model: nn.Module) -> int | None:
        """Index of the class token in features() output (for CLS-only mimicking), None without one."""
        return None

    def input_size(self, model: nn.Module) -> tuple[int, int, int] | None:
        """(C, H, W) the model was built for, read from its structure; None if it cannot tell."""
        return None

    # --- description for save/load ----------------------------------------------------------
    def base_spec(self, model: nn.Module) -> dict[str, Any]:
        """JSON-able description from which build() makes an identically shaped model, offline."""
        raise NotImplementedError

    @staticmethod
    def build(spec: dict[str, Any]) -> nn.Module:
        raise NotImplementedError
