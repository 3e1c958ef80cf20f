"""MACs counting (one multiply-add = 1, fvcore's convention; docs/method.md §10).

Built on fvcore's jit-trace counter, with handlers for what it skips: fused attention
(`scaled_dot_product_attention`, which timm uses for q·kᵀ and attn·v) and PyTorch's native
multi-head-attention kernel. Per-block attention (with norm1) and MLP (without norm2) MACs feed Eq. 1-2.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore scripts a helper at import, which recent torch flags as deprecated
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from .arch import UnsupportedModelError, get_adapter, runnable
from .rebuild import restored_modes
from .surgery import block_heads


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # q: (..., Nq, d), k: (..., Nk, d), v: (..., Nk, dv): q·kᵀ costs prod(q)·Nk, attn·v costs prod(..., Nq, Nk)·dv.
    q, k, v = (get_shape(t) for t in inputs[:3])
    return prod(q) * k[-2] + prod(q[:-1]) * k[-2] * v[-1]


def _native_mha_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # torch._native_multi_head_attention(q, k, v, embed_dim, heads, qkv_w, qkv_b, proj_w, proj_b, ...)
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch, nq, dim = q
    nk = k[-2]
    return batch * (nq * dim * dim + 2 * nk * dim * dim + 2 * nq * nk * dim + nq * dim * dim)


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_macs,
    "aten::_native_multi_head_attention": _native_mha_macs,
}


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W): from the model's structure when an adapter can read it, else its timm data config."""
    try:
        size = get_adapter(model).input_size(model)
    except UnsupportedModelError:
        size = None
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = size or cfg.get("input_size")
    if not size:
        raise ValueError(f"cannot tell the input size of {type(model).__name__}; pass input_size=(C, H, W)")
    return tuple(size)


def _analysis(model: nn.Module, input_size: Sequence[int] | None) -> FlopCountAnalysis:
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    if len(size) != 3:
        raise ValueError(f"input_size must be (C, H, W); got {size}")
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "meta":  # tracing it fails deep inside fvcore
        raise ValueError(
            f"{type(model).__name__} has its parameters on the meta device (no data); "
            "materialise it first, e.g. model.to_empty(device='cpu')"
        )
    x = torch.zeros(1, *size, device=param.device if param is not None else "cpu")
    analysis = FlopCountAnalysis(model.eval(), x).set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def _runnable(model: nn.Module) -> nn.Module:
    """The model as dcvit runs it (an HF model's logits), or as it is where no adapter knows it (a CNN)."""
    try:
        return runnable(model)
    except UnsupportedModelError:
        return model


def _by_module(model: nn.Module, input_size) -> dict[str, int]:
    model = _runnable(model)
    with warnings.catch_warnings(), torch.no_grad(), restored_modes(model):
        warnings.simplefilter("ignore")
        try:
            return dict(_analysis(model, input_size).by_module())
        except (RuntimeError, AssertionError) as err:  # the forward pass refused the input (timm asserts sizes)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            size = tuple(input_size) if input_size is not None else default_input_size(model)
            raise ValueError(f"{type(model).__name__} does not run on input size {size}: {first}") from None


def count_macs(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """MACs of one forward pass of one image."""
    return int(_by_module(model, input_size)[""])


@dataclass(frozen=True)
class MacsProfile:
    """Total MACs and, per block, the attention side (norm1 + attention) and the MLP (without norm2)."""

    total: int
    attn: tuple[int, ...]
    mlp: tuple[int, ...]
    blocks: tuple[int, ...]  # whole-block MACs (attention + MLP + norm2)
    mlp_hidden: tuple[int, ...]  # hidden units of each block's MLP (0 for a dropped block)
    input_size: tuple[int, int, int]
    head_macs: tuple[float, ...]  # MACs of one attention head of each block (0: heads not prunable)

    def head(self, block: int) -> float:
        """MACs of one attention head of a block (its share of qkv, the attention products and proj)."""
        return self.head_macs[block]

    def mlp_unit(self, block: int) -> float:
        """MACs of one hidden unit of a block's MLP."""
        return self.mlp[block] / self.mlp_hidden[block] if self.mlp_hidden[block] else 0.0


def macs_profile(model: nn.Module, input_size: Sequence[int] | None = None) -> MacsProfile:
    model = _runnable(model)  # block paths must name modules of the model that is traced
    adapter = get_adapter(model)
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    counts = _by_module(model, size)
    attn, mlp, whole, hidden, heads = [], [], [], [], []
    for path, block in zip(adapter.block_paths(model), adapter.blocks(model)):
        attn.append(sum(counts.get(f"{path}.{name}", 0) for name in adapter.attention_names))
        mlp.append(counts.get(f"{path}.{adapter.mlp_name}", 0))
        whole.append(counts.get(path, 0))
        hidden.append(_hidden_or_zero(adapter, block))
        count = block_heads(adapter, block)
        heads.append(counts.get(f"{path}.{adapter.attention_names[-1]}", 0) / count if count else 0.0)
    return MacsProfile(int(counts[""]), tuple(attn), tuple(mlp), tuple(whole), tuple(hidden), size, tuple(heads))


def _hidden_or_zero(adapter, block: nn.Module) -> int:
    try:
        return adapter.mlp_hidden(block)
    except (AttributeError, ValueError):
        return 0  # a dropped block (Identity) has no MLP
