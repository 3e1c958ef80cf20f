"""The structure registry: what a compressed block may lose, by name (CompressConfig.structure, --structure).

A structure is a class (see `Structure`) registered under its name, as architecture adapters are in
dcvit.arch: CompressConfig checks its `structure` against the registry, `plan_for` and `compress` ask the
registered class to plan and to run, and the CLI offers every registered name. A new structure is one
module that subclasses `Structure` and decorates it with `register_structure`: a module in this package is
found and imported on the first lookup (`_load_builtins`), one elsewhere when it is imported (a plug-in).
The built-in structures live in the dcvit.structures package; this module sits beside it, not in it.

The arrows point one way: the generic code (config, planning, engine, driver, the CLI) imports this module
only, which imports nothing of dcvit, and finds the structures through it; the structure modules import the
generic code they build on (planning, driver, search, surgery) and are imported by nothing but the lookup.
Outside the package, the registry is a room of its own below the generic code: inside it, every importer of
the registry would import the structures' room too, which sits above them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover  (no dcvit module: config, planning, engine and driver import this one)
    from torch import nn

DEFAULT_STRUCTURE = "auto"  # CompressConfig's and the CLI's default
BASELINE_STRUCTURE = "drop"  # `dcvit compress --baseline`, and config.BLOCK_DROP
PAPER_STRUCTURE = "dcvit"  # what dcvit.plan (Eq. 1-2) plans, so a Plan made without a name is the paper's

_STRUCTURES: dict[str, type[Structure]] = {}
_loaded = False


class Structure:
    """One way of compressing: how it plans for a target, how a run applies the plan, how a plan reads.

    Subclasses set `name` (and `summary`, the CLI's help) and implement `plan`, `run` and `describe`; a
    structure that uses the block-wise trial and progressive pruning of Algorithm 1
    (dcvit.structures.dcvit.progressive_run) also implements `build`, the surgery of one step.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one phrase for --structure's help
    units_by: ClassVar[str] = "activation"  # which MLP units stay when CompressConfig.unit_choice is None
    config_changes: ClassVar[dict[str, Any]] = {}  # settings CompressConfig.for_structure adds (drop: its baseline's)

    def plan(
        self,
        model: nn.Module,
        target_macs: float,
        *,
        input_size: Sequence[int] | None = None,
        candidate_blocks: Sequence[int] | None = None,
        blocks: int | None = None,
        steps: int | None = None,
    ):
        """The plan for `target_macs` (a fraction in (0, 1) or absolute MACs): a frozen dataclass with
        `structure` (this name), `macs_original`, `macs_target`, `candidate_blocks` and `input_size`.
        `blocks` forces a compressed-block count and `steps` a step count, for structures that take them.
        Raises ValueError for unreachable targets."""
        raise NotImplementedError

    def plan_for(self, model: nn.Module, target_macs: float, config):
        """The plan a compression run with `config` (a CompressConfig) makes."""
        return self.plan(model, target_macs, candidate_blocks=config.candidate_blocks)

    def run(self, engine, plan):
        """Compress engine.teacher as `plan` says: a dcvit.result.CompressionResult (dcvit.result.make_result
        builds one). `engine` is the run's dcvit.engine.Engine; every process of an Accelerate run calls this."""
        raise NotImplementedError

    def planned_epochs(self, plan, config) -> int | None:
        """Fine-tuning epochs a run of `plan` with `config` (its metric decided) takes on one process, for the
        whole-run estimate in the log (dcvit.progress.RunClock); None (the default): unknown, no estimate."""
        return None

    def build(self, engine, base: nn.Module, plan, blocks: Sequence[int]) -> nn.Module:
        """The surgery of one trial or progressive step: a copy of `base` with `blocks` edited."""
        raise NotImplementedError(f"structure '{self.name}' has no per-block surgery")

    def describe(self, plan) -> str:
        """The plan in one line."""
        raise NotImplementedError


def register_structure(cls: type[Structure]) -> type[Structure]:
    """Register a structure class under its name (usable as a decorator); a later class replaces an earlier one."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name to be registered as a structure")
    _STRUCTURES[cls.name] = cls
    return cls


def _load_builtins() -> None:
    """Import every module of dcvit.structures once, registering the built-in structures. Called by the lookups,
    never while a module loads (the structure modules import config, planning and driver, which import
    this one). A class registered earlier (a plug-in imported first) keeps its name."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    earlier = dict(_STRUCTURES)
    for module in pkgutil.iter_modules([str(Path(__file__).parent / "structures")]):
        importlib.import_module(f"{__package__}.structures.{module.name}")
    _STRUCTURES.update(earlier)


def structure_names() -> tuple[str, ...]:
    """The registered names, sorted: CompressConfig's and the CLI's choices."""
    _load_builtins()
    return tuple(sorted(_STRUCTURES))


def get_structure(name: str) -> Structure:
    """The registered structure `name`; ValueError naming the registered ones otherwise."""
    _load_builtins()
    if name not in _STRUCTURES:
        raise ValueError(f"structure must be one of {structure_names()}; got {name!r}")
    return _STRUCTURES[name]()
