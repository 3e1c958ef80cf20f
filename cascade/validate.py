"""One rule set for the preprocessing that files carry (cascade.json here, dcvit's spec.json data_config).

Both files may come from anyone, and their preprocessing drives a resize before the model sees a pixel: an
input_size of 65536 px or a crop_pct of 1e-5 asks the resize for gigabytes. So every value is bounded by what
the model itself takes, its input size (C, H, W): the same channels, the same size for a model built for one
size, and a resize (input side / crop_pct, as timm computes it) at most RESIZE_FACTOR times the model's side.
Without a model (cascade.json before its members are loaded), only the absolute bounds apply.

Torch-free on purpose: cascade/ depends on torch only, and dcvit's model files use the same checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# timm's data config keys that shape an input (input_size (C, H, W), normalisation, resize).
KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's str_to_interp_mode
CROP_MODES = ("center", "squash", "border")  # timm's transforms_imagenet_eval
MAX_CHANNELS = 64
MAX_SIDE = 1024  # the largest input of timm's pretrained models (SAM); 3 x 1024 x 1024 floats are 12 MB
RESIZE_FACTOR = 4  # timm's crop_pct spans 0.875-1.15: a resize 4x the crop is far past any real one
MEAN = (0.0, 1.0)  # pixels are in [0, 1] when normalised (ToTensor), and so are their means
STD = (1e-3, 10.0)  # timm's span 0.14-1.0; a tiny std multiplies pixels towards overflow


def preprocessing_problem(
    cfg: Mapping[str, Any], model_size: Sequence[int] | None = None, *, fixed: bool = True, required: bool = True
) -> str | None:
    """What is wrong with `cfg` (a preprocessing dict read from a file), or None.

    model_size: the (C, H, W) the model takes; fixed: whether it takes that size only (a ViT) or any size
    near it (a CNN: sides within RESIZE_FACTOR). required: whether input_size must be there. The answer
    is one line naming the field, its value and what is accepted, for the caller to prefix with the file.
    """
    unknown = sorted(set(cfg) - set(KEYS), key=str)
    if unknown:
        return f"field {_short(unknown[0])} is unknown (accepted: {', '.join(KEYS)})"
    if "input_size" in cfg or required:
        problem = _input_size(cfg.get("input_size"), model_size, fixed)
        if problem:
            return problem
    size = list(cfg.get("input_size") or model_size or ())
    checks = (
        (_normalisation(cfg, size[0] if size else None)),
        (_crop_pct(cfg.get("crop_pct"), size, model_size) if "crop_pct" in cfg else None),
        (_choice(cfg, "interpolation", INTERPOLATIONS)),
        (_choice(cfg, "crop_mode", CROP_MODES)),
    )
    return next((c for c in checks if c), None)


def _input_size(value: Any, model_size: Sequence[int] | None, fixed: bool) -> str | None:
    what = f"3 positive integers (C, H, W), C <= {MAX_CHANNELS} and H, W <= {MAX_SIDE}"
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(x) and x > 0 for x in value)):
        return f"'input_size' must be {what}, not {_short(value)}"
    if value[0] > MAX_CHANNELS or max(value[1:]) > MAX_SIDE:
        return f"'input_size' must be {what}, not {_short(value)}"
    if model_size is None:
        return None
    value, model = list(value), [int(x) for x in model_size]
    if value[0] != model[0]:
        return f"'input_size' {_short(value)} has {value[0]} channel(s), but the model takes {model[0]} ({model})"
    if fixed and value[1:] != model[1:]:
        return f"'input_size' {_short(value)} is not the size the model was built for; accepted: {model}"
    if not fixed and any(not 0 < v <= RESIZE_FACTOR * m for v, m in zip(value[1:], model[1:])):
        return (
            f"'input_size' {_short(value)} is more than {RESIZE_FACTOR}x the model's input size {model}; accepted: "
            f"sides up to {[RESIZE_FACTOR * m for m in model[1:]]}"
        )
    return None


def _normalisation(cfg: Mapping[str, Any], channels: int | None) -> str | None:
    for key, (lo, hi) in (("mean", MEAN), ("std", STD)):
        if key not in cfg:
            continue
        value = cfg[key]
        count = f"{channels} number(s), one per channel," if channels else "one number per channel,"
        ok = isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_CHANNELS
        ok = ok and (channels is None or len(value) == channels) and all(_number(x) and lo <= x <= hi for x in value)
        if not ok:
            return f"'{key}' must be {count} each in [{lo:g}, {hi:g}], not {_short(value)}"
    return None


def _crop_pct(value: Any, size: Sequence[int], model_size: Sequence[int] | None) -> str | None:
    lo, hi = 1 / RESIZE_FACTOR, RESIZE_FACTOR
    if not (_number(value) and lo <= value <= hi):
        return f"'crop_pct' must be a number in [{lo:g}, {hi:g}], not {_short(value)}"
    if not size:
        return None
    resize = math.floor(max(size[1:]) / value)  # the resize before the crop, as timm computes it
    limit = RESIZE_FACTOR * max((model_size or size)[1:])
    if resize > limit:
        return (
            f"'crop_pct' {value:g} resizes to {resize} px before the crop, more than {RESIZE_FACTOR}x the model's "
            f"input side; accepted: a crop_pct giving at most {limit} px"
        )
    return None


def _choice(cfg: Mapping[str, Any], key: str, accepted: tuple[str, ...]) -> str | None:
    if key in cfg and cfg[key] not in accepted:
        return f"'{key}' must be one of {', '.join(accepted)}, not {_short(cfg[key])}"
    return None


def _is_int(value: Any) -> bool:
    return type(value) is int  # json's true/false are bools, which are ints to Python


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."
