"""The structure search over every edit (docs/method.md §11): per block, keep / narrow the MLP / remove the
MLP / remove attention (the MLP maybe narrowed) / drop the block, and with CompressConfig.prune_heads keep
only some attention heads. The default structure."""

from __future__ import annotations

from ..structure_registry import DEFAULT_STRUCTURE, register_structure
from .searching import SearchStructure


@register_structure
class Auto(SearchStructure):
    name = DEFAULT_STRUCTURE
    summary = (
        "the synthetic metric set chooses per block among narrowing or removing the MLP, removing attention, "
        "or dropping the block"
    )
    edits = "any edit"

    def floor(self, profile, candidates):
        return profile.total - sum(profile.blocks[b] for b in candidates), "all candidate blocks dropped"
