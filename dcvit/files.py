"""Model files, pickle-free: a directory with ``model.safetensors`` and ``spec.json``.

The spec names the adapter, the base architecture and its config, the data config, and the recorded surgery
edits, so `load` rebuilds the module offline (first on the meta device, to check it against the weights'
header before allocating anything) and loads the weights. Saving replaces a model directory atomically; what a
killed save leaves is removed by the next save of that path only when it is certainly ours (cascade.scratch).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cascade.scratch import NEW, install, remove_stale, scratch_folder

from .arch import UnsupportedModelError, adapter_for_spec, get_adapter, runnable
from .arch.base import Adapter, short
from .rebuild import BUILD_ERRORS, check_rebuilds
from .storage import (
    ModelFileError,
    one_line,
    read_json,
    read_tensors,
    refuse_pickle,
    tensor_header,
    write_json,
    write_tensors,
)
from .surgery import replay_edits
from .validate import (
    DTYPES,
    data_config_problem,
    floating_dtype,
    header_dtype,
    model_input_size,
    structure_problem,
    tensor_problem,
)

FORMAT = "dcvit-model"
VERSIONS = (1,)  # the spec versions this dcvit reads; it writes the last
SPEC, WEIGHTS = "spec.json", "model.safetensors"
DATA_CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode", "num_classes", "label_names")
SAVE_SUFFIX = ".dcvit-save"  # the temp folder of a save in progress: .NAME.XXXXXXXX.dcvit-save


def model_spec(model: nn.Module) -> dict[str, Any]:
    adapter = get_adapter(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    data_config = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in DATA_CFG_KEYS}
    size = model_input_size(model)
    if size is not None and "input_size" in data_config:  # timm keeps its registered size when img_size changed
        data_config["input_size"] = list(size)
    return {
        "format": FORMAT,
        "version": VERSIONS[-1],
        "adapter": adapter.name,
        "base": adapter.base_spec(model),
        "edits": list(getattr(model, "dcvit_edits", [])),
        "data_config": {k: v for k, v in data_config.items() if v is not None},
        "dtype": floating_dtype(model.state_dict()),  # load gives the model back in it
    }


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model` to directory `path` (model.safetensors + spec.json), replacing a model directory there.

    Everything is written into a temp folder next to `path` and renamed into place, so `path` always holds a
    whole model, the old or the new. Anything at `path` that is not a dcvit model directory is refused, and so is
    a model its spec would not rebuild: the rebuilt one must give the same outputs (see dcvit.rebuild).
    """
    path = Path(path)
    _check_place(path)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(
            f"refusing to save to {path}: the model is on the meta device (its tensors hold no values); "
            f"accepted: a model with real weights (load them first, e.g. to_empty() then load_state_dict)"
        )
    model = runnable(model)  # the network load gives back (a transformers model: its logits wrapper)
    spec = model_spec(model)
    problem = data_config_problem(spec["data_config"], model_input_size(model))
    if problem:  # what load would refuse is refused before anything is written
        raise ValueError(f"refusing to save to {path}: the model's data config {problem}")
    _check_replaceable(path)
    state = model.state_dict()
    check_rebuilds(model, spec, state, path)  # before anything is written: the file must reload as this network
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path, SAVE_SUFFIX)
    with scratch_folder(path, SAVE_SUFFIX) as tmp:
        (tmp / NEW).mkdir()  # made with the umask's permissions, unlike mkdtemp's 0700
        write_tensors(tmp / NEW / WEIGHTS, state)
        write_json(tmp / NEW / SPEC, spec)
        install(tmp, path)
    return path


def _check_place(path: Path) -> None:
    """The folders above `path` are folders, or do not exist yet: a file among them is refused in one line."""
    parent = path.parent
    while not (parent.exists() or parent.is_symlink()) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(
            f"refusing to save to {path}: {parent} is not a folder (a file, or a broken link); accepted: a path whose existing "
            f"parents are folders"
        )


def _check_replaceable(path: Path) -> None:
    """Saving replaces a dcvit model directory (or an empty one); anything else there is the user's."""
    if (path.exists() or path.is_symlink()) and not (path.is_dir() and _is_model_dir(path)):
        raise ValueError(
            f"refusing to save to {path}: it exists and is not a dcvit model directory "
            f"(only {SPEC} and {WEIGHTS} may be replaced); choose another path or remove it"
        )


def _is_model_dir(path: Path) -> bool:
    names = [p.name for p in path.iterdir()]
    return not names or (SPEC in names and all(_is_model_file(n) for n in names) and _is_spec(path / SPEC))


def _is_model_file(name: str) -> bool:
    """A file a dcvit model directory holds, or a temp file an interrupted atomic write left next to one."""
    return name in (SPEC, WEIGHTS) or re.fullmatch(r"\.(spec\.json|model\.safetensors)\.\w+\.tmp", name) is not None


def _is_spec(path: Path) -> bool:
    try:
        spec = read_json(path)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(spec, dict) and spec.get("format") == FORMAT


def _restore_data_config(model: nn.Module, data_config: dict) -> None:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for key, value in data_config.items():
        cfg[key] = tuple(value) if isinstance(value, list) else value
    model.pretrained_cfg = cfg


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by `save` (offline) and load its weights. Pickle files are refused.

    spec.json is untrusted: it is type-checked and bounded by what its weights can hold, its base is built on
    the meta device first and must match the weights file's header exactly (names, shapes, dtypes), and its
    data config must fit the model's input, so a bad file fails in one line before anything is allocated.
    The model comes back in the dtype it was saved in.
    """
    folder = _model_folder(Path(path))
    spec = read_spec(folder / SPEC)
    header = tensor_header(folder / WEIGHTS)
    problem = structure_problem(spec["base"], header)
    if problem:  # before the build, whose time grows with the blocks asked for
        raise ModelFileError(f"{folder / SPEC}: {problem}")
    adapter = _adapter(spec, folder / SPEC)
    dtype = DTYPES[spec.get("dtype") or header_dtype(header)]
    meta = _meta_model(adapter, spec, folder / SPEC).to(dtype)
    problem = data_config_problem(spec.get("data_config", {}), model_input_size(meta))
    if problem:
        raise ModelFileError(f"{folder / SPEC}: data_config {problem}")
    problem = tensor_problem(meta, header)
    if problem:
        raise ModelFileError(f"{folder / WEIGHTS} does not match {SPEC} ({problem})")
    model = replay_edits(adapter.build(spec["base"]), spec["edits"]).to(dtype)
    model.load_state_dict(read_tensors(folder / WEIGHTS), strict=True)
    _restore_data_config(model, spec.get("data_config", {}))
    return model.eval()


def _model_folder(path: Path) -> Path:
    refuse_pickle(path)
    folder = path.parent if path.is_file() else path
    if not (folder / SPEC).is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not a dcvit model directory (needs {WEIGHTS} and {SPEC})")
    return folder


def read_spec(path: Path) -> dict[str, Any]:
    """spec.json, checked field by field: it is read from files anyone may hand over."""
    try:
        spec = read_json(path)
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8 (ValueErrors), or absurdly deep nesting
        raise ModelFileError(f"{path} is not valid JSON ({one_line(err)})") from None
    if not isinstance(spec, dict):
        raise ModelFileError(f"{path} must hold a JSON object, not {_json_type(spec)}")
    if spec.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a dcvit model spec (format {short(spec.get('format'))})")
    if spec.get("version") not in VERSIONS:  # a newer format may mean what this dcvit would misread
        raise ModelFileError(
            f"{path}: spec version {short(spec.get('version'))} is not one this dcvit reads (accepted: "
            f"{', '.join(map(str, VERSIONS))}); a newer dcvit may have written it"
        )
    if "dtype" in spec and spec["dtype"] not in DTYPES:
        raise ModelFileError(f"{path}: field 'dtype' must be one of {', '.join(DTYPES)}, not {short(spec['dtype'])}")
    for key, kind in (("adapter", str), ("base", dict), ("edits", list), ("data_config", dict)):
        if key != "data_config" and key not in spec:
            raise ModelFileError(f"{path}: field '{key}' is missing")
        if key in spec and not isinstance(spec[key], kind):
            raise ModelFileError(f"{path}: field '{key}' must be {_json_type(kind())}, not {_json_type(spec[key])}")
    for i, edit in enumerate(spec["edits"]):
        _check_edit(path, i, edit)
    problem = data_config_problem(spec.get("data_config", {}))  # the model's size is checked once it is built
    if problem:
        raise ModelFileError(f"{path}: data_config {problem}")
    return spec


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return type(value) is int  # json's true/false are bools, which are ints to Python


# op -> the fields an edit record needs (besides op and block), each with a test and what it must be
_UNITS = (lambda v: v is None or (isinstance(v, list) and all(map(_is_int, v))), "null or a list of integers")
_EDIT_FIELDS = {
    "edit": {"attention": (lambda v: type(v) is bool, "true/false"), "kept_units": _UNITS},
    "compress": {"remove_attention": (lambda v: type(v) is bool, "true/false"), "kept_units": _UNITS},
    "drop": {},
}


def _check_edit(path: Path, i: int, edit: Any) -> None:
    where = f"{path}: edits[{i}]"
    if not isinstance(edit, dict):
        raise ModelFileError(f"{where} must be an object, not {_json_type(edit)}")
    if edit.get("op") not in _EDIT_FIELDS:
        raise ModelFileError(f"{where} has op {short(edit.get('op'))}; accepted: {', '.join(_EDIT_FIELDS)}")
    if not _is_int(edit.get("block")):
        raise ModelFileError(f"{where}: field 'block' must be an integer, not {short(edit.get('block'))}")
    for key, (test, what) in _EDIT_FIELDS[edit["op"]].items():
        if key not in edit or not test(edit[key]):
            raise ModelFileError(f"{where}: field '{key}' must be {what}, not {short(edit.get(key))}")
    heads = edit.get("kept_heads")  # optional: only edits that pruned attention heads record it
    if edit["op"] == "edit" and heads is not None and not (isinstance(heads, list) and all(map(_is_int, heads))):
        raise ModelFileError(f"{where}: field 'kept_heads' must be null or a list of integers, not {short(heads)}")


def _adapter(spec: dict[str, Any], path: Path) -> type[Adapter]:
    try:
        return adapter_for_spec(spec["adapter"])
    except UnsupportedModelError as err:  # a plugin's adapter: its module was not imported
        raise ModelFileError(
            f"{path}: {err}; import the plugin module that registers it before dcvit.load "
            f"(on the command line: dcvit --import MODULE ...), or install the package declaring it"
        ) from None


def _meta_model(adapter: type[Adapter], spec: dict[str, Any], path: Path) -> nn.Module:
    """The model `spec` describes, edits replayed, on the meta device: shapes only, no memory, no init."""
    try:
        with torch.device("meta"):
            model = adapter.build(spec["base"])
    except BUILD_ERRORS as err:  # around the meta-device build of a spec only, never around real work
        detail = one_line(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {one_line(err)}"
        raise ModelFileError(f"{path}: base refused: {detail}") from None
    if not adapter.matches(model):
        raise ModelFileError(
            f"{path}: base builds a {type(model).__name__}, which adapter '{adapter.name}' does not handle"
        )
    try:
        with torch.device("meta"):
            return replay_edits(model, spec["edits"])
    except ValueError as err:  # surgery's refusals: a block out of range, units out of range or repeated
        raise ModelFileError(f"{path}: edits do not apply ({one_line(err)})") from None
