"""Block surgery (METHOD.md §3): remove a block's attention and keep a random subset of its MLP units.

A compressed block computes ``x + drop_path(ls2(mlp'(norm2(x))))``: norm1 and attention are gone;
``mlp'`` reuses the chosen rows of fc1 (weight and bias) and columns of fc2 (weight), fc2's bias whole.
Every edit is recorded on the returned model (``model.dcvit_edits``) so `dcvit.load` can rebuild it.
The input model is never modified.
"""
from __future__ import annotations

import copy
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from .arch import get_adapter
from .arch.base import Adapter


class MlpOnlyBlock(nn.Module):
    """A transformer block without its attention: x + drop_path(scale(mlp(norm(x))))."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, scale: nn.Module, drop_path: nn.Module):
        super().__init__()
        self.norm2, self.mlp, self.ls2, self.drop_path2 = norm, mlp, scale, drop_path

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def random_units(hidden: int, keep: int, seed: int, block: int) -> list[int]:
    """Seeded random choice of `keep` of `hidden` MLP units for one block (sorted, so rebuilds match)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + block)
    return sorted(torch.randperm(hidden, generator=gen)[:keep].tolist())


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


def narrow_linear_pair(mlp: nn.Module, units: Sequence[int]) -> None:
    """Keep `units` of the hidden layer between the first and last Linear of `mlp`, in place."""
    names = [name for name, m in mlp.named_modules() if isinstance(m, nn.Linear)]
    fc1, fc2 = mlp.get_submodule(names[0]), mlp.get_submodule(names[-1])
    idx = torch.as_tensor(list(units), dtype=torch.long, device=fc1.weight.device)
    new_fc1 = nn.Linear(fc1.in_features, len(idx), bias=fc1.bias is not None).to(fc1.weight)
    new_fc2 = nn.Linear(len(idx), fc2.out_features, bias=fc2.bias is not None).to(fc2.weight)
    with torch.no_grad():
        new_fc1.weight.copy_(fc1.weight[idx])
        if fc1.bias is not None:
            new_fc1.bias.copy_(fc1.bias[idx])
        new_fc2.weight.copy_(fc2.weight[:, idx])
        if fc2.bias is not None:
            new_fc2.bias.copy_(fc2.bias)
    _set_submodule(mlp, names[0], new_fc1)
    _set_submodule(mlp, names[-1], new_fc2)


def compressed_block(adapter: Adapter, block: nn.Module, units: Sequence[int], remove_attention: bool) -> nn.Module:
    """A new block: a copy of `block` with its MLP narrowed to `units` and, optionally, no attention."""
    if isinstance(block, (MlpOnlyBlock, nn.Identity)):
        raise ValueError("this block is already compressed or dropped; each block can be compressed once")
    block = copy.deepcopy(block)
    hidden = adapter.mlp_hidden(block)
    if not units or min(units) < 0 or max(units) >= hidden or len(set(units)) != len(units):
        raise ValueError(f"kept MLP units must be 1..{hidden} distinct indices in [0, {hidden})")
    parts = adapter.mlp_parts(block)
    narrow_linear_pair(parts.mlp, units)
    if remove_attention:
        return MlpOnlyBlock(parts.norm, parts.mlp, parts.scale, parts.drop_path)
    return block


def _edited_copy(model: nn.Module) -> nn.Module:
    new = copy.deepcopy(model)
    new.dcvit_edits = list(getattr(model, "dcvit_edits", []))
    return new


def _check_block(b: int, num_blocks: int) -> None:
    if not 0 <= b < num_blocks:
        raise ValueError(f"block {b} out of range: the model has blocks 0..{num_blocks - 1}")


def _compress_in_place(model: nn.Module, units: Mapping[int, Sequence[int]], remove_attention: bool) -> nn.Module:
    adapter = get_adapter(model)
    num_blocks = len(adapter.blocks(model))
    for i, kept in sorted(units.items()):
        _check_block(i, num_blocks)
        kept = sorted(int(u) for u in kept)
        adapter.set_block(model, i, compressed_block(adapter, adapter.blocks(model)[i], kept, remove_attention))
        model.dcvit_edits.append({"op": "compress", "block": i, "remove_attention": remove_attention, "kept_units": kept})
    return model


def compress_blocks(model: nn.Module, units: Mapping[int, Sequence[int]], remove_attention: bool = True) -> nn.Module:
    """A copy of `model` with each block i in `units` compressed to keep the MLP units units[i]."""
    get_adapter(model)  # fail on unsupported models before copying them
    return _compress_in_place(_edited_copy(model), units, remove_attention)


def apply_plan(model: nn.Module, plan, blocks: Iterable[int], seed: int = 0,
               units: Optional[Mapping[int, Sequence[int]]] = None) -> nn.Module:
    """Compress `blocks` as `plan` says: attention removed (if planned) and `plan.mlp_hidden` random units kept.

    `units` overrides the random choice per block (used by the activation-based-choice ablation).
    """
    adapter = get_adapter(model)
    blocks = [int(b) for b in blocks]
    current = adapter.blocks(model)
    chosen = {}
    for b in blocks:
        _check_block(b, len(current))
        hidden = adapter.mlp_hidden(current[b])
        keep = plan.hidden_for(hidden)
        chosen[b] = list(units[b]) if units and b in units else random_units(hidden, keep, seed, b)
    return compress_blocks(model, chosen, plan.remove_attention)


def _drop_in_place(model: nn.Module, blocks: Iterable[int]) -> nn.Module:
    adapter = get_adapter(model)
    num_blocks = len(adapter.blocks(model))
    for b in sorted({int(b) for b in blocks}):
        _check_block(b, num_blocks)
        adapter.set_block(model, b, nn.Identity())
        model.dcvit_edits.append({"op": "drop", "block": b})
    return model


def drop_blocks(model: nn.Module, blocks: Iterable[int]) -> nn.Module:
    """The block-dropping baseline (PRACTISE): a copy of `model` with whole blocks replaced by identity."""
    get_adapter(model)
    return _drop_in_place(_edited_copy(model), blocks)


def replay_edits(model: nn.Module, edits: Sequence[Mapping]) -> nn.Module:
    """Re-apply recorded edits (from a model file) to a freshly built base model, in place (no copies)."""
    model.dcvit_edits = list(getattr(model, "dcvit_edits", []))
    for edit in edits:
        if edit["op"] == "compress":
            _compress_in_place(model, {edit["block"]: edit["kept_units"]}, edit["remove_attention"])
        elif edit["op"] == "drop":
            _drop_in_place(model, [edit["block"]])
        else:
            raise ValueError(f"unknown edit '{edit['op']}' in model file; accepted: compress, drop")
    return model


@torch.no_grad()
def activation_units(model: nn.Module, block: int, images: torch.Tensor, keep: int) -> list[int]:
    """Ablation (paper Tab. 6): keep the MLP units with the largest mean |GELU(fc1 x)| on the few-shot images."""
    adapter = get_adapter(model)
    fc1, _ = adapter.mlp_linears(adapter.blocks(model)[block])
    totals = []
    handle = fc1.register_forward_hook(lambda m, i, out: totals.append(torch.nn.functional.gelu(out).abs().flatten(0, -2).mean(0)))
    try:
        model.eval()(images)
    finally:
        handle.remove()
    return sorted(torch.stack(totals).mean(0).topk(keep).indices.tolist())


@torch.no_grad()
def reinit_mlps(model: nn.Module, blocks: Iterable[int], seed: int = 0) -> nn.Module:
    """Ablation (paper Tab. 6): re-initialise the narrowed MLPs (timm's ViT init) instead of reusing weights."""
    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(seed)
    for b in blocks:
        for linear in adapter.mlp_linears(adapter.blocks(model)[b]):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen).clamp_(-2, 2) * 0.02)
            if linear.bias is not None:
                linear.bias.zero_()
    return model
