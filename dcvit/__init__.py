"""dcvit: few-shot compression of vision transformers (DC-ViT) with cascade integration.

The public API (docs/method.md gives the equations, README.md the walk-through):

    count_macs, macs_profile, MacsProfile     MACs (§10)
    plan, Plan                                structure from a target MACs (§2, Eq. 1-2)
    plan_for, SearchPlan                      the plan of CompressConfig.structure (a search plan for auto, mlp)
    Structure, register_structure,            what a block may lose, by name (dcvit.structures)
      Metric, register_metric                 and how a candidate is scored (dcvit.metrics)
    apply_plan, drop_blocks                   block surgery (§3) and the block-dropping baseline
    compress, compress_family,                the progressive driver (§1, Algorithm 1) and dense families
      CompressConfig, CompressionResult
    refine, unlabeled_subset                  a compressed model refined as a cascade saver on more images (§9)
    few_shot_subset, load_dataset, ...        data: unlabeled shots, the calibration split, transforms
    evaluate, evaluate_cascade, loader_for    top-1 / top-5 on a dataset (a cascade: exits and MACs per image)
    save, load, create_model, resolve_model   pickle-free model files and models by name
    save_cascade, load_cascade                cascade folders of model files (cascade.json, one folder per member)
    export                                    a model or cascade folder as pt2 / TorchScript / ONNX programs
    Adapter, register_adapter, get_adapter    support for another architecture
    log_to_stderr                             progress and status lines on stderr (the CLI's `dcvit: ...`)
    dcvit.scripts                             building blocks for compression scripts (the recipes use them)

Names are imported on first use, so `import dcvit` stays light and no module imports the package face.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import models  # noqa: F401  registers the shipped models in timm

# public name -> the module (under dcvit) that defines it
_EXPORTS = {
    "Adapter": "arch",
    "MlpParts": "arch",
    "UnsupportedModelError": "arch",
    "get_adapter": "arch",
    "register_adapter": "arch",
    "MacsProfile": "macs",
    "count_macs": "macs",
    "macs_profile": "macs",
    "Plan": "planning",
    "plan": "planning",
    "plan_block_drop": "planning",
    "SearchPlan": "planning",
    "Structure": "structures",
    "register_structure": "structures",
    "Metric": "metrics",
    "register_metric": "metrics",
    "MlpOnlyBlock": "surgery",
    "apply_plan": "surgery",
    "drop_blocks": "surgery",
    "CompressConfig": "config",
    "ABLATIONS": "config",
    "BLOCK_DROP": "config",
    "CompressionResult": "driver",
    "compress": "driver",
    "compress_family": "driver",
    "plan_for": "driver",
    "few_shot_subset": "data",
    "unlabeled_subset": "data",
    "refine": "mimic",
    "load_dataset": "data",
    "calibration_indices": "data",
    "eval_transform": "data",
    "CALIBRATION_SIZE": "data",
    "evaluate": "evaluation",
    "evaluate_cascade": "evaluation",
    "loader_for": "evaluation",
    "load_cascade": "cascade_files",
    "save_cascade": "cascade_files",
    "export": "exporting",
    "save": "files",
    "load": "files",
    "create_model": "factory",
    "log_to_stderr": "progress",
    "resolve_model": "factory",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the same names, imported for type checkers only (make lint runs mypy on this face)
    from .arch import Adapter, MlpParts, UnsupportedModelError, get_adapter, register_adapter
    from .cascade_files import load_cascade, save_cascade
    from .config import ABLATIONS, BLOCK_DROP, CompressConfig
    from .data import (
        CALIBRATION_SIZE,
        calibration_indices,
        eval_transform,
        few_shot_subset,
        load_dataset,
        unlabeled_subset,
    )
    from .driver import CompressionResult, compress, compress_family, plan_for
    from .evaluation import evaluate, evaluate_cascade, loader_for
    from .exporting import export
    from .factory import create_model, resolve_model
    from .files import load, save
    from .macs import MacsProfile, count_macs, macs_profile
    from .metrics import Metric, register_metric
    from .mimic import refine
    from .planning import Plan, SearchPlan, plan, plan_block_drop
    from .progress import log_to_stderr
    from .structures import Structure, register_structure
    from .surgery import MlpOnlyBlock, apply_plan, drop_blocks

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dcvit' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
