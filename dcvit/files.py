"""Model files, pickle-free: a directory with ``model.safetensors`` and ``spec.json``, plus the atomic
JSON and safetensors writers every other file of the project goes through.

The spec names the adapter, the base architecture and its config, the data config, and the recorded surgery
edits, so `load` rebuilds the module offline and loads the weights. Every writer goes to a temporary file in
the destination folder and is renamed into place, so an interrupted run never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .arch import adapter_for_spec, get_adapter
from .surgery import replay_edits

FORMAT = "dcvit-model"
DATA_CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode", "num_classes")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    # safetensors refuses shared or non-contiguous storage; clone so any state dict can be saved.
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp))


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"refusing to read {path.name}: pickle files are never loaded; "
                         f"accepted: .safetensors written by dcvit.save")
    return load_file(str(path))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors (for safetensors) and JSON-able metadata."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def model_spec(model: nn.Module) -> dict[str, Any]:
    adapter = get_adapter(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {
        "format": FORMAT, "version": 1, "adapter": adapter.name, "base": adapter.base_spec(model),
        "edits": list(getattr(model, "dcvit_edits", [])),
        "data_config": {k: cfg[k] for k in DATA_CFG_KEYS if cfg.get(k) is not None},
    }


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model` to directory `path` (model.safetensors + spec.json), replacing it atomically."""
    path = Path(path)
    spec = model_spec(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_tensors(tmp / "model.safetensors", model.state_dict())
        write_json(tmp / "spec.json", spec)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _restore_data_config(model: nn.Module, data_config: dict) -> None:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for key, value in data_config.items():
        cfg[key] = tuple(value) if isinstance(value, list) else value
    model.pretrained_cfg = cfg


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by `save` (offline) and load its weights. Pickle files are refused."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"refusing to load {path.name}: pickle files (.pt/.pth/.bin/...) are never unpickled; "
                         f"accepted: a directory written by dcvit.save (model.safetensors + spec.json)")
    folder = path.parent if path.is_file() else path
    if not (folder / "spec.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} is not a dcvit model directory (needs model.safetensors and spec.json)")
    spec = read_json(folder / "spec.json")
    if spec.get("format") != FORMAT:
        raise ValueError(f"{folder / 'spec.json'} is not a dcvit model spec (format {spec.get('format')!r})")
    model = adapter_for_spec(spec["adapter"]).build(spec["base"])
    model = replay_edits(model, spec["edits"])
    model.load_state_dict(read_tensors(folder / "model.safetensors"), strict=True)
    _restore_data_config(model, spec.get("data_config", {}))
    return model.eval()
