"""The structure search over MLP edits only (docs/method.md §11): per block, keep, narrow or remove the MLP;
attention always stays."""

from __future__ import annotations

from ..structure_registry import register_structure
from .searching import SearchStructure


@register_structure
class Mlp(SearchStructure):
    name = "mlp"
    summary = "MLP edits only"
    mlp_only = True
    edits = "MLP edits only"

    def floor(self, profile, candidates):
        return profile.total - sum(
            profile.blocks[b] - profile.attn[b] for b in candidates
        ), "every candidate MLP removed"
