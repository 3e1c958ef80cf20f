"""What a plan records of the model it was made for (Plan.fingerprint), and the checks that refuse a plan
for another model: `apply_plan` (cheap: architecture, depth, input size, the widths of unedited blocks) and
`compress` (everything, MACs included, before any work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelFingerprint:
    architecture: str  # the timm/HF architecture name where the model records one, else its class name
    depth: int  # blocks
    mlp_widths: tuple[int, ...]  # hidden MLP units per block (0: a dropped block)
    input_size: tuple[int, int, int]
    macs: int

    def describe(self) -> str:
        widths = sorted(set(self.mlp_widths))
        shown = widths[0] if len(widths) == 1 else "/".join(map(str, widths))
        size = "x".join(map(str, self.input_size))
        return f"{self.architecture}, {self.depth} blocks, MLP {shown} units, input {size}, {self.macs / 1e6:.3f}M MACs"

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def architecture(model: nn.Module) -> str:
    """The model's architecture name, read where dcvit runs it (a transformers model inside its wrapper)."""
    from .arch import UnsupportedModelError, runnable

    try:
        model = runnable(model)
    except UnsupportedModelError:
        pass
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return str(name or type(model).__name__)


def fingerprint(model: nn.Module, profile) -> ModelFingerprint:
    """`model`'s fingerprint from its MacsProfile (dcvit.macs_profile)."""
    return ModelFingerprint(
        architecture(model),
        len(profile.attn),
        tuple(profile.mlp_hidden),
        tuple(profile.input_size),
        int(profile.total),
    )


def _mismatch(plan_fp: ModelFingerprint, model_fp: ModelFingerprint | str) -> ValueError:
    mine = model_fp.describe() if isinstance(model_fp, ModelFingerprint) else model_fp
    return ValueError(
        f"this plan was made for another model ({plan_fp.describe()}), not this one ({mine}); "
        "make the plan on this model (dcvit.plan / plan_for)"
    )


def check_plan_fits(plan, model: nn.Module, blocks: Sequence[nn.Module], adapter) -> None:
    """The cheap check of apply_plan: a plan's fingerprint against a model that may already have some blocks
    edited (a progressive step): architecture, depth and the MLP widths of blocks never edited."""
    fp = getattr(plan, "fingerprint", None)
    if fp is None:  # a plan built by hand records no model
        return
    arch = architecture(model)
    edited = {e.get("block") for e in getattr(model, "dcvit_edits", [])}
    widths = tuple(fp.mlp_widths[b] if b in edited else _width(adapter, block) for b, block in enumerate(blocks))
    if (arch, len(blocks)) != (fp.architecture, fp.depth) or widths != fp.mlp_widths:
        shown = "/".join(map(str, sorted(set(widths))))
        raise _mismatch(fp, f"{arch}, {len(blocks)} blocks, MLP {shown} units")


def _width(adapter, block: nn.Module) -> int:
    try:
        return adapter.mlp_hidden(block)
    except (AttributeError, ValueError):
        return 0  # a dropped block


def check_plan_for(plan, model: nn.Module, structure: str, macs_profile) -> None:
    """compress's check, before any work: the plan's structure is the run's and its model is `model`
    (fingerprint, MACs included; a plan built by hand: its original MACs). macs_profile is dcvit.macs_profile,
    passed in: importing it here would close the circle macs -> rebuild -> surgery -> fingerprint -> macs."""
    if plan.structure != structure:
        raise ValueError(
            f"the plan is for structure '{plan.structure}' but CompressConfig.structure is '{structure}'; "
            f"make the plan with plan_for(model, target, config) or set structure='{plan.structure}'"
        )
    profile = macs_profile(model, plan.input_size)
    mine = fingerprint(model, profile)
    fp = getattr(plan, "fingerprint", None)
    if fp is not None and fp != mine:
        raise _mismatch(fp, mine)
    if fp is None and plan.macs_original != profile.total:
        raise ValueError(
            f"this plan was made for a model of {plan.macs_original / 1e6:.3f}M MACs, not this one "
            f"({mine.describe()}); make the plan on this model (dcvit.plan / plan_for)"
        )
