"""Cascades that ship, with dcvit's model files as members (docs/method.md §9; format in cascade/files.py).

    save_cascade("runs/x/cascade", [cnn, vit], thresholds, costs, names)   # cheapest first, the big model last
    model = load_cascade("runs/x/cascade")          # a cascade.Cascade, ready to call on a batch
    dcvit.evaluate_cascade(model, loader)            # top-1, exits per member, MACs per image

Members are written with dcvit.save (pickle-free safetensors + spec.json). A member no adapter describes
(a CNN companion such as fmnist_cnn) is written by name instead: its registered timm name, the few creation
arguments that shape it, and its weights as safetensors (member.json + model.safetensors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import cascade

from .arch import UnsupportedModelError, get_adapter
from .arch.base import Setting, check_kwargs, either, integer
from .data import data_config
from .factory import create_model
from .files import SPEC as MODEL_SPEC
from .files import load, save
from .rebuild import BUILD_ERRORS
from .storage import ModelFileError, one_line, read_json, read_tensors, tensor_header, write_json, write_tensors
from .validate import DTYPES, check_members, floating_dtype, header_dtype, tensor_problem

MEMBER, WEIGHTS, MEMBER_FORMAT = "member.json", "model.safetensors", "dcvit-timm-member"
# Creation arguments a by-name member may carry (anything else, e.g. checkpoint_path, could reach the
# network or unpickle a file when an untrusted member.json is loaded).
_SIDE = integer(1, 1 << 14)
_BY_NAME_KWARGS = {
    "num_classes": integer(0, 1 << 20),
    "in_chans": integer(1, 1024),
    "img_size": either(
        _SIDE, Setting("2 of those", lambda v: isinstance(v, list) and len(v) == 2 and all(map(_SIDE.test, v)))
    ),
    "global_pool": Setting("a string of up to 16 characters", lambda v: isinstance(v, str) and len(v) <= 16),
}


# --- members -------------------------------------------------------------------------------------------
def save_member(model: nn.Module, folder: Path) -> None:
    """cascade.save's save_member: dcvit.save when an adapter describes the model, else by timm name."""
    try:
        get_adapter(model)
    except UnsupportedModelError:
        _save_by_name(model, Path(folder))
        return
    save(model, folder)


def load_member(folder: Path) -> nn.Module:
    """cascade.load's load_member: the model save_member wrote to `folder`."""
    folder = Path(folder)
    if (folder / MODEL_SPEC).is_file():
        return load(folder)
    if not (folder / MEMBER).is_file():
        programs = [name for name in cascade.programs.PROGRAMS.values() if (folder / name).is_file()]
        if programs:
            raise ModelFileError(
                f"{folder} holds an exported program ({programs[0]}), not a dcvit model; read an exported folder "
                f"with cascade.load or cascade.load_exported"
            )
        raise ModelFileError(f"{folder} holds no dcvit model ({MODEL_SPEC} or {MEMBER})")
    name, kwargs, dtype = _read_member(folder / MEMBER)
    dtype = DTYPES[dtype or header_dtype(tensor_header(folder / WEIGHTS))]
    _check_tensors(name, kwargs, dtype, folder / WEIGHTS)
    model = create_model(name, pretrained=False, **kwargs).to(dtype)  # the dtype it was saved in
    model.load_state_dict(read_tensors(folder / WEIGHTS), strict=True)
    return model.eval()


def _save_by_name(model: nn.Module, folder: Path) -> None:
    base = getattr(model, "dcvit_base", None) or {}
    name = base.get("name")
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in base.get("kwargs", {}).items()}
    if base.get("source") != "timm" or getattr(model, "dcvit_edits", None):
        raise ValueError(
            f"cannot save {type(model).__name__} as a cascade member: no dcvit adapter describes it and it was "
            f"not made by dcvit.create_model(timm name) unedited"
        )
    check_kwargs(f"cascade member {name} (saved by name)", kwargs, _BY_NAME_KWARGS)
    folder.mkdir(parents=True)
    write_tensors(folder / WEIGHTS, model.state_dict())
    dtype = floating_dtype(model.state_dict())
    write_json(folder / MEMBER, {"format": MEMBER_FORMAT, "version": 1, "name": name, "kwargs": kwargs, "dtype": dtype})


def _read_member(path: Path) -> tuple[str, dict, str | None]:
    """member.json, checked: a registered timm name and accepted creation arguments only."""
    try:
        spec = read_json(path)
    except (ValueError, RecursionError) as err:
        raise ModelFileError(f"{path} is not valid JSON ({one_line(err)})") from None
    if not isinstance(spec, dict) or spec.get("format") != MEMBER_FORMAT:
        raise ModelFileError(f"{path} is not a dcvit member file (format {MEMBER_FORMAT!r} expected)")
    name, kwargs = spec.get("name"), spec.get("kwargs", {})
    if not isinstance(name, str) or not re.fullmatch(r"\w+", name, re.ASCII) or not timm.is_model(name):
        raise ModelFileError(f"{path}: 'name' must be a registered timm model name, not {name!r:.60}")
    if not isinstance(kwargs, dict):
        raise ModelFileError(f"{path}: 'kwargs' must be an object")
    if spec.get("version", 1) != 1 or spec.get("dtype", "float32") not in DTYPES:
        raise ModelFileError(
            f"{path}: version {spec.get('version')!r:.20} / dtype {spec.get('dtype')!r:.20} not accepted "
            f"(accepted: version 1, dtype one of {', '.join(DTYPES)})"
        )
    try:
        check_kwargs(f"timm {name}", kwargs, _BY_NAME_KWARGS)
    except ValueError as err:
        raise ModelFileError(f"{path}: {err}") from None
    return name, kwargs, spec.get("dtype")


def _check_tensors(name: str, kwargs: dict, dtype: torch.dtype, weights: Path) -> None:
    """The weights must match the architecture exactly (names, shapes, dtypes); checked on the meta device,
    before any allocation."""
    try:
        with torch.device("meta"):
            meta = create_model(name, pretrained=False, **kwargs)
    except BUILD_ERRORS as err:
        raise ModelFileError(f"{weights.parent / MEMBER}: {name} refused its arguments ({one_line(err)})") from None
    problems = tensor_problem(meta.to(dtype), tensor_header(weights))
    if problems:
        raise ModelFileError(f"{weights} does not match {name} ({problems})")


# --- whole cascades ------------------------------------------------------------------------------------
def member_kind(model: nn.Module, teacher: bool = False) -> str:
    """teacher (the big model), compressed (edited by dcvit: it carries its surgery edits), or companion."""
    if teacher:
        return "teacher"
    return "compressed" if getattr(model, "dcvit_edits", None) else "companion"


def preprocessing(model: nn.Module) -> dict[str, Any]:
    """The input a model expects (timm data config: input_size, mean, std, crop_pct, ...)."""
    cfg = data_config(model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in cascade.files.PREPROCESSING_KEYS}


def save_cascade(
    path: str | Path,
    models: Sequence[nn.Module],
    thresholds: Sequence[float],
    costs: Sequence[float],
    names: Sequence[str],
    info: Mapping[str, Any] | None = None,
    kinds: Sequence[str] | None = None,
    committee: Sequence[bool] | None = None,
    exit_fractions: Sequence[float] | None = None,
) -> Path:
    """Write a cascade folder of `models` (cheapest first, the big model, the teacher, last). Every member is
    fed the big model's preprocessing, as the cascade study calibrated them. kinds: teacher / compressed /
    companion per member; default: the last is the teacher, others compressed when dcvit edited them.
    exit_fractions: where samples left on some data (say which in info), for the expected MACs per image."""
    if kinds is None:
        kinds = [member_kind(m, teacher=i == len(models) - 1) for i, m in enumerate(models)]
    model = cascade.Cascade(models, thresholds, costs, committee)
    options = dict(names=names, kinds=kinds, info=info, exit_fractions=exit_fractions)
    return cascade.save(path, model, save_member, preprocessing=preprocessing(models[-1]), **options)


def load_cascade(path: str | Path) -> cascade.Cascade:
    """A cascade folder as a Cascade in eval mode; its data config is the stored preprocessing, so
    dcvit.eval_transform(model) gives the input the members were calibrated on."""
    model = cascade.load(path, load_member)
    check_members(model, Path(path) / cascade.files.SPEC)  # their input and MACs, not cascade.json's word
    model.pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in model.spec.preprocessing.items()}
    return model.eval()
