"""The structure search's edit space (docs/method.md §11): what a block may become, and the MACs each change saves.

A block at state (attention kept, MLP units, heads) may lose its attention, some or all MLP units, or some whole
attention heads; `menu` and `head_menu` list the moves the search offers, `block_savings` prices them exactly from
the model's MACs profile (dcvit.macs).
"""

from __future__ import annotations

from dataclasses import dataclass

from .macs import MacsProfile

# MLP widths an edit may leave, as fractions of the block's original width (0: MLP removed).
WIDTHS = (0.75, 0.5, 0.25, 0.125, 0.0)
# Attention heads a head edit may leave, as fractions of the block's original head count (at least one).
HEAD_FRACTIONS = (0.75, 0.5, 0.25)


@dataclass(frozen=True)
class Edit:
    """One candidate change of one block: keep attention or not, keep `units` MLP hidden units."""

    block: int
    attention: bool
    units: int
    saved: int  # MACs it saves on the current model (from the MACs profile, exact for these layers)
    score: float  # KL increase on the synthetic set (Eq. 6): zero-shot, or after a trial fine-tune
    confirmed: bool = False
    heads: int | None = None  # attention heads kept (a head edit); None: the attention's heads unchanged

    def describe(self, width: int) -> str:
        if not self.attention and self.units == 0:
            return "drop"
        mlp = "MLP removed" if self.units == 0 else f"MLP {width}->{self.units}" if self.units < width else ""
        heads = f"{self.heads} heads kept" if self.heads is not None else ""
        return ", ".join(part for part in ("attention removed" if not self.attention else "", heads, mlp) if part)


def block_savings(
    profile: MacsProfile,
    block: int,
    has_attention: bool,
    width: int,
    attention: bool,
    units: int,
    heads_now: int = 0,
    heads: int | None = None,
) -> int:
    """MACs saved when a block at (has_attention, width, heads_now) becomes (attention, units, heads)."""
    if not attention and units == 0:
        return profile.blocks[block]
    saved = profile.attn[block] if has_attention and not attention else 0
    if heads is not None:  # every head costs the same: its share of qkv, of the attention products and of proj
        saved += round(profile.head(block) * (heads_now - heads))
    saved += round(profile.mlp_unit(block) * (width - units))
    if units == 0 and width > 0:  # norm2 goes with the MLP
        saved += profile.blocks[block] - profile.attn[block] - profile.mlp[block]
    return int(saved)


def menu(has_attention: bool, width: int, original: int, mlp_only: bool) -> list[tuple[bool, int]]:
    """(attention, units) edits reachable from a block's state: fewer MLP units and/or no attention."""
    widths = sorted({round(f * original) for f in WIDTHS if round(f * original) < width}, reverse=True)
    edits = [(has_attention, w) for w in widths if (has_attention or w > 0 or not mlp_only)]
    if has_attention and not mlp_only:
        edits += [(False, w) for w in [width, *widths]]
    return [e for e in edits if e != (has_attention, width) and not (mlp_only and not e[0] and has_attention)]


def head_menu(heads_now: int, original: int) -> list[int]:
    """Head counts a head edit may leave: fractions of the original count, fewer than now, at least one."""
    return sorted({h for h in (max(1, round(f * original)) for f in HEAD_FRACTIONS) if h < heads_now}, reverse=True)
