"""Whole-head pruning of timm's multi-head `Attention` (docs/method.md §11): the rows of q, k and v of the
dropped heads go from `qkv`, and the matching input columns from `proj`.

Exact for timm's `Attention`: every head is computed independently and `proj` sums their contributions, so
keeping heads H' computes exactly the kept heads' share of the original output. Refused where that does not
hold: a normalisation over all heads' outputs (`scale_norm`) mixes them. A gated attention (`gate`) is fine:
its gate is per channel, so its rows go with their heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import Attention
from torch import nn

from .mlps import keep_columns, keep_rows


def prunable_heads(attn: nn.Module) -> int:
    """How many heads `attn` has if whole heads can be pruned exactly, else 0."""
    if type(attn) is not Attention or not isinstance(attn.norm, nn.Identity):
        return 0
    return attn.num_heads


def _head_rows(heads: Sequence[int], head_dim: int, groups: int, attn_dim: int) -> torch.Tensor:
    """Row indices of the kept heads in a projection that stacks `groups` (q, k, v) of width attn_dim."""
    per_head = torch.arange(head_dim)
    one = torch.cat([h * head_dim + per_head for h in heads])
    return torch.cat([g * attn_dim + one for g in range(groups)])


@torch.no_grad()
def keep_attention_heads(attn: nn.Module, heads: Sequence[int]) -> None:
    """Keep `heads` (sorted distinct indices into attn's current heads, checked by dcvit.surgery.edit_block) of
    a timm `Attention`, in place."""
    rows = _head_rows(heads, attn.head_dim, 3, attn.attn_dim).to(attn.qkv.weight.device)
    cols = _head_rows(heads, attn.head_dim, 1, attn.attn_dim).to(attn.qkv.weight.device)
    attn.qkv, attn.proj = keep_rows(attn.qkv, rows), keep_columns(attn.proj, cols)
    if attn.gate is not None:  # the gate is per channel: its rows go with their heads
        attn.gate = keep_rows(attn.gate, cols)
    attn.num_heads, attn.attn_dim = len(heads), len(heads) * attn.head_dim
