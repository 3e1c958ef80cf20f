"""What the adapters of timm's plain-ViT families share (ViT, EVA, BEiT, CaiT, ViT-RelPos).

Their blocks hold norm1, attn, norm2 and mlp, in one of two forms:
- pre-norm: x + drop_path(ls1(attn(norm1(x)))), then x + drop_path(ls2(mlp(norm2(x))));
- post-norm (timm's ResPost blocks): x + drop_path(norm1(attn(x))), then x + drop_path(norm2(mlp(x))).
Removing the attention removes its residual branch (norm1 with it, whichever side it sits on); removing the MLP
removes norm2 with it; a post-norm block without attention keeps its order (MlpParts.post_norm). Blocks that run
attention and MLP in parallel have no single branch to remove and are refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from timm.layers import LayerScale
from torch import nn

from . import UnsupportedModelError, mlps
from .base import Adapter, MlpParts
from .blocks import MlpOnlyBlock

PARALLEL = "its attention and MLP branches run in parallel on one input, so neither can be removed alone"


def gamma_scale(gamma: nn.Parameter | None) -> nn.Module:
    """A block's LayerScale held as a bare parameter (EVA, BEiT, CaiT: gamma_2) as a module sharing it."""
    if gamma is None:
        return nn.Identity()
    scale = LayerScale(gamma.shape[0], device="meta")  # no allocation: the parameter is replaced at once
    scale.gamma = gamma
    return scale


class TimmBlocksAdapter(Adapter):
    """Adapter base for a timm model whose `blocks` hold pre-norm and/or post-norm blocks (see module doc)."""

    family: ClassVar[str] = "timm model"
    pre_norm: ClassVar[tuple[type, ...]] = ()
    post_norm: ClassVar[tuple[type, ...]] = ()
    refused: ClassVar[Mapping[str, str]] = {}  # block class name -> why it cannot be edited

    @classmethod
    def check_blocks(cls, model: nn.Module) -> bool:
        """True, or a one-line UnsupportedModelError naming the first block or MLP that cannot be edited."""
        supported = ", ".join(t.__name__ for t in (*cls.pre_norm, *cls.post_norm))
        for i, block in enumerate(cls.blocks_of(model)):
            if isinstance(block, nn.Identity):
                continue
            name = type(block).__name__
            if not isinstance(block, MlpOnlyBlock) and type(block) not in (*cls.pre_norm, *cls.post_norm):
                why = cls.refused.get(name, "dcvit knows no edit of it")
                raise UnsupportedModelError(f"{cls.family} block {i} is a {name}: {why}; supported blocks: {supported}")
            trouble = mlps.problem(block.mlp)
            if trouble:
                raise UnsupportedModelError(f"{cls.family} block {i} ({name}): {trouble}")
        return True

    @staticmethod
    def blocks_of(model: nn.Module) -> Sequence[nn.Module]:
        return model.blocks

    def block_containers(self, model):
        blocks = self.blocks_of(model)
        return [(blocks, i) for i in range(len(blocks))]

    def block_paths(self, model):
        return [f"blocks.{i}" for i in range(len(self.blocks_of(model)))]

    def mlp_parts(self, block):
        if isinstance(block, self.post_norm):  # norm2 normalises the MLP's output and goes with it
            return MlpParts(block.norm2, block.mlp, nn.Identity(), block.drop_path2, post_norm=True)
        return self.pre_norm_parts(block)

    def pre_norm_parts(self, block: nn.Module) -> MlpParts:
        return MlpParts(norm=block.norm2, mlp=block.mlp, scale=block.ls2, drop_path=block.drop_path2)

    def mlp_hidden(self, block):
        return mlps.hidden_width(block.mlp)
