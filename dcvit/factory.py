"""Models by name: timm names, 'tv:NAME' for torchvision, or a directory written by `dcvit.save`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import timm
from torch import nn

from .files import load
from .storage import PICKLE_SUFFIXES

TORCHVISION_PREFIX = "tv:"


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model by name, or a torchvision one as 'tv:NAME'; the creation args are kept for `save`."""
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        model = torchvision.models.get_model(
            name[len(TORCHVISION_PREFIX) :], weights="DEFAULT" if pretrained else None, **kwargs
        )
        model.pretrained_cfg = {
            "input_size": (3, model.image_size, model.image_size),
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "crop_pct": 0.875,
            "interpolation": "bilinear",
        }
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
        raise ValueError(
            f"unknown model '{name_or_dir}': not a timm model name (see timm.list_models()), "
            f"'tv:NAME' for torchvision, nor a saved model directory"
        )
    local = not name_or_dir.startswith(TORCHVISION_PREFIX) and _has_local_weights(name_or_dir)
    if weights == "pretrained" or (weights == "auto" and local):
        try:
            return create_model(name_or_dir, pretrained=True)
        except Exception as err:  # no network, no cache, or shipped weights not trained yet
            if weights == "pretrained":
                raise ValueError(
                    f"pretrained weights for {name_or_dir} are unavailable ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:160]}); pass a saved model directory instead"
                ) from None
            print(
                f"dcvit: note: pretrained weights for {name_or_dir} unavailable ({type(err).__name__}); "
                f"using random init",
                file=sys.stderr,
            )
    return create_model(name_or_dir, pretrained=False)
