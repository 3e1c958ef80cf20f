"""Datasets by spec string, transforms from a model's data config, few-shot and calibration splits (METHOD.md §5).

Specs: ``fashion-mnist`` (Debian's files, or ``fashion-mnist:ROOT`` for a torchvision-layout root),
``imagefolder:PATH`` (class sub-folders; PATH/train and PATH/val are used when present),
``cifar10:PATH`` and ``cifar100:PATH`` (torchvision's layout). The test split never drives a choice.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
SPEC_HELP = "accepted: fashion-mnist[:ROOT], imagefolder:PATH, cifar10:PATH, cifar100:PATH"
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx(.gz) file: magic (2 zero bytes, dtype code, ndim), big-endian dims, then raw data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem,
                      root / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {stem}(.gz) not found under {root}; "
                            f"install Debian's dataset-fashion-mnist or pass fashion-mnist:ROOT")


class FashionMNIST(Dataset):
    """Fashion-MNIST from idx files, kept in memory as uint8 (60k train / 10k test, 28x28 gray)."""

    classes = FMNIST_CLASSES

    def __init__(self, root: Path = DEBIAN_FMNIST, train: bool = True, transform: Optional[Callable] = None):
        prefix = "train" if train else "t10k"
        self.images = torch.from_numpy(_read_idx(_find_idx(Path(root), f"{prefix}-images-idx3-ubyte")).copy())
        self.targets = torch.from_numpy(_read_idx(_find_idx(Path(root), f"{prefix}-labels-idx1-ubyte")).astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i].numpy(), mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[i])
