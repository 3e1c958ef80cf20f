"""Compression's entry points: `compress` (one target), `compress_family` (a dense family) and `plan_for`.

Which plan is made and how it is run is the structure's (dcvit.structures, looked up by name): the paper's
structure and the block-dropping baseline run Algorithm 1 (docs/method.md §1: block-wise trial, then
progressive pruning; dcvit/structures/dcvit.py), the structure search its own (dcvit.search). Every finished
step is checkpointed, so `resume=True` continues a killed run and ends with exactly the model an
uninterrupted run makes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from .arch import runnable
from .config import CompressConfig
from .data import as_shots
from .engine import Engine
from .fingerprint import check_plan_for
from .macs import macs_profile
from .planning import BasePlan
from .progress import api_logging, duration, logger
from .recovery import averaged_epochs, final_epochs
from .result import CompressionResult, as_loaded, make_result
from .structure_registry import get_structure
from .workspace import Workspace

__all__ = ["CompressionResult", "compress", "compress_family", "make_result", "plan_for"]


def plan_for(model: nn.Module, target_macs: float, config: CompressConfig) -> BasePlan:
    """The plan `config.structure` makes for `target_macs` (see dcvit.structures)."""
    return get_structure(config.structure).plan_for(model, target_macs, config)


# --- the final recovery (docs/method.md §6, "Recovery levers") ---------------------------------------------
def planned_final_epochs(config: CompressConfig, plan: BasePlan) -> int:
    """The final recovery's epochs as planned, from the target MACs (the run corrects it for the MACs reached)."""
    return final_epochs(config, plan.macs_target, plan.macs_original)


def final_recovery(engine: Engine, result: CompressionResult) -> CompressionResult:
    """`result` with its model fine-tuned once more (blocks up to the one after the last edited block train);
    checkpointed like every step, so a resumed run repeats it exactly."""
    epochs = final_epochs(engine.config, result.macs, result.plan.macs_original)
    edited = [row["block"] for row in result.structure if row["edit"] != "kept"]
    epochs = epochs if edited else 0
    engine.clock.plan(epochs - planned_final_epochs(engine.config, result.plan))  # the plan had the target's
    if not epochs:
        return result
    key = Workspace.final_key(result.plan.structure, result.macs, epochs, result.plan.as_dict())
    seed_name = Workspace.final_seed(result.plan.structure, result.macs, epochs)
    workspace = engine.workspace

    def recover() -> nn.Module:
        if workspace.has(key):  # a resumed run, or another process after the main one: read back
            engine.skip(epochs)
            return workspace.load(key)
        start = time.perf_counter()
        model = result.model  # the run's own model object: fine-tuned in place, then saved
        select = engine.synthetic_kl if engine.config.final_select else None
        average = averaged_epochs(engine.config, epochs)
        config = engine.config.for_final_recovery()
        fit = engine.fine_tune(model, edited, epochs, seed_name, select=select, average=average, config=config)
        meta = {
            "final": True,
            "epochs": epochs,
            "train_loss": fit.final_loss,
            "selected_epoch": fit.selected_epoch,
            "averaged_epochs": average,
            "kl": engine.synthetic_kl(model) if engine.metric_set is not None else None,
            "seconds": time.perf_counter() - start,
            "images_per_second": fit.images_per_second,
        }
        workspace.save(key, model, meta)
        return model  # in memory: the checkpoint serves a resume (the save checked it reloads as this network)

    model = workspace.main_first(recover)
    meta = workspace.meta(key)
    seconds = {**result.seconds, "final": meta["seconds"]}
    return replace(result, model=as_loaded(model), history=(*result.history, meta), seconds=seconds)


def compress(
    model: nn.Module,
    target_macs: float | BasePlan,
    data: Dataset | torch.Tensor | Sequence,
    config: CompressConfig = CompressConfig(),
    *,
    workdir: str | Path | None = None,
    resume: bool = False,
    metric_set=None,
    metric_cache: str | Path | bool | None = None,
) -> CompressionResult:
    """Compress `model` to `target_macs` (fraction in (0, 1) or absolute MACs, or the Plan that
    plan_for(model, target, config) already returned) with the unlabeled few-shot `data`.

    `data` yields (image, label) pairs, or is an N x C x H x W tensor or a list of images; labels are ignored. PIL images get the model's transforms (and
    augmentation when `config.augment`); tensors are used as they are. `workdir` keeps checkpoints.
    `metric_set` (a synth.SyntheticSet) reuses a synthetic metric set instead of making one. `metric_cache`: the
    folder of the metric-set cache, False or "off" for none; None: $DCVIT_METRIC_CACHE, else
    $XDG_CACHE_HOME/dcvit/metric-sets (dcvit.metric_cache). Results are the same with or without it.
    """
    return compress_family(
        model, [target_macs], data, config, workdir=workdir, resume=resume, metric_set=metric_set,
        metric_cache=metric_cache,
    )[0]  # fmt: skip


def compress_family(
    model: nn.Module,
    targets: Sequence[float | BasePlan],
    data: Dataset | torch.Tensor | Sequence,
    config: CompressConfig = CompressConfig(),
    *,
    workdir: str | Path | None = None,
    resume: bool = False,
    metric_set=None,
    metric_cache: str | Path | bool | None = None,
) -> list[CompressionResult]:
    """A dense family: one result per target, sharing the synthetic set, teacher tokens and any trial
    whose plan (width, attention) matches. A target may be a Plan from plan_for with the same config, so a
    caller that showed the plans first does not compute them again."""
    if not targets:
        raise ValueError("give at least one target MACs")
    for t in targets:  # a plan for another model or structure: refused before any work
        if isinstance(t, BasePlan):
            check_plan_for(t, model, config.structure, macs_profile)
    model = runnable(model)  # the engine needs logits tensors (a transformers model returns a ModelOutput)
    data = as_shots(data)
    # Fail on bad targets before any work.
    plans = [t if isinstance(t, BasePlan) else plan_for(model, t, config) for t in targets]
    with api_logging(config.progress):  # a script calling this sees progress lines without configuring logging
        engine = Engine(model, data, config, Path(workdir) if workdir else None, resume, metric_set, metric_cache)
        try:
            structures = [get_structure(p.structure) for p in plans]
            planned = [s.planned_epochs(p, engine.config) for s, p in zip(structures, plans)]
            finals = sum(planned_final_epochs(engine.config, p) for p in plans)
            engine.clock.plan(None if None in planned else sum(planned) + finals)  # type: ignore[arg-type]
            results = [final_recovery(engine, s.run(engine, p)) for s, p in zip(structures, plans)]
        finally:
            engine.workspace.cleanup()
        results = [replace(r, fidelity=engine.fidelity(r.model)) for r in results]
        if engine.accelerator.is_main_process and config.progress:  # progress off (--quiet): results only
            logger.info(closing_line(engine.clock.elapsed(), results))
        return results


def closing_line(seconds: float, results: Sequence[CompressionResult]) -> str:
    """The run's last log line: its time, and how closely each result answers as the teacher on the shots."""
    fidelity = results[0].fidelity
    what = "top-1 agreement with the teacher" if "top1_agreement" in fidelity else "output MSE to the teacher"
    values = [
        f"{100 * r.fidelity['top1_agreement']:.1f}%"
        if "top1_agreement" in r.fidelity
        else f"{r.fidelity['output_mse']:.4g}"
        for r in results
    ]
    if len(results) > 1:  # a family: each value with its member's MACs
        values = [f"{v} ({100 * r.macs / r.plan.macs_original:.1f}% MACs)" for v, r in zip(values, results)]
    return f"done in {duration(seconds)}; {what} on the {fidelity['shots']} shots: {', '.join(values)}"
