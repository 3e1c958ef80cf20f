"""Save-time proof that a model file reloads as the same network.

`dcvit.save` writes a spec (adapter, base, edits) and the weights; `dcvit.load` rebuilds from the spec. A spec that
misses a setting (timm does not record its creation kwargs; modules may be swapped by hand) would reload as
another network, sometimes silently. So before anything is written, the model the spec describes is built, given
the weights, and run next to the original on an example input: the model's input size, batch 2, seeded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import adapter_for_spec
from .storage import one_line
from .surgery import replay_edits

# Largest output difference allowed, as a fraction of the output's largest magnitude (float32; 16 units in the
# last place for lower precisions). Not torch.equal: the same weights may meet other kernels in a fresh module
# (an attention's fused_attn flag set by hand; GPU algorithm choice), while another network is farther off
# (another activation or LayerNorm eps): how far each lands is measured in docs/engineering.md, "Save check cost".
TOLERANCE = 1e-5
HINT = (
    "it would load as a different network. Likely cause: the model was built or changed in a way its spec does "
    "not record (constructor settings dcvit cannot read back, modules replaced by hand). Fix: create it with "
    "dcvit.create_model(name, **kwargs), or give its adapter a base_spec that describes it"
)
# What constructors raise on bad settings (timm and torchvision assert on shapes; a custom adapter's build may
# miss a key); never caught around real work.
BUILD_ERRORS = (TypeError, ValueError, AssertionError, KeyError)


def shape_mismatch(found: dict[str, tuple], expected: dict[str, tuple]) -> str:
    """What differs between two name -> shape tables ('' when nothing): missing, unexpected, wrong shape."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = [
        f"{k} {found[k]} (spec: {expected[k]})"
        for k in sorted(expected.keys() & found.keys())
        if found[k] != expected[k]
    ]
    problems = [
        f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)})"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if names
    ]
    return "; ".join(problems)


@torch.no_grad()
def check_rebuilds(model: nn.Module, spec: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> None:
    """A one-line ValueError unless the model `spec` and `state` rebuild gives `model`'s outputs."""
    refuse = f"refusing to save to {path}: the model its spec rebuilds"
    adapter = adapter_for_spec(spec["adapter"])
    try:
        rebuilt = replay_edits(adapter.build(spec["base"]), spec["edits"])
    except BUILD_ERRORS as err:
        raise ValueError(f"{refuse} fails ({type(err).__name__}: {one_line(err, 300)}); {HINT}") from None
    shapes = shape_mismatch(shapes_of(state), shapes_of(rebuilt.state_dict()))
    if shapes:
        raise ValueError(f"{refuse} has other tensors ({shapes}); {HINT}")
    rebuilt.load_state_dict(state, strict=True, assign=True)  # shares the model's tensors: no copy
    _match_buffers(rebuilt, model)
    size = _input_size(adapter(), model)
    if size is None:  # e.g. a custom adapter without input_size: the tensors agreed, outputs cannot be tried
        return
    first = next((t for t in state.values() if t.is_floating_point()), torch.empty(0))
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0)).to(first.device, first.dtype)
    with restored_modes(model):  # saving changes nothing, train/eval flags included
        want = _tensors(model.eval()(x))
    difference = _difference(want, _tensors(rebuilt.eval()(x)))
    if difference > max(TOLERANCE, 16 * torch.finfo(first.dtype).eps):
        raise ValueError(
            f"{refuse} gives other outputs (largest difference {difference:.3g} of the output scale on a seeded "
            f"example input); {HINT}"
        )


def shapes_of(tensors: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _match_buffers(rebuilt: nn.Module, model: nn.Module) -> None:
    """Buffers outside the state dict (masks, position indices) go to the device and dtype the model's have."""
    theirs = dict(model.named_buffers())
    for name, buffer in list(rebuilt.named_buffers()):
        like = theirs.get(name)
        if like is not None and (buffer.device, buffer.dtype) != (like.device, like.dtype):
            owner, _, attr = name.rpartition(".")
            setattr(rebuilt.get_submodule(owner), attr, buffer.to(like.device, like.dtype))


def _input_size(adapter, model: nn.Module) -> tuple[int, ...] | None:
    size = adapter.input_size(model) or (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return tuple(size) if size else None


@contextmanager
def restored_modes(model: nn.Module) -> Iterator[None]:
    """Give `model` back with each module's own train/eval flag, whatever the block does to them."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for key in sorted(output, key=str) for t in _tensors(output[key])]
    return []


def _difference(want: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """Largest |want - got| relative to want's largest finite magnitude (equal infinities and NaNs agree)."""
    if [t.shape for t in want] != [t.shape for t in got]:
        return float("inf")
    worst = 0.0
    for a, b in zip(want, got, strict=True):
        if a.numel() == 0:
            continue
        a, b = a.detach().double(), b.detach().double()
        diff = (a - b).abs().masked_fill((a == b) | (a.isnan() & b.isnan()), 0.0)
        if not diff.isfinite().all():
            return float("inf")
        scale = a.masked_fill(~a.isfinite(), 0.0).abs().max().item()
        worst = max(worst, diff.max().item() / max(scale, 1e-12))
    return worst
