"""What the adapters of Hugging Face transformers' vision transformers share (transformers >= 5, optional).

An HF model returns a `ModelOutput`, not a tensor, and carries no timm `pretrained_cfg`; dcvit runs models that
map images to a tensor and reads their data config. So an adapter runs an HF model inside `HFImageClassifier`, a
thin module that shares its parameters, returns `.logits` (a headless `...Model`: its `.pooler_output`) and holds a
data config from the HF config and an image processor's statistics: the one given to `wrap(model, processor)`,
else the one cached for the checkpoint the model was loaded from, else the defaults of the family's image
processor class (a warning says so). `dcvit.plan`, `compress`, `apply_plan` and `save` wrap a bare model
themselves (Adapter.runnable). A model file records the HF class and its config's shaping fields (a whitelist:
no hub names, no remote code), so `dcvit.load` rebuilds it offline.

transformers imports only when an HF model or file is met: `import dcvit` never pays for it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from . import UnsupportedModelError
from .base import FLAG, Adapter, Setting, check_keys, check_kwargs, choice, either, integer, listed, number
from .mlps import keep_columns, keep_rows

SOURCE = "transformers"
INSTALL = "pip install 'dcvit[hf]' (transformers >= 5)"
SUPPORTED: list[str] = []  # every supported transformers class, filled in as the adapters are defined
# What a model file may set in any family's config; each family adds its own fields.
SIZE = either(integer(1, 1 << 16), listed(integer(1, 1 << 16), 2))
RATE = number(0.0, 1.0)
ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu")
ACTIVATION = choice(*ACTIVATIONS)
COMMON_CONFIG: dict[str, Setting] = {
    "hidden_act": ACTIVATION,
    "hidden_dropout_prob": RATE,
    "attention_probs_dropout_prob": RATE,
    "initializer_range": number(0.0, 1.0),
    "layer_norm_eps": number(0.0, 1.0),
    "image_size": SIZE,
    "patch_size": SIZE,
    "num_channels": integer(1, 1 << 12),
    "qkv_bias": FLAG,
    "num_labels": integer(0, 1 << 20),
    "attn_implementation": choice("eager", "sdpa"),  # picks kernels only
}
# PIL resampling codes an image processor records -> the interpolation names timm's transforms take.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
log = logging.getLogger("dcvit")
# The data config found for each HF model wrapped without a processor: looked up (and said) once per model.
_found: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Statistics:
    """How an image processor prepares images, in timm's data-config terms."""

    processor: str  # where they come from, for messages
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0


# The defaults of the image processor classes AutoImageProcessor maps the families to, for models that come
# with no processor (random init, or a checkpoint whose processor is not cached). Copied from their class
# attributes (importing those classes costs seconds); tests/test_arch_hf.py checks them against transformers.
VIT_PROCESSOR = Statistics("ViTImageProcessor", (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
DEIT_PROCESSOR = Statistics("DeiTImageProcessor", (0.5,) * 3, (0.5,) * 3, "bicubic", 224 / 256)
BIT_PROCESSOR = Statistics(  # DINOv2's: resize the short side to 224, centre crop 224, OpenAI CLIP statistics
    "BitImageProcessor",
    (0.48145466, 0.4578275, 0.40821073),
    (0.26862954, 0.26130258, 0.27577711),
    "bicubic",
    1.0,
)


def transformers_module():
    try:
        import transformers
    except ImportError:
        raise UnsupportedModelError(f"this model needs Hugging Face transformers: {INSTALL}") from None
    return transformers


def from_transformers(model: nn.Module) -> bool:
    """Whether transformers defined `model`'s class or one it derives from (decided without importing it)."""
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


class HFImageClassifier(nn.Module):
    """An HF model as dcvit runs it: forward(images) gives the logits tensor (a headless model: its pooled
    output); parameters are the HF model's own (under `hf.`), so saving, exporting and editing see one network."""

    def __init__(self, hf: nn.Module, data_config: dict[str, Any]):
        super().__init__()
        self.hf = hf
        self.pretrained_cfg = data_config  # what dcvit.data and dcvit.save read (timm's name for it)
        self.headless = hf.base_model is hf  # a bare ...Model: no classifier, no .logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.hf(pixel_values=x)
        return out.pooler_output if self.headless else out.logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf.base_model(pixel_values=x).last_hidden_state


def hf_of(model: nn.Module) -> nn.Module:
    return model.hf if isinstance(model, HFImageClassifier) else model


def pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def statistics_of(processor: Any, where: str) -> Statistics:
    """The statistics of an HF image processor (resample as a PIL code or a torchvision mode)."""
    resample = getattr(processor, "resample", None)
    resample = getattr(resample, "value", resample)
    interpolation = RESAMPLE.get(resample, "bilinear") if isinstance(resample, int) else str(resample or "bilinear")
    crop_pct = 1.0
    size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and size and crop:
        resized = _get(size, "height") or _get(size, "shortest_edge")
        crop_pct = _get(crop, "height") / resized if resized and _get(crop, "height") else 1.0
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    return Statistics(where, mean, std, interpolation if interpolation in RESAMPLE.values() else "bilinear", crop_pct)


def _get(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)


def data_config(config: Any, stats: Statistics, architecture: str) -> dict[str, Any]:
    """A timm-style data config: the HF config's image size and channels, `stats`' normalisation and crop."""
    channels = config.num_channels
    mean, std = stats.mean, stats.std
    if len(mean) != channels:  # e.g. RGB statistics for a 1-channel model: the first channel's, repeated
        mean, std = mean[:1] * channels, std[:1] * channels
    return {
        "architecture": architecture,
        "input_size": (channels, *pair(config.image_size)),
        "crop_pct": stats.crop_pct,
        "interpolation": stats.interpolation,
        "mean": mean,
        "std": std,
    }


def cached_processor(config: Any) -> Any:
    """The image processor of the checkpoint (hub name or folder) the model was loaded from, if it is on this
    machine already (never downloaded); None otherwise."""
    name = getattr(config, "_name_or_path", "") or ""
    if not name:
        return None
    try:
        return transformers_module().AutoImageProcessor.from_pretrained(name, local_files_only=True)
    except Exception:  # not cached, or no processor there: the family's defaults serve, and a warning says so
        return None


def wrap(model: nn.Module, processor: Any = None) -> HFImageClassifier:
    """`model` (a supported transformers model) as dcvit runs it, with `processor`'s statistics (its image
    processor, e.g. AutoImageProcessor.from_pretrained(name)); without one, those of the processor cached for
    the checkpoint it was loaded from, else the defaults of its family's image processor class (said once).
    A model dcvit wrapped already (a compressed or loaded one) is returned as it is."""
    if isinstance(model, HFImageClassifier):
        return model
    from . import get_adapter

    adapter = get_adapter(model)
    if not isinstance(adapter, HFAdapter):
        raise UnsupportedModelError(f"{type(model).__name__} is not a supported transformers model")
    name = type(model).__name__
    if processor is not None:
        cfg = data_config(model.config, statistics_of(processor, type(processor).__name__), name)
        _say(name, type(processor).__name__, cfg, default=False)
    elif model in _found:
        cfg = _found[model]
    else:
        cached = cached_processor(model.config)
        where = f"the image processor cached for {model.config._name_or_path}"
        stats = adapter.processor if cached is None else statistics_of(cached, where)
        cfg = _found[model] = data_config(model.config, stats, name)
        _say(name, stats.processor, cfg, default=cached is None)
    return HFImageClassifier(model, dict(cfg))


def _say(name: str, source: str, cfg: dict[str, Any], default: bool) -> None:
    mean, std = (f"{v[0]:g}" if len(set(v)) == 1 else str(v) for v in (cfg["mean"], cfg["std"]))
    what = f"mean {mean}, std {std}, {cfg['interpolation']}, crop {cfg['crop_pct']:g}"
    if default:
        log.warning(
            f"transformers {name} without an image processor: normalising as {source} does by default ({what}); "
            "pass dcvit.arch.hf_common.wrap(model, AutoImageProcessor.from_pretrained(name)) for a checkpoint's own"
        )
    else:
        log.info(f"transformers {name}: normalising as {source} says ({what})")


def config_spec(config: Any, settings: Mapping[str, Setting]) -> dict[str, Any]:
    """The shaping fields of an HF config as JSON (what build() needs to make the same network offline)."""
    kwargs = {key: getattr(config, key) for key in settings if key != "attn_implementation"}
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    attn = getattr(config, "_attn_implementation", None)
    if attn in ("eager", "sdpa"):
        kwargs["attn_implementation"] = attn
    return kwargs


@torch.no_grad()
def keep_projection_heads(attn: nn.Module, heads: list[int]) -> None:
    """Keep `heads` of an HF attention with q_proj, k_proj, v_proj and o_proj, in place: the kept heads' rows of
    q, k and v and o_proj's matching columns (each head is computed on its own and o_proj sums them)."""
    rows = torch.cat([h * attn.head_dim + torch.arange(attn.head_dim) for h in heads]).to(attn.q_proj.weight.device)
    attn.q_proj, attn.k_proj, attn.v_proj = (keep_rows(p, rows) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    attn.o_proj = keep_columns(attn.o_proj, rows)
    attn.num_attention_heads = len(heads)  # forward reshapes by head_dim, so fewer heads need nothing else


class HFAdapter(Adapter):
    """Adapter base for a transformers family: its classes (heads and the bare backbone), config class, the
    config fields a model file may set, and its image processor's defaults. Subclasses list the blocks, say
    what a block's MLP side is, and name the attention (an HF attention with q/k/v/o projections by default)."""

    classes: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[str] = ""
    settings: ClassVar[Mapping[str, Setting]] = {}
    processor: ClassVar[Statistics] = VIT_PROCESSOR

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        SUPPORTED.extend(c for c in cls.classes if c not in SUPPORTED)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        hf = hf_of(model)
        if not from_transformers(hf):
            return False
        transformers = transformers_module()
        if not isinstance(hf, tuple(getattr(transformers, name) for name in cls.classes)):
            return False
        try:
            cls().block_containers(hf)
        except AttributeError:
            raise UnsupportedModelError(
                f"transformers {transformers.__version__}'s {type(hf).__name__} layout is not supported; {INSTALL}"
            ) from None
        if hf.base_model is hf and getattr(hf, "pooler", True) is None:
            raise UnsupportedModelError(
                f"transformers {type(hf).__name__} built without its pooling layer has no output to compress for; "
                "build it with add_pooling_layer=True (the default) or use a ...ForImageClassification class"
            )
        return True

    @classmethod
    def refusal(cls, model: nn.Module) -> str | None:
        hf = hf_of(model)
        if not from_transformers(hf):
            return None
        supported = ", ".join(SUPPORTED)
        return f"transformers {type(hf).__name__} is not supported; supported transformers classes: {supported}"

    def runnable(self, model):
        return wrap(model)

    def blocks_of(self, base: nn.Module) -> list[tuple[nn.Module, int]]:
        """(container, index) of each block of the backbone `base` (hf.base_model)."""
        raise NotImplementedError

    def block_containers(self, model):
        return self.blocks_of(hf_of(model).base_model)

    def block_paths(self, model):
        names = {id(m): name for name, m in model.named_modules()}
        return [names[id(b)] for b in self.blocks(model)]

    def features(self, model, x):
        return hf_of(model).base_model(pixel_values=x).last_hidden_state  # after the final layernorm

    def tail_modules(self, model):
        hf = hf_of(model)
        base = hf.base_model
        pooler = getattr(base, "pooler", None)
        heads = [] if hf is base else [m for m in hf.children() if m is not base]
        return [base.layernorm, *([pooler] if pooler is not None else []), *heads]

    def class_token_index(self, model):
        return 0

    def input_size(self, model):
        config = hf_of(model).config
        return (config.num_channels, *pair(config.image_size))

    # --- heads ---------------------------------------------------------------------------------
    def attention_heads(self, block):
        attn = block.attention
        return attn.q_proj.out_features // attn.head_dim

    def keep_heads(self, block, heads):
        keep_projection_heads(block.attention, heads)

    def head_projection(self, block):
        return block.attention.o_proj

    # --- save/load -----------------------------------------------------------------------------
    def base_spec(self, model):
        hf = hf_of(model)
        transformers = transformers_module()
        name = next(n for n in self.classes if isinstance(hf, getattr(transformers, n)))
        return {"source": SOURCE, "class": name, "kwargs": config_spec(hf.config, self.settings)}

    @classmethod
    def check_config(cls, kwargs: dict[str, Any]) -> None:
        """A one-line ValueError for settings that pass the whitelist but cannot make this family's network."""

    @classmethod
    def build(cls, spec):
        what = f"{cls.family} base"
        check_keys(what, spec, ("source", "class", "kwargs"))
        if spec.get("source") != SOURCE or spec.get("class") not in cls.classes:
            raise ValueError(f"{what} must have source '{SOURCE}' and a class among {', '.join(cls.classes)}")
        kwargs = dict(check_kwargs(f"transformers {cls.config_class}", spec.get("kwargs"), cls.settings))
        cls.check_config(kwargs)
        transformers = transformers_module()
        attn = kwargs.pop("attn_implementation", None)
        config = getattr(transformers, cls.config_class)(**kwargs)
        if attn is not None:
            config._attn_implementation = attn
        hf = getattr(transformers, spec["class"])(config)
        # load() restores the saved statistics over these
        return HFImageClassifier(hf, data_config(config, cls.processor, spec["class"]))


def divisible(kwargs: dict[str, Any], width: str, heads: str, family: str) -> None:
    """Refuse a width its heads do not divide (the attention would fail on its first input)."""
    if width in kwargs and heads in kwargs and kwargs[width] % kwargs[heads]:
        raise ValueError(f"{family} {width}={kwargs[width]} must be a multiple of {heads}={kwargs[heads]}")
