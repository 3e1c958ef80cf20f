"""Model files and model names: safetensors weights plus a JSON spec, never pickle.

A saved model is a directory with ``model.safetensors`` and ``spec.json``. The spec names the adapter,
the base architecture and its config, the data config, and the recorded surgery edits (compressed blocks
with their kept unit indices, dropped blocks), so `load` rebuilds the module offline and loads the weights.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import timm
from torch import nn

from .arch import adapter_for_spec, get_adapter
from .fileio import PICKLE_SUFFIXES, read_json, read_tensors, write_json, write_tensors
from .surgery import replay_edits

FORMAT = "dcvit-model"
DATA_CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode", "num_classes")
TORCHVISION_PREFIX = "tv:"


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model by name, or a torchvision one as 'tv:NAME'; the creation args are kept for `save`."""
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision
        model = torchvision.models.get_model(name[len(TORCHVISION_PREFIX):], weights="DEFAULT" if pretrained else None, **kwargs)
        model.pretrained_cfg = {"input_size": (3, model.image_size, model.image_size), "mean": (0.485, 0.456, 0.406),
                                "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "interpolation": "bilinear"}
        return model
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    model.dcvit_base = {"source": "timm", "name": name.split(".")[0], "kwargs": kwargs}
    _sync_input_size(model)
    return model


def _sync_input_size(model: nn.Module) -> None:
    """timm keeps the registered input size when img_size/in_chans are overridden; make the data config agree."""
    from .macs import default_input_size
    try:
        size = default_input_size(model)
    except ValueError:
        return
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if cfg.get("input_size") and tuple(cfg["input_size"]) != tuple(size):
        cfg["input_size"] = tuple(size)
        channels = size[0]
        for key in ("mean", "std"):  # e.g. 3-channel statistics on a 1-channel model
            if key in cfg and len(cfg[key]) != channels:
                cfg[key] = tuple(cfg[key][:1]) * channels
        model.pretrained_cfg = cfg


def _has_local_weights(name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    return bool(cfg is not None and cfg.file and Path(cfg.file).is_file())


def resolve_model(name_or_dir: str, weights: str = "auto") -> nn.Module:
    """A saved model directory, or a model name.

    weights: "auto" loads pretrained weights only when they are on disk (the shipped models) and uses
    random init otherwise (enough for MACs, planning and latency); "pretrained" asks timm/torchvision
    for them (network or cache) and fails with a clear error when they cannot be had (compressing or
    evaluating random weights is pointless); "random" never loads any.
    """
    path = Path(name_or_dir)
    if path.exists() or path.suffix in PICKLE_SUFFIXES + (".safetensors",):
        return load(path)
    known = name_or_dir.startswith(TORCHVISION_PREFIX) or timm.is_model(name_or_dir.split(".")[0])
    if not known:
        raise ValueError(f"unknown model '{name_or_dir}': not a timm model name (see timm.list_models()), "
                         f"'tv:NAME' for torchvision, nor a saved model directory")
    local = not name_or_dir.startswith(TORCHVISION_PREFIX) and _has_local_weights(name_or_dir)
    if weights == "pretrained" or (weights == "auto" and local):
        try:
            return create_model(name_or_dir, pretrained=True)
        except Exception as err:  # no network, no cache, or shipped weights not trained yet
            if weights == "pretrained":
                raise ValueError(f"pretrained weights for {name_or_dir} are unavailable ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:160]}); pass a saved model directory instead") from None
            print(f"dcvit: note: pretrained weights for {name_or_dir} unavailable ({type(err).__name__}); "
                  f"using random init", file=sys.stderr)
    return create_model(name_or_dir, pretrained=False)


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
