"""Adapter for Hugging Face transformers' ViTForImageClassification (transformers >= 5, an optional dependency).

An HF model returns an `ImageClassifierOutput`, not a tensor, and carries no timm `pretrained_cfg`; dcvit runs
models that map images to logits and reads their data config. So the adapter runs an HF model inside
`HFImageClassifier`, a thin module that shares its parameters, returns `.logits` and holds a data config derived
from the HF config (and from an image processor when one is given: `wrap(model, processor)`). `dcvit.plan`,
`compress`, `apply_plan` and `save` wrap a bare HF model themselves (Adapter.runnable).

Blocks are transformers 5's `ViTLayer`: x + dropout(attention(layernorm_before(x))), then
x + dropout(mlp(layernorm_after(x))) with `ViTMLP` = fc1 -> act -> fc2, so the generic surgery applies as is.
transformers imports only when an HF model or file is met: `import dcvit` never pays for it.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from torch import nn

from . import UnsupportedModelError, register_adapter
from .base import (
    FLAG,
    Adapter,
    MlpParts,
    Setting,
    check_keys,
    check_kwargs,
    choice,
    either,
    integer,
    listed,
    number,
)
from .mlps import keep_columns, keep_rows

SOURCE = "transformers"
INSTALL = "pip install 'dcvit[hf]' (transformers >= 5)"
# The ViTConfig fields that shape the network; a model file may set these and nothing else (no hub names, no
# remote code, no label tables: building stays offline and bounded). attn_implementation picks kernels only.
SIZE = either(integer(1, 1 << 16), listed(integer(1, 1 << 16), 2))
RATE = number(0.0, 1.0)
VIT_CONFIG: dict[str, Setting] = {
    "hidden_size": integer(1),
    "num_hidden_layers": integer(0, 1000),
    "num_attention_heads": integer(1, 1 << 12),
    "intermediate_size": integer(1),
    "hidden_act": choice("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu"),
    "hidden_dropout_prob": RATE,
    "attention_probs_dropout_prob": RATE,
    "initializer_range": number(0.0, 1.0),
    "layer_norm_eps": number(0.0, 1.0),
    "image_size": SIZE,
    "patch_size": SIZE,
    "num_channels": integer(1, 1 << 12),
    "qkv_bias": FLAG,
    "encoder_stride": integer(1, 1 << 16),
    "num_labels": integer(0, 1 << 20),
    "attn_implementation": choice("eager", "sdpa"),
}
# What HF's ViTImageProcessor uses by default (IMAGENET_STANDARD_MEAN/STD): the statistics when none are given.
NEUTRAL = 0.5
# PIL resampling codes an image processor records -> the interpolation names timm's transforms take.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_told: weakref.WeakSet = weakref.WeakSet()  # HF models already told about neutral statistics (once each)
log = logging.getLogger("dcvit")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UnsupportedModelError(f"this model needs Hugging Face transformers: {INSTALL}") from None
    return transformers


def _is_hf(model: nn.Module) -> bool:
    """An HF ViT classifier, decided without importing transformers for anything else."""
    if not type(model).__module__.startswith("transformers."):
        return False
    return isinstance(model, _transformers().ViTForImageClassification)


class HFImageClassifier(nn.Module):
    """An HF image classifier as dcvit runs it: forward(images) gives the logits tensor; parameters are the HF
    model's own (under `hf.`), so saving, exporting and editing see one network."""

    def __init__(self, hf: nn.Module, data_config: dict[str, Any]):
        super().__init__()
        self.hf = hf
        self.pretrained_cfg = data_config  # what dcvit.data and dcvit.save read (timm's name for it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=x).logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf.vit(pixel_values=x).last_hidden_state


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def data_config(config: Any, processor: Any = None) -> dict[str, Any]:
    """A timm-style data config from an HF config: its image size and channels; mean, std and interpolation from
    `processor` (an HF image processor) when given, else HF ViT's neutral 0.5 / 0.5 per channel."""
    channels = config.num_channels
    cfg = {"input_size": (channels, *_pair(config.image_size)), "crop_pct": 1.0, "interpolation": "bilinear"}
    if processor is None:
        return {**cfg, "mean": (NEUTRAL,) * channels, "std": (NEUTRAL,) * channels}
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    if len(mean) != channels:  # e.g. RGB statistics for a 1-channel model: the first channel's, repeated
        mean, std = mean[:1] * channels, std[:1] * channels
    resample = getattr(processor, "resample", None)
    cfg["interpolation"] = RESAMPLE.get(int(resample), "bilinear") if resample is not None else "bilinear"
    return {**cfg, "mean": mean, "std": std}


def wrap(model: nn.Module, processor: Any = None) -> HFImageClassifier:
    """`model` (a transformers ViTForImageClassification) as dcvit runs it, with `processor`'s statistics (its
    image processor, e.g. AutoImageProcessor.from_pretrained(name)) or, without one, neutral 0.5 / 0.5."""
    if isinstance(model, HFImageClassifier):
        return model
    if processor is None and model not in _told:
        _told.add(model)
        log.warning(
            "transformers model without an image processor: normalising with mean 0.5, std 0.5 per channel "
            "(ViTImageProcessor's default); pass dcvit.arch.hf_vit.wrap(model, processor) for a checkpoint's own"
        )
    return HFImageClassifier(model, data_config(model.config, processor))


def hf_of(model: nn.Module) -> nn.Module:
    return model.hf if isinstance(model, HFImageClassifier) else model


def config_spec(config: Any) -> dict[str, Any]:
    """The shaping fields of a ViTConfig as JSON (what build() needs to make the same network offline)."""
    kwargs = {key: getattr(config, key) for key in VIT_CONFIG if key not in ("attn_implementation",)}
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    attn = getattr(config, "_attn_implementation", None)
    if attn in ("eager", "sdpa"):
        kwargs["attn_implementation"] = attn
    return kwargs


@register_adapter
class HFViTAdapter(Adapter):
    name = "transformers-vit"
    family = "transformers ViT"
    attention_names = ("layernorm_before", "attention")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        hf = hf_of(model)
        if not _is_hf(hf):
            return False
        if not isinstance(getattr(hf.vit, "layers", None), nn.ModuleList):
            version = _transformers().__version__
            raise UnsupportedModelError(f"transformers {version}'s ViT layout is not supported; {INSTALL}")
        return True

    def runnable(self, model):
        return wrap(model)

    def _layers(self, model: nn.Module) -> nn.ModuleList:
        return hf_of(model).vit.layers

    def block_containers(self, model):
        layers = self._layers(model)
        return [(layers, i) for i in range(len(layers))]

    def block_paths(self, model):
        prefix = "hf." if isinstance(model, HFImageClassifier) else ""
        return [f"{prefix}vit.layers.{i}" for i in range(len(self._layers(model)))]

    def mlp_parts(self, block):
        return MlpParts(norm=block.layernorm_after, mlp=block.mlp, scale=nn.Identity(), drop_path=block.dropout)

    def features(self, model, x):
        return hf_of(model).vit(pixel_values=x).last_hidden_state  # after the final layernorm

    def head(self, model, tokens):
        return hf_of(model).classifier(tokens[:, 0])  # ViTForImageClassification: the class token's logits

    def tail_modules(self, model):
        hf = hf_of(model)
        return [hf.vit.layernorm, hf.classifier]

    def class_token_index(self, model):
        return 0

    def input_size(self, model):
        config = hf_of(model).config
        return (config.num_channels, *_pair(config.image_size))

    # --- heads: q, k and v rows of the kept heads, o_proj's matching columns (each head is independent) ---
    def attention_heads(self, block):
        attn = block.attention
        return attn.q_proj.out_features // attn.head_dim

    def keep_heads(self, block, heads):
        attn = block.attention
        rows = torch.cat([h * attn.head_dim + torch.arange(attn.head_dim) for h in heads]).to(attn.q_proj.weight.device)
        attn.q_proj, attn.k_proj, attn.v_proj = (keep_rows(p, rows) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        attn.o_proj = keep_columns(attn.o_proj, rows)
        attn.num_attention_heads = len(heads)  # forward reshapes by head_dim, so fewer heads need nothing else

    def head_projection(self, block):
        return block.attention.o_proj

    # --- save/load ---------------------------------------------------------------------------------
    def base_spec(self, model):
        hf = hf_of(model)
        return {"source": SOURCE, "class": type(hf).__name__, "kwargs": config_spec(hf.config)}

    @staticmethod
    def build(spec):
        check_keys("transformers base", spec, ("source", "class", "kwargs"))
        if spec.get("source") != SOURCE or spec.get("class") != "ViTForImageClassification":
            raise ValueError("transformers base must have source 'transformers' and class 'ViTForImageClassification'")
        kwargs = dict(check_kwargs("transformers ViTConfig", spec.get("kwargs"), VIT_CONFIG))
        transformers = _transformers()
        attn = kwargs.pop("attn_implementation", None)
        config = transformers.ViTConfig(**kwargs)
        if attn is not None:
            config._attn_implementation = attn
        hf = transformers.ViTForImageClassification(config)
        # load() restores the saved statistics over these; a spec without them gets HF's neutral ones
        return HFImageClassifier(hf, data_config(config))
