"""Smoke-mode helpers shared by the recipes: a tiny random ViT, a generated ImageFolder, tiny settings.

`--smoke` runs a recipe's whole wiring in seconds on CPU, without the network: the model is random-init
(pretrained weights are never requested) and the images are random PNGs written to a temporary folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dcvit
from dcvit.config import CompressConfig

SHOTS = 8                   # few-shot images taken from the generated training split
CALIBRATION_SIZE = 8        # held-out training images for cascade calibration
SPEED_IMAGES = 16
SPEED_BATCHES = (8, 1)


def setup() -> None:
    """One CPU thread: tiny models are overhead-bound, and the machine may be busy."""
    torch.set_num_threads(1)


def tiny_model(depth: int = 4, num_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    """A random-init ViT on 32x32 inputs; made with dcvit.create_model so its data config matches its size."""
    torch.manual_seed(seed)
    return dcvit.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=depth,
                              num_heads=2, num_classes=num_classes).eval()


def fake_imagefolder(root: str | Path, classes: int = 4, train_per_class: int = 12, val_per_class: int = 4,
                     size: int = 32, seed: int = 0) -> Path:
    """ROOT/{train,val}/class_k/*.png with random RGB images; returns ROOT (use it as imagefolder:ROOT)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def shrink(config: CompressConfig) -> CompressConfig:
    """The same recipe, with every loop cut to one or two steps and no progress bars."""
    return config.replace(epochs=1, trial_epochs=1, batch_size=8, synth_images=4, synth_iterations=2, progress=False)
