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


def prunable_heads(attn: nn.Module) -> int:
    """How many heads `attn` has if whole heads can be pruned exactly, else 0."""
    if type(attn) is not Attention or not isinstance(attn.norm, nn.Identity):
        return 0
    return attn.num_heads


def _rows(heads: Sequence[int], head_dim: int, groups: int, attn_dim: int) -> torch.Tensor:
    """Row indices of the kept heads in a projection that stacks `groups` (q, k, v) of width attn_dim."""
    per_head = torch.arange(head_dim)
    one = torch.cat([h * head_dim + per_head for h in heads])
    return torch.cat([g * attn_dim + one for g in range(groups)])


def _linear_like(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=old.bias is not None).to(old.weight)


@torch.no_grad()
def keep_attention_heads(attn: nn.Module, heads: Sequence[int]) -> None:
    """Keep `heads` (distinct indices into attn's current heads) of a timm `Attention`, in place."""
    if not prunable_heads(attn):
        raise ValueError(f"{type(attn).__name__} does not support exact head pruning")
    heads = sorted(int(h) for h in heads)
    if not heads or len(set(heads)) != len(heads) or not all(0 <= h < attn.num_heads for h in heads):
        raise ValueError(f"kept heads must be distinct indices in [0, {attn.num_heads}), at least one")
    rows = _rows(heads, attn.head_dim, 3, attn.attn_dim).to(attn.qkv.weight.device)
    cols = _rows(heads, attn.head_dim, 1, attn.attn_dim).to(attn.qkv.weight.device)
    new_dim = len(heads) * attn.head_dim
    qkv = _linear_like(attn.qkv, attn.qkv.in_features, 3 * new_dim)
    qkv.weight.copy_(attn.qkv.weight[rows])
    if qkv.bias is not None:
        qkv.bias.copy_(attn.qkv.bias[rows])
    proj = _linear_like(attn.proj, new_dim, attn.proj.out_features)
    proj.weight.copy_(attn.proj.weight[:, cols])
    if proj.bias is not None:
        proj.bias.copy_(attn.proj.bias)
    if attn.gate is not None:
        gate = _linear_like(attn.gate, attn.gate.in_features, new_dim)
        gate.weight.copy_(attn.gate.weight[cols])
        if gate.bias is not None:
            gate.bias.copy_(attn.gate.bias[cols])
        attn.gate = gate
    attn.qkv, attn.proj = qkv, proj
    attn.num_heads, attn.attn_dim = len(heads), new_dim
