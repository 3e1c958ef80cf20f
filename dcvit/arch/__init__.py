"""Architecture adapters: the only place that knows concrete model classes (see base.Adapter).

`get_adapter(model)` returns the first registered adapter whose `matches` accepts the model.
To support a custom ViT, subclass `Adapter` and call `register_adapter` (README shows an example).
"""

from __future__ import annotations

from torch import nn

from .base import Adapter, MlpParts

_ADAPTERS: list[type[Adapter]] = []
_SOURCES: dict[str, type[Adapter]] = {}


class UnsupportedModelError(ValueError):
    """The model lacks the structure DC-ViT needs (transformer blocks with attention and an MLP)."""


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Register an adapter class (usable as a decorator); later registrations are tried first."""
    _ADAPTERS.insert(0, cls)
    _SOURCES[cls.name] = cls
    return cls


def get_adapter(model: nn.Module) -> Adapter:
    for cls in _ADAPTERS:
        if cls.matches(model):
            return cls()
    raise UnsupportedModelError(
        f"unsupported architecture {type(model).__name__}: no adapter found; dcvit needs a transformer "
        f"whose blocks have an attention module and an MLP (supported: {', '.join(sorted(_SOURCES))}; "
        f"see README 'Custom architectures')"
    )


def adapter_for_spec(name: str) -> type[Adapter]:
    if name not in _SOURCES:
        raise UnsupportedModelError(
            f"model file names adapter '{name}', which is not registered (registered: {', '.join(sorted(_SOURCES))})"
        )
    return _SOURCES[name]


from . import timm_swin, timm_vit, torchvision_vit  # noqa: E402,F401  register the built-in adapters

__all__ = ["Adapter", "MlpParts", "UnsupportedModelError", "register_adapter", "get_adapter", "adapter_for_spec"]
