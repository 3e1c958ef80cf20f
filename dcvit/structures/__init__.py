"""Structures: what a compressed block may lose, one registered class per structure (see
dcvit/structure_registry.py).

Built in: auto (the structure search over every edit, the default), mlp (the search over MLP edits),
dcvit (the paper, Eq. 1-2) and drop (the block-dropping baseline), each a module of this package that the
registry imports on its first lookup. This package face imports the registry only; `SearchStructure`, the
search structures' base class, is imported on first use (it imports the run machinery, which imports the
registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..structure_registry import (
    BASELINE_STRUCTURE,
    DEFAULT_STRUCTURE,
    PAPER_STRUCTURE,
    Structure,
    get_structure,
    register_structure,
    structure_names,
)

if TYPE_CHECKING:  # pragma: no cover
    from .searching import SearchStructure

__all__ = [
    "BASELINE_STRUCTURE",
    "DEFAULT_STRUCTURE",
    "PAPER_STRUCTURE",
    "SearchStructure",
    "Structure",
    "get_structure",
    "register_structure",
    "structure_names",
]


def __getattr__(name: str) -> Any:
    if name == "SearchStructure":
        from .searching import SearchStructure

        return SearchStructure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
