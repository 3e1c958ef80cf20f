"""A model or a cascade folder as programs that torch alone serves (`dcvit export`; cascade.serve reads them back).

    dcvit.export.export("runs/demo/cascade", "runs/served", "pt2")   # cascade.json + one program per member
    served = cascade.load_exported("runs/served")                     # torch only: B x K logits for a batch

Each program is checked against the model it came from on a fixed random batch (cascade.programs) before the
folder is written; nothing is written when one does not answer as its model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import cascade

from .cascade_files import load_cascade, preprocessing
from .factory import resolve_model

FORMATS = cascade.programs.FORMATS


def export(model: str | os.PathLike, out: str | os.PathLike, format: str = "pt2") -> Path:
    """Write `model` (a timm name, tv:NAME, a model folder, or a cascade folder) to the new folder `out` as
    `format` programs (pt2, torchscript or onnx): an exported cascade folder (cascade.json and one program per
    member, the routing file unchanged) or an exported model (its program and export.json)."""
    cascade.programs.check_format(format)  # before loading anything: onnx needs packages that may be missing
    if cascade.is_cascade_dir(model):
        return _export_cascade(Path(model), Path(out), format)
    module = resolve_model(str(model), weights="pretrained", require_adapter=False).eval()
    pre = preprocessing(module)
    example = example_batch(pre["input_size"], _dtype(module))
    info = {"exported_from": str(model), "program_format": format}
    return cascade.save_exported_model(out, module, format, example, preprocessing=pre, info=info)


def _export_cascade(path: Path, out: Path, format: str) -> Path:
    model = load_cascade(path)  # members checked against cascade.json (input, MACs) on the way in
    spec = model.spec
    return cascade.save_exported(
        out,
        model,
        format,
        example_batch(spec.preprocessing["input_size"]),
        preprocessing=spec.preprocessing,
        names=[m.name for m in spec.members],
        kinds=[m.kind for m in spec.members],
        info={**spec.info, "exported_from": str(path), "program_format": format},
        exit_fractions=spec.exit_fractions,
    )


def example_batch(input_size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The batch programs are traced and checked on: 2 fixed random inputs (a batch of 1 would be fixed as 1)."""
    return torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(dtype)


def _dtype(module: nn.Module) -> torch.dtype:
    floating = [p.dtype for p in module.parameters() if p.is_floating_point()]
    return floating[0] if floating else torch.float32
