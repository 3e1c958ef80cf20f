"""Exported folders for serving with torch only (docs/method.md §9), and the helper that serves them.

An exported cascade is a cascade folder (cascade/files.py) whose members are program files (cascade.programs):

    OUT/
      cascade.json            thresholds, committee, members, preprocessing, info (as in the folder exported)
      stage0-fmnist_cnn/model.pt2
      stage1-fmnist_vit12/model.pt2

so `cascade.load(OUT)` reads it with its default member reader, and the routing is the Cascade's own (one
program call per member on the rows still undecided, the committee exit included). An exported single model is
a folder with its program and export.json (its preprocessing and where it came from):

    OUT/model.pt2  OUT/export.json

`load_exported(OUT)` serves either: a callable that answers a batch of preprocessed inputs with B x K logits,
each row from the member that answered it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import SAVE_SUFFIX, CascadeFileError, _jsonable, _short, is_cascade_dir, load, save
from .programs import PROGRAMS, check_format, load_program, save_program
from .routing import Cascade
from .scratch import NEW, install, remove_stale, scratch_folder
from .validate import preprocessing_problem

EXPORT_SPEC, EXPORT_FORMAT, EXPORT_VERSION = "export.json", "exported-model", 1


@dataclass(frozen=True)
class Served:
    """A loaded export: call it on a batch of preprocessed inputs (B x C x H x W, normalised as `preprocessing`
    says) for B x K logits; `predict` gives the classes. `module` is the Cascade over the programs (its
    last_stats say where the rows of the last batch left) or the single program."""

    module: nn.Module
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return self(batch).argmax(dim=-1)


def load_exported(path: str | os.PathLike) -> Served:
    """An exported cascade folder or exported model folder, ready to answer batches (torch only; ONNX programs
    with onnxruntime). Any cascade folder works: members that are dcvit model files are read with dcvit."""
    path = Path(path)
    if is_cascade_dir(path):
        model = load(path)
        return Served(model, dict(model.spec.preprocessing))
    spec = read_export_spec(path)
    return Served(load_program(path / spec["program"]), spec["preprocessing"])


def save_exported(
    path: str | os.PathLike,
    model: Cascade,
    format: str,
    example: torch.Tensor,
    *,
    preprocessing: Mapping[str, Any],
    names: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    info: Mapping[str, Any] | None = None,
    exit_fractions: Sequence[float] | None = None,
) -> Path:
    """cascade.save of `model` with every member written as a `format` program (cascade.programs.FORMATS), each
    checked against its member on `example` (a batch of inputs); nothing is left when one fails."""
    check_format(format)
    file = PROGRAMS[format]

    def save_member(module: nn.Module, folder: Path) -> None:
        folder.mkdir()
        save_program(module, example, format, folder / file)

    options = dict(preprocessing=preprocessing, names=names, kinds=kinds, info=info, exit_fractions=exit_fractions)
    return save(path, model, save_member, **options)


def save_exported_model(
    path: str | os.PathLike,
    module: nn.Module,
    format: str,
    example: torch.Tensor,
    *,
    preprocessing: Mapping[str, Any],
    info: Mapping[str, Any] | None = None,
) -> Path:
    """One model as folder `path`: its `format` program (checked on `example`) and export.json. Written whole
    or not at all; replaces only an empty folder or an earlier exported model."""
    check_format(format)
    problem = preprocessing_problem(preprocessing)
    if problem:
        raise ValueError(f"preprocessing {problem}")
    spec = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "program": PROGRAMS[format],
        "preprocessing": _jsonable(dict(preprocessing)),
        "info": _jsonable(dict(info or {})),
    }
    path = Path(path)
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path, SAVE_SUFFIX)
    with scratch_folder(path, SAVE_SUFFIX) as tmp:
        new = tmp / NEW
        new.mkdir()
        save_program(module, example, format, new / PROGRAMS[format])
        (new / EXPORT_SPEC).write_text(json.dumps(spec, indent=2) + "\n")
        install(tmp, path)
    return path


def read_export_spec(path: str | os.PathLike) -> dict[str, Any]:
    """export.json of an exported model folder, checked field by field."""
    file = Path(path) / EXPORT_SPEC
    if not file.is_file():
        raise CascadeFileError(
            f"{path} is not an exported folder (no cascade.json nor {EXPORT_SPEC}); write one with `dcvit export`"
        )
    try:
        raw = json.loads(file.read_text())
    except (ValueError, RecursionError) as err:
        raise CascadeFileError(f"{file} is not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT or raw.get("version") != EXPORT_VERSION:
        raise CascadeFileError(f"{file}: not an exported model (accepted: format {EXPORT_FORMAT!r}, version 1)")
    if raw.get("program") not in PROGRAMS.values():
        raise CascadeFileError(
            f"{file}: field 'program' must be one of {', '.join(PROGRAMS.values())}, not {_short(raw.get('program'))}"
        )
    pre = raw.get("preprocessing")
    problem = preprocessing_problem(pre) if isinstance(pre, dict) else "must be an object"
    if problem:
        raise CascadeFileError(f"{file}: preprocessing {problem}")
    return raw


def _check_replaceable(path: Path) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink() and (not any(path.iterdir()) or (path / EXPORT_SPEC).is_file()):
        return
    raise ValueError(
        f"refusing to write an exported model to {path}: it exists and is not an exported model folder; "
        f"choose another path or remove it"
    )
