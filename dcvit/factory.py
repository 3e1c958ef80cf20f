"""Models by name: timm names, 'tv:NAME' for torchvision, or a directory written by `dcvit.save`."""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .files import load
from .storage import PICKLE_SUFFIXES, short_path

TORCHVISION_PREFIX = "tv:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def create_model(name: str, pretrained: bool = False, *, require_adapter: bool = True, **kwargs: Any) -> nn.Module:
    """A timm model by name, or a torchvision one as 'tv:NAME'; the creation args are kept for `save`.
    require_adapter=False also builds torchvision models that no dcvit adapter accepts (for counting MACs)."""
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_model(name[len(TORCHVISION_PREFIX) :], pretrained, kwargs, require_adapter)
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    model.dcvit_base = {"source": "timm", "name": name.split(".")[0], "kwargs": kwargs}
    _sync_input_size(model)
    return model


# --- torchvision: any classification model an adapter accepts, decided on the model, never by name -------
def _torchvision_model(name: str, pretrained: bool, kwargs: dict[str, Any], require_adapter: bool = True) -> nn.Module:
    import torchvision

    check_torchvision(name, require_adapter, **kwargs)
    model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    model.pretrained_cfg = _torchvision_data_config(name, model)
    return model


def check_torchvision(name: str, require_adapter: bool = True, **kwargs: Any) -> None:
    """One-line errors, before any download, for a name that is not a torchvision classification model, for
    settings it refuses, and (require_adapter) for a model that no dcvit adapter accepts (UnsupportedModelError)."""
    from .arch import UnsupportedModelError

    name = name.removeprefix(TORCHVISION_PREFIX)
    if name not in _torchvision_names():
        raise ValueError(
            f"unknown torchvision model 'tv:{name}': not a torchvision classification model "
            f"(torchvision.models.list_models()); {_supported_line()}"
        )
    try:
        model = _meta_build(name, kwargs)
    except (TypeError, ValueError, AssertionError) as err:  # settings the builder refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"tv:{name} cannot be built with {kwargs}: {first}") from None
    if require_adapter and (model is None or not _has_adapter(model)):
        what = f" ({type(model).__name__})" if model is not None else ""
        raise UnsupportedModelError(
            f"tv:{name}{what} has no dcvit adapter: dcvit compresses vision transformers; {_supported_line()}"
        )


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)  # the classification models only


def _meta_build(name: str, kwargs: dict[str, Any]) -> nn.Module | None:
    """The model without weights on the meta device (no memory, no init cost); None for the few builders
    (RegNet) that read tensor values while building: no vision transformer does, and telling for sure would
    cost a full build (RegNet-Y 128GF: 21 s and 3.3 GB)."""
    import torchvision

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's notes on default inits
            return torchvision.models.get_model(name, weights=None, **kwargs)
    except (NotImplementedError, RuntimeError):
        return None


def _has_adapter(model: nn.Module) -> bool:
    from .arch import UnsupportedModelError, get_adapter

    try:
        get_adapter(model)
    except UnsupportedModelError:
        return False
    return True


@functools.cache
def _supported_torchvision() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(family, its models an adapter accepts) per torchvision model family (builder module): one meta-device
    probe per family, then every model of a family whose first model is accepted. A family whose first
    model cannot be built on the meta device is taken as unsupported (telling would cost a full build)."""
    import torchvision

    families: dict[str, list[str]] = {}
    for name in _torchvision_names():
        families.setdefault(torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[-1], []).append(name)

    def accepted(name: str) -> bool:
        model = _meta_build(name, {})
        return model is not None and _has_adapter(model)

    supported = []
    for family, names in sorted(families.items()):
        if accepted(names[0]):
            supported.append((family, tuple(n for n in names if n == names[0] or accepted(n))))
    return tuple(supported)


def _supported_line() -> str:
    families = _supported_torchvision()
    if not families:
        return "no torchvision family has an adapter"
    listed = "; ".join(f"{family} ({', '.join(f'tv:{n}' for n in names)})" for family, names in families)
    return f"supported torchvision families: {listed}"


def _torchvision_data_config(name: str, model: nn.Module) -> dict[str, Any]:
    """timm-style data config: the size from the model's structure (it follows image_size=...), the rest from
    torchvision's default weights' preprocessing (ImageNet statistics and crop when it has none)."""
    import torchvision

    from .arch import UnsupportedModelError, get_adapter

    cfg = {"input_size": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 0.875}
    cfg["interpolation"] = "bilinear"
    try:
        t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        cfg.update(input_size=(3, crop, crop), mean=tuple(t.mean), std=tuple(t.std), crop_pct=crop / resize)
        cfg["interpolation"] = t.interpolation.value
    except (AttributeError, IndexError, TypeError, ValueError):  # no weights, or another kind of transforms
        pass
    try:
        size = get_adapter(model).input_size(model)
    except UnsupportedModelError:  # a model dcvit only counts (require_adapter=False): the weights' size stands
        size = None
    if size:
        cfg["input_size"] = tuple(size)
    return cfg


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


def resolve_model(
    name_or_dir: str,
    weights: str = "auto",
    require_adapter: bool = True,
    *,
    model_kwargs: dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """A saved model directory, or a model name.

    weights: "auto" loads pretrained weights only when they are on disk (the shipped models) and uses
    random init otherwise (enough for MACs, planning and latency); "pretrained" asks timm/torchvision
    for them (network or cache) and fails with a clear error when they cannot be had (compressing or
    evaluating random weights is pointless); "random" never loads any. require_adapter=False also takes
    torchvision models that no dcvit adapter accepts (a ResNet for `dcvit macs`, which counts any model).
    model_kwargs go to the model's builder (timm.create_model(name, **model_kwargs), e.g. num_classes=0,
    img_size=384); a saved model is rebuilt from its own spec and takes none. checkpoint: a local weights file
    (dcvit.checkpoint.load_weights: safetensors, or torch with weights_only=True) loaded over the model instead
    of any pretrained weights; its names and shapes must fit.
    """
    if checkpoint is not None:
        from .checkpoint import load_weights

        model = resolve_model(name_or_dir, "random", require_adapter, model_kwargs=model_kwargs)
        return load_weights(model, checkpoint)
    path = Path(name_or_dir)
    try:
        exists = path.exists()
    except OSError:  # a name too long to be a path (ENAMETOOLONG) names no saved model
        exists = False
    if exists or path.suffix in PICKLE_SUFFIXES + (".safetensors",):
        if model_kwargs:
            raise ValueError(
                f"model kwargs ({', '.join(model_kwargs)}) apply to a model name; {short_path(name_or_dir)} is a "
                f"saved model, rebuilt from its own spec.json; accepted: no kwargs, or a timm/torchvision name"
            )
        return load(path)
    kwargs = check_model_kwargs(model_kwargs or {})
    known = name_or_dir.startswith(TORCHVISION_PREFIX) or timm.is_model(name_or_dir.split(".")[0])
    if not known:
        raise ValueError(
            f"unknown model '{short_path(name_or_dir)}': not a timm model name (see timm.list_models()), "
            f"'tv:NAME' for torchvision, nor a saved model directory"
        )
    if name_or_dir.startswith(TORCHVISION_PREFIX):  # unknown or unsupported: one line, before any download
        check_torchvision(name_or_dir, require_adapter, **kwargs)
    local = not name_or_dir.startswith(TORCHVISION_PREFIX) and _has_local_weights(name_or_dir)
    if weights == "pretrained" or (weights == "auto" and local):
        try:
            return _build(name_or_dir, True, require_adapter, kwargs)
        except KwargsError:
            raise
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
    return _build(name_or_dir, False, require_adapter, kwargs)


# Builder arguments that fetch or read weights: dcvit decides that (weights=, checkpoint=), never a kwarg.
WEIGHT_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "weights")


def check_model_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` for a model builder, or a one-line ValueError for names that load weights or are not names."""
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"model kwarg {str(key)[:40]!r} is not a name; accepted: KEY=VALUE with KEY a Python name")
        if key in WEIGHT_KWARGS:
            raise ValueError(
                f"model kwarg {key!r} would load weights; accepted: architecture settings (num_classes, img_size, "
                f"...), with weights from --checkpoint FILE (checkpoint=) or the pretrained ones"
            )
    return kwargs


def _build(name: str, pretrained: bool, require_adapter: bool, kwargs: dict[str, Any]) -> nn.Module:
    """create_model, with a builder's refusal of the kwargs as a one-line ValueError."""
    try:
        return create_model(name, pretrained=pretrained, require_adapter=require_adapter, **kwargs)
    except (TypeError, AssertionError) as err:
        if not kwargs:
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        settings = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise KwargsError(f"{name} cannot be built with {settings}: {first}") from None


class KwargsError(ValueError):
    """The model's builder refused the given kwargs."""
