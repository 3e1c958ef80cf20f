"""Block surgery (docs/method.md §3 and §11): what a block keeps of its attention and its MLP.

One general edit covers every structure: a block keeps or loses its attention, and keeps a subset of its MLP
units (all, some, or none). DC-ViT's compressed block loses its attention and computes
``x + drop_path(ls2(mlp'(norm2(x))))``, where ``mlp'`` reuses the chosen rows of fc1 (weight and bias) and
columns of fc2 (weight), fc2's bias whole. A block without its MLP computes ``x + ls1(attn(norm1(x)))``; a
block without both is dropped (identity). Every edit is recorded on the returned model (``model.dcvit_edits``)
so `dcvit.load` can rebuild it. The input model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .arch import get_adapter, mlps, runnable
from .arch.base import Adapter, MlpParts
from .arch.blocks import DroppedBlock, MlpOnlyBlock, ZeroMlp, is_edited
from .fingerprint import check_plan_fits
from .structure_registry import PAPER_STRUCTURE

__all__ = ["DroppedBlock", "MlpOnlyBlock", "ZeroMlp"]  # re-exported: the blocks surgery makes live in dcvit.arch


def random_units(hidden: int, keep: int, seed: int, block: int) -> list[int]:
    """Seeded random choice of `keep` of `hidden` MLP units for one block (sorted, so rebuilds match)."""
    gen = torch.Generator().manual_seed((seed * 100_003 + block) % 2**63)  # any CLI seed (< 2**63) fits torch
    return sorted(torch.randperm(hidden, generator=gen)[:keep].tolist())


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


def narrow_linear_pair(mlp: nn.Module, units: Sequence[int]) -> None:
    """Keep `units` of the hidden layer between the first and last Linear of `mlp`, in place (timm's gated MLPs
    and MLPs with a norm over the hidden units: in every branch and the norm, see dcvit.arch.mlps)."""
    if mlps.narrow(mlp, units):
        return
    names = [name for name, m in mlp.named_modules() if isinstance(m, nn.Linear)]
    fc1, fc2 = mlp.get_submodule(names[0]), mlp.get_submodule(names[-1])
    idx = torch.as_tensor(list(units), dtype=torch.long, device=fc1.weight.device)
    _set_submodule(mlp, names[0], mlps.keep_rows(fc1, idx))
    _set_submodule(mlp, names[-1], mlps.keep_columns(fc2, idx))


def _parts(adapter: Adapter, block: nn.Module) -> MlpParts:
    """norm2, MLP, LayerScale and drop-path of a block, also once its attention is gone."""
    if isinstance(block, MlpOnlyBlock):
        return MlpParts(block.norm2, block.mlp, block.ls2, block.drop_path2, block.post_norm)
    return adapter.mlp_parts(block)


def block_state(adapter: Adapter, block: nn.Module) -> tuple[bool, int]:
    """(attention kept, MLP hidden units) of a block in any edit state; a dropped block is (False, 0)."""
    if isinstance(block, nn.Identity):
        return False, 0
    if isinstance(_parts(adapter, block).mlp, ZeroMlp):
        return not isinstance(block, MlpOnlyBlock), 0
    return not isinstance(block, MlpOnlyBlock), adapter.mlp_hidden(block)


def block_heads(adapter: Adapter, block: nn.Module) -> int:
    """Attention heads of a block that can be pruned exactly (0: attention gone, or no head edits)."""
    if is_edited(block):
        return 0
    return adapter.attention_heads(block)


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    name = next(n for n, m in root.named_modules() if m is old and n)
    _set_submodule(root, name, new)


def edit_block(
    adapter: Adapter,
    block: nn.Module,
    attention: bool,
    units: Sequence[int] | None,
    heads: Sequence[int] | None = None,
) -> nn.Module:
    """A new block from `block`: attention kept or removed, and `units` (indices into its current MLP hidden
    units) kept, None meaning all of them and [] none; a kept attention keeps `heads` (indices into its
    current heads; None: all). A block left with neither attention nor MLP is dropped (identity)."""
    has_attention, width = block_state(adapter, block)
    prune_heads = _check_heads(adapter, block, attention, heads)
    if isinstance(block, nn.Identity):
        raise ValueError("this block is dropped already; a dropped block cannot be edited")
    if attention and not has_attention:
        raise ValueError("this block has no attention left to keep")
    if units is not None and (any(not 0 <= u < width for u in units) or len(set(units)) != len(units)):
        raise ValueError(f"kept MLP units must be distinct indices in [0, {width})")
    keep_all = units is None or len(units) == width
    if not attention and (width == 0 or (units is not None and len(units) == 0)):
        return DroppedBlock()
    if keep_all and attention == has_attention and not prune_heads:
        raise ValueError("the edit changes nothing: keep some attention or MLP units away")
    block = copy.deepcopy(block)
    if prune_heads:
        adapter.keep_heads(block, sorted(heads))
    parts = _parts(adapter, block)
    if not keep_all and len(units) == 0:
        _replace(block, parts.mlp, ZeroMlp())
        _replace(block, parts.norm, nn.Identity())  # norm2 only feeds the MLP
    elif not keep_all:
        narrow_linear_pair(parts.mlp, sorted(units))
    if has_attention and not attention:
        return MlpOnlyBlock(parts.norm, parts.mlp, parts.scale, parts.drop_path, parts.post_norm)
    return block


def _check_heads(adapter: Adapter, block: nn.Module, attention: bool, heads: Sequence[int] | None) -> bool:
    """Whether an edit prunes heads; a one-line error for heads the block cannot keep."""
    if heads is None:
        return False
    count = block_heads(adapter, block)
    if not attention or count == 0:
        raise ValueError("kept heads need a kept attention whose heads can be pruned (attention_heads() > 0)")
    if not heads or len(set(heads)) != len(heads) or any(not 0 <= h < count for h in heads):
        raise ValueError(f"kept heads must be distinct indices in [0, {count}), at least one")
    return len(heads) < count


def _edit_in_place(model: nn.Module, edits: Mapping[int, tuple]) -> nn.Module:
    adapter = get_adapter(model)
    num_blocks = len(adapter.blocks(model))
    for i, (attention, units, *rest) in sorted(edits.items()):
        _check_block(i, num_blocks)
        units = None if units is None else sorted(int(u) for u in units)
        heads = rest[0] if rest else None
        heads = None if heads is None else sorted(int(h) for h in heads)
        adapter.set_block(model, i, edit_block(adapter, adapter.blocks(model)[i], bool(attention), units, heads))
        record = {"op": "edit", "block": i, "attention": bool(attention), "kept_units": units}
        if heads is not None:  # older readers never see the field on files without head edits
            record["kept_heads"] = heads
        model.dcvit_edits.append(record)
    return model


def edit_blocks(model: nn.Module, edits: Mapping[int, tuple]) -> nn.Module:
    """A copy of `model` with block i edited to edits[i] = (attention kept, kept MLP unit indices or None[,
    kept head indices or None]). A model that returns more than logits (transformers) comes back wrapped."""
    return _edit_in_place(_edited_copy(runnable(model)), edits)


def _edited_copy(model: nn.Module) -> nn.Module:
    new = copy.deepcopy(model)
    new.dcvit_edits = list(getattr(model, "dcvit_edits", []))
    return new


def _check_block(b: int, num_blocks: int) -> None:
    if not 0 <= b < num_blocks:
        raise ValueError(f"block {b} out of range: the model has blocks 0..{num_blocks - 1}")


def compress_blocks(model: nn.Module, units: Mapping[int, Sequence[int]], remove_attention: bool = True) -> nn.Module:
    """A copy of `model` with each block i in `units` compressed to keep the MLP units units[i]."""
    return edit_blocks(model, {b: (not remove_attention, kept) for b, kept in units.items()})


def apply_plan(
    model: nn.Module, plan, blocks: Iterable[int], seed: int = 0, units: Mapping[int, Sequence[int]] | None = None
) -> nn.Module:
    """Compress `blocks` as `plan` says: attention removed (if planned) and `plan.mlp_hidden` random units kept.

    `units` overrides the random choice per block (used by the activation-based-choice ablation).
    """
    if not hasattr(plan, "hidden_for") or plan.mlp_hidden <= 0:
        raise ValueError(
            f"apply_plan takes a plan that narrows MLPs (structure '{PAPER_STRUCTURE}'); got one for structure "
            f"'{getattr(plan, 'structure', type(plan).__name__)}' (drop_blocks drops whole blocks)"
        )
    adapter = get_adapter(model)
    blocks = [int(b) for b in blocks]
    current = adapter.blocks(model)
    check_plan_fits(plan, model, current, adapter)  # a plan for another model: refused
    chosen = {}
    for b in blocks:
        _check_block(b, len(current))
        attention, hidden = block_state(adapter, current[b])
        if not attention or hidden == 0:
            raise ValueError(f"block {b} is already compressed or dropped; a plan compresses each block once")
        keep = plan.hidden_for(hidden)
        chosen[b] = list(units[b]) if units and b in units else random_units(hidden, keep, seed, b)
    return compress_blocks(model, chosen, plan.remove_attention)


def drop_blocks(model: nn.Module, blocks: Iterable[int]) -> nn.Module:
    """The block-dropping baseline (PRACTISE): a copy of `model` with whole blocks replaced by identity."""
    return edit_blocks(model, {int(b): (False, []) for b in blocks})


def replay_edits(model: nn.Module, edits: Sequence[Mapping]) -> nn.Module:
    """Re-apply recorded edits (from a model file) to a freshly built base model, in place (no copies).
    Files written before the general edit record "compress" and "drop" operations; they replay the same way."""
    model.dcvit_edits = list(getattr(model, "dcvit_edits", []))
    for edit in edits:
        op, block = edit.get("op"), edit.get("block")
        if op == "edit":
            change = (edit["attention"], edit["kept_units"], edit.get("kept_heads"))
        elif op == "compress":
            change = (not edit["remove_attention"], edit["kept_units"])
        elif op == "drop":
            change = (False, [])
        else:
            raise ValueError(f"unknown edit {op!r} in model file; accepted: edit, compress, drop")
        _edit_in_place(model, {block: change})
    return model


@torch.no_grad()
def activation_units(model: nn.Module, block: int, images: torch.Tensor, keep: int) -> list[int]:
    """Ablation (paper Tab. 6): keep the MLP units with the largest mean |activation| on the few-shot images,
    read where the hidden units enter fc2 (GELU(fc1 x), or a gated MLP's act(gate) * value)."""
    adapter = get_adapter(model)
    _, fc2 = adapter.mlp_linears(adapter.blocks(model)[block])
    totals = []
    handle = fc2.register_forward_pre_hook(lambda m, args: totals.append(args[0].abs().flatten(0, -2).mean(0)))
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
