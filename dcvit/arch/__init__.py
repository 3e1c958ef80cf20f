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
    if load_plugins():  # an installed plugin's adapter may match: retry once they are imported
        return get_adapter(model)
    for cls in _ADAPTERS:
        reason = cls.refusal(model)
        if reason:
            raise UnsupportedModelError(reason)
    raise UnsupportedModelError(
        f"unsupported architecture {type(model).__name__}: no adapter found; dcvit needs a transformer "
        f"whose blocks have an attention module and an MLP (supported: {', '.join(_families())}; "
        f"see README 'Custom architectures')"
    )


def runnable(model: nn.Module) -> nn.Module:
    """`model` as dcvit runs it (see Adapter.runnable): the entry points that run or edit a model call this."""
    return get_adapter(model).runnable(model)


def _families() -> list[str]:
    """The supported model families in words, in registration order (ids where an adapter names none)."""
    return list(dict.fromkeys(cls.family or cls.name for cls in reversed(_ADAPTERS)))


def adapter_for_spec(name: str) -> type[Adapter]:
    if name not in _SOURCES:
        load_plugins()
    if name not in _SOURCES:
        raise UnsupportedModelError(
            f"model file names adapter '{name}', which is not registered (registered: {', '.join(sorted(_SOURCES))})"
        )
    return _SOURCES[name]


PLUGIN_GROUP = "dcvit.adapters"  # entry-point group of installed adapter plugins (setup.cfg shows how to declare)
_plugins_loaded = False


def load_plugins() -> bool:
    """Import the adapters installed packages declare in the PLUGIN_GROUP entry points, once, on the first
    lookup that fails. An entry point names a module that registers its adapters, or an Adapter class. A
    plugin that fails to import is reported on the "dcvit" logger and skipped. True if any adapter was added."""
    global _plugins_loaded
    if _plugins_loaded:
        return False
    _plugins_loaded = True
    import importlib.metadata
    import logging

    before = len(_ADAPTERS)
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            loaded = entry.load()
        except Exception as err:  # a broken plugin must not break the others, nor dcvit itself
            logging.getLogger("dcvit").warning(f"adapter plugin {entry.value} failed to import: {err!r}"[:300])
            continue
        if isinstance(loaded, type) and issubclass(loaded, Adapter) and loaded not in _ADAPTERS:
            register_adapter(loaded)
    return len(_ADAPTERS) > before


from . import (  # noqa: E402,F401  register the built-in adapters
    hf_deit,
    hf_dinov2,
    hf_swin,
    hf_vit,
    timm_beit,
    timm_cait,
    timm_eva,
    timm_relpos,
    timm_swin,
    timm_vit,
    torchvision_swin,
    torchvision_vit,
)

__all__ = [
    "Adapter",
    "MlpParts",
    "UnsupportedModelError",
    "register_adapter",
    "get_adapter",
    "runnable",
    "adapter_for_spec",
    "load_plugins",
]
