"""The blocks surgery puts in a model (dcvit/surgery.py makes them; docs/method.md §3 and §11): a block without
its attention, a removed MLP, a dropped block. They live beside the adapters because adapters recognise them
(an edited block is still a block of its family) and must not import the surgery that creates them.
"""

from __future__ import annotations

import torch
from torch import nn


class MlpOnlyBlock(nn.Module):
    """A transformer block without its attention: x + drop_path(scale(mlp(norm(x)))), or with a post-norm
    block's order, x + drop_path(scale(norm(mlp(x))))."""

    def __init__(
        self, norm: nn.Module, mlp: nn.Module, scale: nn.Module, drop_path: nn.Module, post_norm: bool = False
    ):
        super().__init__()
        self.norm2, self.mlp, self.ls2, self.drop_path2 = norm, mlp, scale, drop_path
        self.post_norm = post_norm

    # The keywords are what timm's parents pass their blocks (ViT and EVA: attn_mask, is_causal; EVA: rope; BEiT:
    # shared_rel_pos_bias; ViT-RelPos: shared_rel_pos). All concern attention, so they are ignored here. Named and
    # typed rather than *args/**kwargs so TorchScript compiles the block; DroppedBlock takes the same.
    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: torch.Tensor | None = None,
        shared_rel_pos_bias: torch.Tensor | None = None,
        shared_rel_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.norm2(self.mlp(x)) if self.post_norm else self.mlp(self.norm2(x))
        return x + self.drop_path2(self.ls2(h))


class ZeroMlp(nn.Module):
    """A removed MLP: adds nothing to the residual stream, so its block keeps only its attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class DroppedBlock(nn.Identity):
    """A dropped block: its input unchanged. Unlike a plain nn.Identity it takes the keywords timm's parents
    pass their blocks (see MlpOnlyBlock.forward), so the model still runs with them and compiles in TorchScript."""

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: torch.Tensor | None = None,
        shared_rel_pos_bias: torch.Tensor | None = None,
        shared_rel_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return x


def is_edited(block: nn.Module) -> bool:
    """A block surgery made: attention removed (MlpOnlyBlock) or dropped (an identity)."""
    return isinstance(block, (MlpOnlyBlock, nn.Identity))
