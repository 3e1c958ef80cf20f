"""Exporting a cascade for serving: one torch.export program per member, routing in Python.

What torch.export supports. A whole Cascade does not export: which rows go on to the next member depends on
the data (the count of undecided samples is read with int(...), and an empty batch skips the later members),
and torch.export stops at that read with GuardOnDataDependentSymNode. Each member alone is a plain
classifier and exports with a dynamic batch size, so `export_stages` exports the members one by one and
keeps the routing outside the graphs: `ExportedCascade.module()` is a Cascade over the exported programs,
i.e. the same batched routing code (masks and index_select, one call per member on the rows still
undecided) as the eager cascade, with the same answers. Each program can be stored or compiled on its own
(torch.export.save, AOTInductor) and the thresholds shipped next to it (cascade.json, see cascade.files).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.export import Dim, ExportedProgram

from .routing import Cascade


@dataclass(frozen=True)
class ExportedCascade:
    """The members of a cascade as torch.export programs (cheapest first), with its thresholds, costs and
    committee flags (the committee's averaging is part of the routing, not of any member's graph)."""

    programs: tuple[ExportedProgram, ...]
    thresholds: tuple[float, ...]
    costs: tuple[float, ...] | None
    committee: tuple[bool, ...] | None = None  # the committee exit, applied by the routing in Python

    def module(self) -> Cascade:
        """A Cascade that routes in Python between the exported members (see the module docstring)."""
        return Cascade([p.module() for p in self.programs], self.thresholds, self.costs, self.committee)


def export_stages(model: Cascade, example: torch.Tensor, dynamic_batch: bool = True) -> ExportedCascade:
    """Export every member of `model` on `example` (a batch of inputs), each in eval mode.

    dynamic_batch: the programs take any batch size >= 1 (the rows reaching a later member vary from batch
    to batch); False fixes it to the example's. Members that torch.export cannot trace fail with its error.
    """
    if not isinstance(model, Cascade):
        raise ValueError(f"export_stages takes a cascade.Cascade, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.ndim < 1 or example.shape[0] < 1:
        raise ValueError("example must be a non-empty batch of inputs (a tensor with the batch first)")
    shapes = None
    if dynamic_batch:
        if example.shape[0] == 1:  # a batch of 1 would be specialised to the constant 1
            example = torch.cat([example, example])
        shapes = ({0: Dim("batch", min=1)},)
    programs = []
    for member in model.models:
        was_training = member.training
        member.eval()
        try:
            programs.append(torch.export.export(member, (example,), dynamic_shapes=shapes))
        finally:
            member.train(was_training)
    return ExportedCascade(tuple(programs), model.thresholds, model.costs, model.committee)
