"""dcvit: few-shot compression of vision transformers (DC-ViT) with cascade integration.

Public API (see README.md and ../shared/METHOD.md for the equations):
    count_macs, macs_profile        MACs (§10)
    plan, Plan                      structure from a target MACs (§2, Eq. 1-2)
    apply_plan, drop_blocks         block surgery (§3) and the block-dropping baseline
    save, load, create_model        pickle-free model files
"""
from . import models  # noqa: F401  registers the shipped models in timm
from .arch import Adapter, MlpParts, UnsupportedModelError, get_adapter, register_adapter
from .io import create_model, load, resolve_model, save
from .macs import MacsProfile, count_macs, macs_profile
from .plan import Plan, plan
from .surgery import MlpOnlyBlock, apply_plan, drop_blocks

__all__ = [
    "Adapter", "MlpParts", "UnsupportedModelError", "get_adapter", "register_adapter",
    "create_model", "load", "resolve_model", "save",
    "MacsProfile", "count_macs", "macs_profile", "Plan", "plan",
    "MlpOnlyBlock", "apply_plan", "drop_blocks",
]
__version__ = "0.1.0"
