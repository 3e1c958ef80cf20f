"""The adapter protocol: the few structural facts about a ViT family that the algorithm needs.

An adapter knows how to list a model's blocks, which sub-modules of a block are its attention (with
norm1) and its MLP (without norm2), how to swap or drop a block, how to reach the output tokens
before pooling and head, and how to describe the base model so it can be rebuilt with no network.
Everything else (planning, surgery, mimicking, selection) is written once against this protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class MlpParts:
    """What a compressed block keeps from an original block: norm2, the MLP, LayerScale and drop-path."""

    norm: nn.Module
    mlp: nn.Module
    scale: nn.Module
    drop_path: nn.Module
    post_norm: bool = False  # norm applied to the MLP's output (Swin V2: x + drop_path(norm(mlp(x)))), not its input


class Adapter:
    """Base class; subclasses fill in the structure of one model family and register themselves."""

    name: ClassVar[str] = "base"
    # The model family in words, for messages (e.g. "timm Swin"); the name above is the id model files record.
    family: ClassVar[str] = ""
    # Attribute names inside a block: the attention side (norm1 + attention) and the MLP (no norm2).
    attention_names: ClassVar[tuple[str, ...]] = ("norm1", "attn")
    mlp_name: ClassVar[str] = "mlp"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    @classmethod
    def refusal(cls, model: nn.Module) -> str | None:
        """Why no adapter takes `model`, in one line, where this adapter can tell (a class of its library that
        no adapter supports, say); None otherwise. get_adapter says it instead of its general message."""
        return None

    # --- blocks -----------------------------------------------------------------------------
    def block_containers(self, model: nn.Module) -> list[tuple[nn.Module, int]]:
        """(parent container, index in it) for every transformer block, in forward order."""
        raise NotImplementedError

    def block_paths(self, model: nn.Module) -> list[str]:
        """Qualified module names of the blocks (as named_modules() spells them), in forward order."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [parent[i] for parent, i in self.block_containers(model)]

    def set_block(self, model: nn.Module, index: int, block: nn.Module) -> None:
        parent, i = self.block_containers(model)[index]
        parent[i] = block

    def mlp_parts(self, block: nn.Module) -> MlpParts:
        raise NotImplementedError

    def mlp_hidden(self, block: nn.Module) -> int:
        return self.mlp_linears(block)[0].out_features

    def mlp_linears(self, block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
        """fc1 and fc2 of a block's MLP: its first and last Linear (true for timm and torchvision MLPs)."""
        mlp = getattr(block, self.mlp_name)
        linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
        if len(linears) < 2:
            raise ValueError(
                f"{self.name}: the MLP of a block has {len(linears)} Linear layer(s); expected fc1 and fc2"
            )
        return linears[0], linears[-1]

    # --- attention heads (optional) -------------------------------------------------------------
    def attention_heads(self, block: nn.Module) -> int:
        """Heads of a block's attention that can be pruned exactly; 0 (the default) offers no head edits."""
        return 0

    def keep_heads(self, block: nn.Module, heads: list[int]) -> None:
        """Keep `heads` of a block's attention, in place (only where attention_heads() > 0)."""
        raise NotImplementedError(f"{self.name}: this adapter does not prune attention heads")

    def head_projection(self, block: nn.Module) -> nn.Linear:
        """The Linear the heads' concatenated outputs enter (head importance is read from its input)."""
        raise NotImplementedError(f"{self.name}: this adapter does not prune attention heads")

    # --- forward pieces ---------------------------------------------------------------------
    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """All output tokens after the final norm, before pooling and head (what Eq. 3 mimics)."""
        return model.forward_features(x)

    def tail_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules after the last block (final norm, pooling, head): always frozen in mimicking."""
        raise NotImplementedError

    def class_token_index(self, model: nn.Module) -> int | None:
        """Index of the class token in features() output (for CLS-only mimicking), None without one."""
        return None

    def input_size(self, model: nn.Module) -> tuple[int, int, int] | None:
        """(C, H, W) the model was built for, read from its structure; None if it cannot tell."""
        return None

    def runnable(self, model: nn.Module) -> nn.Module:
        """`model` as dcvit runs it: forward(images) gives the logits tensor. The model itself by default; an
        adapter whose models return richer outputs (transformers' ModelOutput) wraps them, sharing parameters."""
        return model

    # --- description for save/load ----------------------------------------------------------
    def base_spec(self, model: nn.Module) -> dict[str, Any]:
        """JSON-able description from which build() makes an identically shaped model, offline."""
        raise NotImplementedError

    @staticmethod
    def build(spec: dict[str, Any]) -> nn.Module:
        """The base model `spec` describes. Specs come from files, so check them (see check_kwargs): a
        build must never load files or go online, and `dcvit.load` runs it on the meta device first."""
        raise NotImplementedError


# --- checking the settings a model file may pass to a constructor (spec.json is untrusted) ------
@dataclass(frozen=True)
class Setting:
    """One constructor argument a model file may set: what it must be (for messages) and the test."""

    what: str
    test: Callable[[Any], bool]


def integer(lo: int = 0, hi: int = 1 << 20) -> Setting:
    return Setting(f"an integer in [{lo}, {hi}]", lambda v: type(v) is int and lo <= v <= hi)  # not bool


def number(lo: float = 0.0, hi: float = 1e6) -> Setting:
    # json reads NaN and Infinity; neither is a sane architecture setting
    return Setting(
        f"a number in [{lo}, {hi}]", lambda v: type(v) in (int, float) and math.isfinite(v) and lo <= v <= hi
    )


def choice(*options: Any) -> Setting:
    return Setting(f"one of {', '.join(map(repr, options))}", lambda v: type(v) in (str, type(None)) and v in options)


def listed(item: Setting, max_len: int = 8) -> Setting:
    return Setting(
        f"a list of up to {max_len} of: {item.what}",
        lambda v: isinstance(v, (list, tuple)) and 0 < len(v) <= max_len and all(item.test(x) for x in v),
    )


def either(*settings: Setting) -> Setting:
    return Setting(" or ".join(s.what for s in settings), lambda v: any(s.test(v) for s in settings))


FLAG = Setting("true or false", lambda v: type(v) is bool)
NOTHING = Setting("null", lambda v: v is None)


def check_kwargs(family: str, kwargs: Any, accepted: Mapping[str, Setting]) -> dict[str, Any]:
    """`kwargs` if every key is an accepted architecture setting of the right type, else a one-line
    ValueError: anything else could load a checkpoint, go online, or allocate without bound."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"{family} kwargs must be a JSON object, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if key not in accepted:
            raise ValueError(
                f"{family} setting {key!r} is not accepted in a model file (only architecture "
                f"settings are; accepted: {', '.join(sorted(accepted))})"
            )
        if not accepted[key].test(value):
            raise ValueError(f"{family} setting {key}={short(value)} must be {accepted[key].what}")
    return kwargs


def check_keys(what: str, spec: Any, allowed: tuple[str, ...]) -> None:
    """`spec` is a JSON object whose keys are among `allowed`."""
    if not isinstance(spec, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(spec).__name__}")
    extra = sorted(set(spec) - set(allowed))
    if extra:
        raise ValueError(f"{what} has unknown field(s) {', '.join(map(repr, extra))} (accepted: {', '.join(allowed)})")


def short(value: Any) -> str:
    """repr(value), cut to fit in a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def mlp_ratio(hidden: int, dim: int) -> float:
    """A ratio from which the builders' int(dim * ratio) gives back `hidden` (hidden / dim may round below it)."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio
