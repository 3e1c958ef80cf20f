"""Checks of files read from anyone that need the model: dcvit's model files and the members of cascade folders.

The preprocessing rules are cascade.validate's (one rule set for spec.json and cascade.json); here they meet the
model's own input size. The rest bounds what a spec may ask of the build before anything is built (blocks cost
time even on the meta device), compares the weights' dtypes as well as their shapes with what the spec builds,
and recounts a cascade's MACs from its members instead of trusting the numbers in cascade.json.
Every refusal is one line naming the file, the field or tensor, the bad value and what is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cascade.validate import KEYS as PREPROCESSING_KEYS
from cascade.validate import preprocessing_problem

from .storage import dtype_name

# What a model file's weights may be: a model is saved in one floating dtype (integer buffers keep theirs).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# 5x the deepest pretrained ViT (48 blocks): building costs about 10 ms a block even on the meta device.
MAX_BLOCKS = 256
# the block counts and the widths (held by every model of them as a tensor dimension: its norms) that the
# adapters' settings name
_DEPTHS = ("depth", "depths", "num_layers", "depth_token_only", "num_hidden_layers")
_WIDTHS = ("embed_dim", "hidden_dim", "hidden_size")
MAX_LABELS, MAX_LABEL = 100_000, 200  # class names in a data_config: 21k for ImageNet-21k, names are short
MACS_TOLERANCE = 1e-3  # relative: fvcore's count is exact, so this only forgives rounding in a writer's JSON


# --- model files ---------------------------------------------------------------------------------------
def floating_dtype(state: Mapping[str, torch.Tensor]) -> str:
    """The one floating dtype of a state dict (float32 when it has no floating tensor), or a one-line ValueError
    for a mix: a model file records one dtype, which load gives back."""
    found = sorted({dtype_name(t.dtype) for t in state.values() if t.is_floating_point()})
    if len(found) > 1:
        raise ValueError(
            f"the model's floating tensors mix dtypes ({', '.join(found)}); a model file holds one: convert the "
            f"model first, e.g. model.to(torch.{found[0]})"
        )
    name = found[0] if found else "float32"
    if name not in DTYPES:
        raise ValueError(f"the model's dtype {name} cannot be saved (accepted: {', '.join(DTYPES)})")
    return name


def header_dtype(header: Mapping[str, tuple[str, tuple[int, ...]]]) -> str:
    """The dtype of a weights file written before specs recorded one: its floating dtype when it has just one
    dcvit saves (float16 files then load as float16, as saved), else float32 (and the tensor check says why)."""
    floating = {dtype for dtype, _ in header.values() if dtype.startswith(("float", "bfloat"))}
    return floating.pop() if len(floating) == 1 and next(iter(floating)) in DTYPES else "float32"


def structure_problem(base: Any, header: Mapping[str, tuple[str, tuple[int, ...]]]) -> str | None:
    """What a spec's base asks beyond what its weights (header: name -> (dtype, shape)) can hold, before any build:
    more blocks than MAX_BLOCKS or than the file has tensors, or a width no tensor has."""
    kwargs = base.get("kwargs") if isinstance(base, dict) else None
    if not isinstance(kwargs, dict):
        return None  # the adapter's own checks say what is wrong with it
    blocks = sum(_count(kwargs.get(key)) for key in _DEPTHS)
    limit = min(MAX_BLOCKS, len(header))  # every block has weights of its own, bar a dropped one
    if blocks > limit:
        named = ", ".join(f"{k}={kwargs[k]}" for k in _DEPTHS if k in kwargs)
        return (
            f"base asks for {blocks} blocks ({named}), more than its weights file can hold ({len(header)} tensors); "
            f"accepted: at most {limit} blocks"
        )
    widest = max((d for _, shape in header.values() for d in shape), default=0)
    for key in _WIDTHS:
        value = kwargs.get(key)
        if type(value) is int and value > widest:
            return f"base {key}={value} is wider than any tensor in its weights file; accepted: at most {widest}"
    return None


def _count(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, list) and all(type(v) is int for v in value):
        return sum(value)
    return 0  # mistyped: the adapter refuses it in its own words


def tensor_problem(model: nn.Module, header: Mapping[str, tuple[str, tuple[int, ...]]]) -> str | None:
    """How the weights (header) differ from the tensors `model` (the spec's, on the meta device) has: names and
    shapes (dcvit.rebuild.shape_mismatch), then dtypes, which load_state_dict would silently convert."""
    from .rebuild import shape_mismatch, shapes_of

    state = model.state_dict()
    problems = shape_mismatch({k: shape for k, (_, shape) in header.items()}, shapes_of(state))
    if problems:
        return problems
    wrong = [
        f"{k} {header[k][0]} (spec: {dtype_name(t.dtype)})"
        for k, t in sorted(state.items())
        if header[k][0] != dtype_name(t.dtype)
    ]
    if wrong:
        return f"wrong dtype: {', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''} ({len(wrong)})"
    return None


def data_config_problem(data_config: Mapping[str, Any], model_size: Any = None) -> str | None:
    """spec.json's data_config by cascade.validate's rules (num_classes is no preprocessing: checked apart);
    model_size: the (C, H, W) the model's structure takes, when its adapter tells."""
    accepted = (*PREPROCESSING_KEYS, "num_classes", "label_names")
    unknown = sorted(set(data_config) - set(accepted), key=str)
    if unknown:
        return f"field {unknown[0]!r:.60} is unknown (accepted: {', '.join(accepted)})"
    classes = data_config.get("num_classes", 0)
    if not (type(classes) is int and classes >= 0):
        return f"'num_classes' must be a non-negative integer, not {classes!r:.60}"
    names = data_config.get("label_names", [])
    if not (
        isinstance(names, list)
        and len(names) <= MAX_LABELS
        and all(isinstance(n, str) and 0 < len(n) <= MAX_LABEL for n in names)
    ):
        return f"'label_names' must be a list of at most {MAX_LABELS} class names of 1 to {MAX_LABEL} characters"
    pre = {k: v for k, v in data_config.items() if k not in ("num_classes", "label_names")}
    if model_size is not None:  # without one in the file, the model's own size is what the transforms use
        pre = {"input_size": list(model_size), **pre}
    return preprocessing_problem(pre, model_size, fixed=True, required=False)


def model_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """(C, H, W) from the model's structure (works on the meta device), None where its adapter cannot tell."""
    from .arch import UnsupportedModelError, get_adapter

    try:
        size = get_adapter(model).input_size(model)
    except UnsupportedModelError:
        return None
    return tuple(size) if size else None


# --- cascade folders -------------------------------------------------------------------------------------
def check_members(model: nn.Module, file: Path) -> None:
    """A loaded cascade's members against its cascade.json (`file`): each must take the preprocessing's input
    (channels; the exact size for a transformer, within RESIZE_FACTOR for a model that takes any), and its MACs,
    recounted at that input, must be the ones recorded (they make the 'MACs per image' a cascade reports)."""
    from cascade.files import CascadeFileError

    from .macs import count_macs, default_input_size

    spec = model.spec
    size = list(spec.preprocessing["input_size"])
    members = list(zip(spec.members, model.models))
    for member, module in members:  # every member's input first: a wrong size also changes the MACs
        fixed = model_input_size(module)
        own = fixed or _stated_size(module, default_input_size)
        problem = own and preprocessing_problem({"input_size": size}, own, fixed=fixed is not None)
        if problem:
            raise CascadeFileError(f"{file}: preprocessing {problem} (member {member.name!r}, {member.folder})")
    for member, module in members:
        try:
            counted = count_macs(module, size)
        except ValueError as err:  # the member does not run on that input
            raise CascadeFileError(f"{file}: member {member.name!r} ({member.folder}): {err}") from None
        if abs(counted - member.macs) > MACS_TOLERANCE * max(counted, 1):
            raise CascadeFileError(
                f"{file}: member {member.name!r} ({member.folder}) records {member.macs:.6g} MACs per image, but it "
                f"counts {counted} at input {size}; accepted: its own count (re-save the cascade)"
            )


def _stated_size(module: nn.Module, default_input_size) -> tuple[int, ...] | None:
    """The input size a model without a structural one states in its data config (a CNN companion's)."""
    try:
        return tuple(default_input_size(module))
    except ValueError:
        return None
