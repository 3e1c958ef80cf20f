"""What inputs a classifier takes: image shape, normalisation and number of classes.

Used by :func:`synth.synthesize` (docs/method.md §4, Eq. 4-5) so that sensible defaults
follow the model. The data config is read from ``model.pretrained_cfg`` /
``model.default_cfg`` (the dicts timm attaches) without importing timm.

Caveat handled here: timm keeps the *base architecture's* config when
``create_model`` overrides ``img_size`` or ``in_chans`` (e.g. a 1-channel 32 px
``vit_tiny_patch16_224`` still reports ``input_size=(3, 224, 224)``). So the
channel count of the model's first ``Conv2d`` and a ViT's ``patch_embed.img_size``
take precedence over the config; explicit arguments take precedence over both.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

ImageSize = int | Sequence[int] | None


def data_config(model: nn.Module) -> Mapping[str, Any]:
    """The model's data config dict (timm style), or ``{}`` when it has none."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    return cfg if isinstance(cfg, Mapping) else {}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_image_size(image_size: ImageSize) -> tuple[int | None, int | None, int | None]:
    """``int`` -> (None, s, s); ``(H, W)`` -> (None, H, W); ``(C, H, W)`` as is."""
    if image_size is None:
        return None, None, None
    if isinstance(image_size, Tensor):
        image_size = image_size.tolist()
    values = [image_size] if _is_int(image_size) else image_size
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) not in (1, 2, 3):
        raise ValueError(f"image_size must be an int, (H, W) or (C, H, W); got {image_size!r}")
    if not all(_is_int(v) and v > 0 for v in values):
        raise ValueError(f"image_size values must be positive ints; got {image_size!r}")
    values = [int(v) for v in values]
    if len(values) == 1:
        return None, values[0], values[0]
    if len(values) == 2:
        return None, values[0], values[1]
    return values[0], values[1], values[2]


def _first_conv_channels(model: nn.Module) -> int | None:
    """``in_channels`` of the first ``Conv2d`` (the stem / ViT patch embedding)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return None


def _patch_embed_size(model: nn.Module) -> tuple[int, int] | None:
    """``patch_embed.img_size`` of a timm-style ViT: the size it was built for."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, Sequence) and len(size) == 2 and all(_is_int(v) for v in size):
        return int(size[0]), int(size[1])
    return None


def patch_size(model: nn.Module) -> tuple[int, int] | None:
    """(ph, pw) of a patch-based model: timm's ``patch_embed.patch_size`` or torchvision's ``patch_size``."""
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if size is None:
        size = getattr(model, "patch_size", None)
    if _is_int(size):
        size = (size, size)
    if isinstance(size, Sequence) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return None


def resolve_image_shape(model: nn.Module, image_size: ImageSize, mean: Any = None) -> tuple[int, int, int]:
    """(C, H, W): explicit ``image_size`` > model modules > data config (> ``len(mean)`` for C)."""
    c, h, w = parse_image_size(image_size)
    cfg_size = data_config(model).get("input_size")
    cfg_c = cfg_h = cfg_w = None
    if isinstance(cfg_size, Sequence) and len(cfg_size) == 3:
        cfg_c, cfg_h, cfg_w = (int(v) for v in cfg_size)
    if c is None:
        c = _first_conv_channels(model) or cfg_c
    if c is None and isinstance(mean, Sequence):
        c = len(mean)
    if h is None:
        h, w = _patch_embed_size(model) or (cfg_h, cfg_w)
    if c is None or h is None or w is None:
        raise ValueError(
            "cannot tell the model's input size (no pretrained_cfg/default_cfg 'input_size'): "
            "pass image_size=(C, H, W), or an int / (H, W) for a model with a Conv2d stem"
        )
    return c, h, w


def _per_channel(name: str, value: Any, channels: int) -> tuple[float, ...]:
    """Broadcast a scalar / 1-value / all-equal ``mean`` or ``std`` to ``channels`` values."""
    values = [float(value)] if isinstance(value, numbers.Real) else [float(v) for v in value]
    if len(values) != channels:
        # A stale 3-channel config like (0.5, 0.5, 0.5) is still right for 1 channel.
        if len(values) >= 1 and all(v == values[0] for v in values):
            values = values[:1] * channels
        else:
            raise ValueError(
                f"{name} has {len(values)} values but the images have {channels} channel(s); "
                f"pass {name}= with one value per channel"
            )
    return tuple(values)


def resolve_normalisation(
    model: nn.Module, channels: int, mean: Any = None, std: Any = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std): explicit > data config > identity (mean 0, std 1).

    Identity means the model takes raw pixels in [0, 1]; pass ``mean``/``std``
    (or attach a ``pretrained_cfg``) for a model trained on normalised inputs.
    """
    cfg = data_config(model)
    mean = mean if mean is not None else cfg.get("mean", 0.0)
    std = std if std is not None else cfg.get("std", 1.0)
    mean_t, std_t = _per_channel("mean", mean, channels), _per_channel("std", std, channels)
    if not all(s > 0 for s in std_t):
        raise ValueError(f"std values must be > 0; got {std_t}")
    return mean_t, std_t


def logits_of(output: Any) -> Tensor:
    """Logits from a model output: a tensor, or an object with ``.logits`` (HF style)."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(
            "the model must return logits of shape (batch, num_classes); "
            f"got {type(output).__name__} {tuple(getattr(logits, 'shape', ()))}"
        )
    return logits


def probe_num_classes(model: nn.Module, shape: tuple[int, int, int], device: torch.device) -> int:
    """Number of classes from one forward pass of a dummy image of ``shape`` (C, H, W).

    Doubles as a check that the model accepts that size: any failure is re-raised
    as a ValueError naming the size.
    """
    dummy = torch.zeros((1, *shape), device=device)
    try:
        with torch.no_grad():
            output = model(dummy)
    except Exception as exc:  # any model error means "wrong input size" for the caller
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"the model cannot take images of size (C, H, W) = {shape} ({reason}); "
            "pass image_size= (an int, (H, W) or (C, H, W)) that the model accepts"
        ) from exc
    logits = logits_of(output)
    if logits.shape[0] != 1 or logits.shape[1] < 1:
        raise ValueError(f"the model must return logits of shape (batch, num_classes); got {tuple(logits.shape)}")
    return int(logits.shape[1])
