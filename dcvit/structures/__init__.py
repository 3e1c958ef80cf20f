"""Structures: what a compressed block may lose, one registered class per structure (see registry.py).

Built in: auto (the structure search over every edit, the default), mlp (the search over MLP edits),
dcvit (the paper, Eq. 1-2) and drop (the block-dropping baseline). Inside dcvit, modules import
`.structures.registry`, never this package, which imports the built-in structures.
"""

from __future__ import annotations

from . import auto, dcvit, drop, mlp  # noqa: F401  register the built-in structures
from .registry import (
    BASELINE_STRUCTURE,
    DEFAULT_STRUCTURE,
    PAPER_STRUCTURE,
    Structure,
    get_structure,
    register_structure,
    structure_names,
)
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
