"""The embedded default: Fashion-MNIST models trained by tools/train_teacher.py and shipped in weights/.

Importing dcvit registers them in timm, so `timm.create_model("fmnist_vit12", pretrained=True)`
loads the shipped safetensors file with no network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from ..data import FMNIST_CLASSES

# Statistics of the Fashion-MNIST training images (pixels in [0, 1]).
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
WEIGHTS_DIR = Path(__file__).parent / "weights"

# Architecture of each shipped model; tools/train_teacher.py trains them by these names.
VIT_ARGS = {
    "fmnist_vit12": dict(embed_dim=96, depth=12, num_heads=3),
    "fmnist_vit_tiny": dict(embed_dim=64, depth=5, num_heads=2),
}


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def _cfg(name: str) -> dict:
    return {
        "file": str(weights_path(name)),
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": FMNIST_MEAN,
        "std": FMNIST_STD,
        "license": "mit",
        "label_names": FMNIST_CLASSES,  # the class order it was trained in: image folders are matched by name
    }


default_cfgs = generate_default_cfgs(
    {
        "fmnist_vit12.fmnist": _cfg("fmnist_vit12"),
        "fmnist_vit_tiny.fmnist": _cfg("fmnist_vit_tiny"),
        "fmnist_cnn.fmnist": {**_cfg("fmnist_cnn"), "first_conv": "features.0", "classifier": "head"},
    }
)


class FmnistCNN(nn.Module):
    """A small CNN companion: three conv-BN-ReLU stages, global pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths=(16, 32, 64), **_: object):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.features = nn.Sequential(*layers)
        self.num_classes = num_classes
        self.num_features = prev
        self.head = nn.Linear(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _check_weights(name: str, pretrained: bool) -> None:
    if pretrained and not weights_path(name).is_file():
        raise FileNotFoundError(
            f"shipped weights for {name} are missing ({weights_path(name)}); "
            f"train them with tools/train_teacher.py --model {name}"
        )


def _create_vit(name: str, pretrained: bool, **kwargs) -> VisionTransformer:
    _check_weights(name, pretrained)
    args = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, mlp_ratio=4.0, **VIT_ARGS[name])
    args.update(kwargs)
    return build_model_with_cfg(VisionTransformer, name, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **args)


@register_model
def fmnist_vit12(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The shipped teacher: a 12-block ViT (dim 96, 3 heads, patch 7) for 28x28 gray images."""
    return _create_vit("fmnist_vit12", pretrained, **kwargs)


@register_model
def fmnist_vit_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A little companion ViT (dim 64, 5 blocks), under 25% of the teacher's MACs."""
    return _create_vit("fmnist_vit_tiny", pretrained, **kwargs)


@register_model
def fmnist_cnn(pretrained: bool = False, **kwargs) -> FmnistCNN:
    """A little companion CNN (about 2 M MACs)."""
    _check_weights("fmnist_cnn", pretrained)
    return build_model_with_cfg(FmnistCNN, "fmnist_cnn", pretrained, **kwargs)
