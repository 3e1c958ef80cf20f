"""The MLP layouts whose hidden units dcvit can keep a subset of (docs/method.md §3), beyond fc1 -> act -> fc2.

timm's transformers use three: `Mlp` (fc1 -> act -> norm -> fc2), `GluMlp` / `SwiGLUPacked` (fc1 gives the value
and the gate halves of the hidden layer, chunked), and `SwiGLU` (fc1_x value, fc1_g gate). Hidden unit j is
column j of fc2 and, before it, row j of each branch (rows j and H + j of a packed fc1) and entry j of the norm
over the hidden units (EVA-02's and NormFormer's `scale_mlp`), so keeping units keeps those, in every branch.
A norm over fewer units normalises over the kept ones: the edit is well defined, not an exact sub-computation.
transformers' gated MLPs (DINOv2's SwiGLU FFN) name their layers gate_proj, up_proj and down_proj and compute
down_proj(act(gate_proj(x)) * up_proj(x)): unit j is row j of gate_proj and up_proj and column j of down_proj.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import GluMlp, Mlp, RmsNorm, RmsNormFp32, SimpleNorm, SimpleNormFp32, SwiGLU
from torch import nn

from .blocks import ZeroMlp

LAYOUTS = (Mlp, GluMlp, SwiGLU)
SUPPORTED = "Mlp, GluMlp / SwiGLUPacked, SwiGLU (Linear layers; a LayerNorm/RmsNorm over the hidden units or none)"
HIDDEN_NORMS = (nn.LayerNorm, RmsNorm, RmsNormFp32, SimpleNorm, SimpleNormFp32)
GATED_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # transformers' gated MLP, in this order


def _branches(mlp: nn.Module) -> tuple[nn.Module, ...]:
    """The layers that write the hidden units (before the activation / gating)."""
    return (mlp.fc1_g, mlp.fc1_x) if isinstance(mlp, SwiGLU) else (mlp.fc1,)


def problem(mlp: nn.Module) -> str | None:
    """Why dcvit cannot narrow `mlp` (one line), or None when it can (an MLP removed already counts as fine)."""
    if isinstance(mlp, ZeroMlp):
        return None
    if not isinstance(mlp, LAYOUTS):
        return f"its MLP is a {type(mlp).__name__}; supported MLPs: {SUPPORTED}"
    linears = (*_branches(mlp), mlp.fc2)
    if not all(type(m) is nn.Linear for m in linears):
        return f"its {type(mlp).__name__} uses {type(linears[0]).__name__} layers; supported MLPs: {SUPPORTED}"
    norm = mlp.norm
    if not isinstance(norm, nn.Identity) and not (
        isinstance(norm, HIDDEN_NORMS) and tuple(norm.normalized_shape) == (hidden_width(mlp),)
    ):
        return f"its MLP's hidden norm is a {type(norm).__name__}; supported MLPs: {SUPPORTED}"
    return None


def hidden_width(mlp: nn.Module) -> int:
    """Hidden units of an MLP: the inputs of its last Linear (half of a packed gated fc1's outputs)."""
    return mlp.fc2.in_features


def narrow(mlp: nn.Module, units: Sequence[int]) -> bool:
    """Keep hidden `units` of a timm MLP or a transformers gated MLP in place, in every branch and the hidden
    norm; False (nothing done) for any other MLP, which the caller narrows as a plain fc1/fc2 pair."""
    if all(type(getattr(mlp, name, None)) is nn.Linear for name in GATED_PROJECTIONS):
        idx = torch.as_tensor(list(units), dtype=torch.long, device=mlp.down_proj.weight.device)
        mlp.gate_proj, mlp.up_proj = keep_rows(mlp.gate_proj, idx), keep_rows(mlp.up_proj, idx)
        mlp.down_proj = keep_columns(mlp.down_proj, idx)
        return True
    if not isinstance(mlp, LAYOUTS):
        return False
    idx = torch.as_tensor(list(units), dtype=torch.long, device=mlp.fc2.weight.device)
    if isinstance(mlp, SwiGLU):
        mlp.fc1_g, mlp.fc1_x = keep_rows(mlp.fc1_g, idx), keep_rows(mlp.fc1_x, idx)
    elif isinstance(mlp, GluMlp):  # fc1 = [first half; second half], chunked after it: keep j and H + j
        mlp.fc1 = keep_rows(mlp.fc1, torch.cat([idx, idx + hidden_width(mlp)]))
    else:
        mlp.fc1 = keep_rows(mlp.fc1, idx)
    mlp.norm = _narrow_norm(mlp.norm, idx)
    mlp.fc2 = keep_columns(mlp.fc2, idx)
    return True


@torch.no_grad()
def keep_rows(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    """A new Linear with the output rows `idx` of `linear` (weight and bias)."""
    new = nn.Linear(linear.in_features, len(idx), bias=linear.bias is not None).to(linear.weight)
    new.weight.copy_(linear.weight[idx])
    if linear.bias is not None:
        new.bias.copy_(linear.bias[idx])
    return new


@torch.no_grad()
def keep_columns(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    """A new Linear with the input columns `idx` of `linear` (its bias whole)."""
    new = nn.Linear(len(idx), linear.out_features, bias=linear.bias is not None).to(linear.weight)
    new.weight.copy_(linear.weight[:, idx])
    if linear.bias is not None:
        new.bias.copy_(linear.bias)
    return new


@torch.no_grad()
def _narrow_norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    """The norm over the hidden units, in place (its block is a copy already), over the kept units only."""
    if isinstance(norm, nn.Identity):
        return norm
    norm.normalized_shape = (len(idx),)
    for name, param in list(norm.named_parameters(recurse=False)):
        setattr(norm, name, nn.Parameter(param[idx].clone(), requires_grad=param.requires_grad))
    return norm
