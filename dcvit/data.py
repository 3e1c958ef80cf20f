"""Datasets by spec string, transforms from a model's data config, few-shot and calibration splits (docs/method.md §5).

Specs: ``fashion-mnist`` (Debian's files, or ``fashion-mnist:ROOT`` for a torchvision-layout root),
``imagefolder:PATH`` (class sub-folders; PATH/train and PATH/val are used when present; a training folder
without class sub-folders is read as unlabeled images), ``folder:PATH`` (unlabeled images, for shots only),
``cifar10:PATH`` and ``cifar100:PATH`` (torchvision's layout). The test split never drives a choice.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

from . import checks
from .imagefolder import FlatImages, ImageFolder, is_flat
from .imagefolder import UnreadableImageError as UnreadableImageError  # re-exported: part of dcvit.data's API

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
SPEC_HELP = "accepted: fashion-mnist[:ROOT], imagefolder:PATH, folder:PATH, cifar10:PATH, cifar100:PATH"
KINDS = ("fashion-mnist", "imagefolder", "folder", "cifar10", "cifar100")
IDX_FILES = ("images-idx3-ubyte", "labels-idx1-ubyte")
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Read an idx(.gz) file of uint8 values: magic (2 zero bytes, dtype code 0x08, ndim), big-endian dims,
    then the data. `shape` is what Fashion-MNIST holds, -1 for the image count; anything else (an empty,
    truncated or foreign file) is a one-line ValueError naming the file."""
    accepted = "accepted: a Fashion-MNIST idx file (.gz or not) as in the Debian package dataset-fashion-mnist"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt .gz
        raise ValueError(f"Fashion-MNIST file {path} cannot be read ({err}); {accepted}") from None
    ndim = len(shape)
    if len(raw) < 4 + 4 * ndim or raw[:4] != bytes((0, 0, 8, ndim)):
        raise ValueError(
            f"Fashion-MNIST file {path} is not an idx file of {ndim}-d uint8 data ({len(raw)} bytes, "
            f"header {raw[:4].hex() or 'missing'}); {accepted}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if any(want not in (-1, got) for want, got in zip(shape, dims)) or dims[0] < 1:
        raise ValueError(
            f"Fashion-MNIST file {path} holds shape {dims}, expected ({', '.join(map(str, shape))}); {accepted}"
        )
    size = len(raw) - 4 - 4 * ndim
    if size != int(np.prod(dims)):
        raise ValueError(
            f"Fashion-MNIST file {path} is truncated or padded: {size} bytes of data for shape {dims}; {accepted}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (
        root / stem,
        root / f"{stem}.gz",
        root / "FashionMNIST" / "raw" / stem,
        root / "FashionMNIST" / "raw" / f"{stem}.gz",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root} nor {root / 'FashionMNIST' / 'raw'}; install the "
        f"Debian package dataset-fashion-mnist (files in {DEBIAN_FMNIST}) or put the four idx .gz files "
        f"(train-/t10k-images-idx3-ubyte.gz, train-/t10k-labels-idx1-ubyte.gz) in ROOT and pass fashion-mnist:ROOT"
    )


class FashionMNIST(Dataset):
    """Fashion-MNIST from idx files, kept in memory as uint8 (60k train / 10k test, 28x28 gray)."""

    classes = FMNIST_CLASSES

    def __init__(self, root: Path = DEBIAN_FMNIST, train: bool = True, transform: Callable | None = None):
        prefix = "train" if train else "t10k"
        images_file, labels_file = (_find_idx(Path(root), f"{prefix}-{kind}") for kind in IDX_FILES)
        self.images = torch.from_numpy(_read_idx(images_file, (-1, 28, 28)).copy())
        self.targets = torch.from_numpy(_read_idx(labels_file, (-1,)).astype(np.int64))
        if len(self.images) != len(self.targets) or int(self.targets.max()) >= len(FMNIST_CLASSES):
            raise ValueError(
                f"Fashion-MNIST files {images_file} and {labels_file} do not match: {len(self.images)} images, "
                f"{len(self.targets)} labels up to {int(self.targets.max())}; accepted: one label from 0 to 9 per image"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i].numpy(), mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[i])


# --- specs ------------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, Path | None]:
    """'fashion-mnist', 'fashion-mnist:ROOT', 'imagefolder:PATH', 'folder:PATH', 'cifar10:PATH', 'cifar100:PATH'."""
    kind, _, path = str(spec).partition(":")
    kind = kind.lower()
    if kind not in KINDS:
        raise ValueError(f"unknown dataset spec '{spec}'; {SPEC_HELP}")
    if kind != "fashion-mnist" and not path:
        raise ValueError(f"dataset spec '{spec}' needs a path ({kind}:PATH); {SPEC_HELP}")
    root = Path(path) if path else None
    if root is not None and not root.exists():
        raise FileNotFoundError(f"dataset path {root} does not exist (spec '{spec}')")
    if root is not None and not root.is_dir():  # a file (imagefolder:/etc/passwd), a FIFO, a device
        raise ValueError(f"dataset path {root} is not a folder (spec '{spec}'); {kind}:PATH takes a folder")
    return kind, root


def _imagefolder(root: Path, train: bool, transform):
    names = ("train",) if train else ("val", "test")
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if folder is None:
        if not train and (root / "train").is_dir():
            raise FileNotFoundError(f"{root} has train/ but no val/ or test/ folder for evaluation")
        folder = root  # a bare folder of class sub-folders serves both splits
    if train and is_flat(folder):  # images as users hold them: shots need no labels
        return FlatImages(folder, transform)
    try:
        return ImageFolder(folder, root, transform=transform)
    except OSError as err:  # no classes, an empty class, a folder we may not list
        raise FileNotFoundError(f"image folder {folder} has no usable class sub-folders with images ({err})") from None


def load_dataset(spec: str, train: bool = True, transform: Callable | None = None) -> Dataset:
    """A labelled dataset by spec; every dataset exposes `targets` (labels without loading images)."""
    kind, root = parse_spec(spec)
    if kind == "fashion-mnist":  # never downloads: a run must not reach the network nor litter ROOT
        return FashionMNIST(root or DEBIAN_FMNIST, train=train, transform=transform)
    if kind == "imagefolder":
        return _imagefolder(root, train, transform)
    if kind == "folder":
        if not train:
            raise ValueError(
                f"'{spec}' holds unlabeled images, for shots only; evaluation needs labels: imagefolder:PATH with "
                f"class sub-folders"
            )
        return FlatImages(root, transform)
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    try:
        return cls(str(root), train=train, transform=transform, download=False)
    except RuntimeError as err:
        raise FileNotFoundError(f"{kind} files not found under {root} ({err})") from None


# --- transforms from the model's data config --------------------------------------------------
def data_config(model: torch.nn.Module) -> dict:
    from timm.data import resolve_data_config

    from .macs import default_input_size

    cfg = resolve_data_config(model=model)
    cfg["input_size"] = default_input_size(model)
    return cfg


class _ToMode:
    """Convert PIL images to the model's channel count (gray data for an RGB model and vice versa)."""

    def __init__(self, channels: int):
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)


def eval_transform(model: torch.nn.Module) -> Callable:
    from timm.data import create_transform
    from torchvision import transforms

    cfg = data_config(model)
    return transforms.Compose([_ToMode(cfg["input_size"][0]), create_transform(**cfg, is_training=False)])


# The reference policy is rand-m9-mstd0.5-inc1. With magnitude noise a level can reach 10, where timm's
# increasing posterize keeps 0 bits, which Pillow >= 11 rejects; capping the level at 9 (mmax9) avoids that.
DEFAULT_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1-mmax9"


def train_transform(
    model: torch.nn.Module, auto_augment: str | None = DEFAULT_AUTO_AUGMENT, scale=(0.08, 1.0), hflip: float = 0.5
) -> Callable:
    """RandomResizedCrop + flip + RandAugment (the reference mimicking augmentation), timm's implementation."""
    from timm.data import create_transform
    from torchvision import transforms

    cfg = data_config(model)
    cfg.pop("crop_pct", None), cfg.pop("crop_mode", None)
    aug = create_transform(
        **cfg,
        is_training=True,
        auto_augment=auto_augment,
        scale=scale,
        hflip=hflip,
        vflip=0.0,
        color_jitter=None,
        re_prob=0.0,
    )
    return transforms.Compose([_ToMode(cfg["input_size"][0]), aug])


# --- splits (docs/method.md §5) --------------------------------------------------------------------
def targets_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return torch.as_tensor(dataset.targets)


def dataset_classes(dataset: Dataset) -> int:
    """Number of classes a labelled dataset has: its `classes` list, else the largest label + 1."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    targets = targets_of(dataset)
    return int(targets.max()) + 1 if len(targets) else 0


# Training images held out for cascade calibration (never shots): one value, so compression runs and cascade
# studies leave out the same images by default.
CALIBRATION_SIZE = 5000


def calibration_indices(num_images: int, size: int, seed: int = 0) -> list[int]:
    """A seeded held-out part of the training set (for cascade calibration); never used for compression."""
    size = checks.integer("calibration_size", size, 1, num_images - 1, " (the training images but one)")
    seed = checks.seed("seed", seed)
    gen = torch.Generator().manual_seed(10_007 + seed)
    return sorted(torch.randperm(num_images, generator=gen)[:size].tolist())


def few_shot_indices(
    targets: Sequence[int] | torch.Tensor, shots: int, seed: int = 0, exclude: Sequence[int] = ()
) -> list[int]:
    """The reference sampling: under 1000 shots draw a random class, then a random unused image of it,
    `shots` times; from 1000 shots on, an equal number per class (remainder to random classes)."""
    targets = torch.as_tensor(targets)
    available = torch.ones(len(targets), dtype=torch.bool)
    available[torch.as_tensor(list(exclude), dtype=torch.long)] = False
    shots = checks.integer("shots", shots, 1, int(available.sum()), " (the images available)")
    seed = checks.seed("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    pools = {int(c): (torch.nonzero(available & (targets == c)).flatten()) for c in targets.unique()}
    pools = {c: p[torch.randperm(len(p), generator=gen)].tolist() for c, p in pools.items() if len(p)}
    classes = sorted(pools)
    if shots >= 1000:
        per_class, rest = divmod(shots, len(classes))
        draws = [c for c in classes for _ in range(per_class)]
        draws += [classes[i] for i in torch.randperm(len(classes), generator=gen)[:rest].tolist()]
    else:
        draws = [classes[i] for i in torch.randint(len(classes), (shots,), generator=gen).tolist()]
    chosen = []
    for c in draws:
        if not pools[c]:  # that class ran out: take any class that still has images
            c = next(k for k in classes if pools[k])
        chosen.append(pools[c].pop())
    return chosen


def few_shot_subset(spec: str, shots: int, seed: int = 0, calibration_size: int | None = 0) -> Subset:
    """`shots` training images (PIL, no transform; used without labels), disjoint from the calibration split.
    calibration_size None: CALIBRATION_SIZE where the set has room for it besides the shots, else none."""
    shots, seed = checks.integer("shots", shots, 1), checks.seed("seed", seed)  # before any file is read
    calibration_size = checks.optional_integer("calibration_size", calibration_size, 0)
    train = load_dataset(spec, train=True)
    if calibration_size is None:
        calibration_size = auto_calibration(len(train), shots, spec)
    return Subset(
        train, few_shot_indices(targets_of(train), shots, seed, exclude=_calibration(train, calibration_size, seed))
    )


def auto_calibration(images: int, shots: int, spec: str) -> int:
    """The default held-out split: CALIBRATION_SIZE, or none for a set too small to spare it (a folder of a few
    hundred images is few-shot data, not a cascade's calibration source), said in a log line."""
    if images >= CALIBRATION_SIZE + shots:
        return CALIBRATION_SIZE
    logging.getLogger("dcvit").info(
        f"{spec}: {images} training images, fewer than {CALIBRATION_SIZE} + {shots} shots: no calibration split "
        f"held out (pass a calibration size to hold one out)"
    )
    return 0


def as_shots(data: Dataset | torch.Tensor | Sequence) -> Dataset:
    """Few-shot data as `dcvit.compress` takes it: a dataset of (image, label) pairs, an N x C x H x W tensor, or a
    list of C x H x W tensors or PIL images; labels are never used, so bare images get 0."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise ValueError(f"a tensor of shots must be N x C x H x W; got shape {tuple(data.shape)}")
        return TensorDataset(data, torch.zeros(len(data), dtype=torch.long))
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, (torch.Tensor, Image.Image)) for x in data):
        shapes = {tuple(x.shape) for x in data if isinstance(x, torch.Tensor)}
        if len(shapes) > 1 or any(len(shape) != 3 for shape in shapes):
            raise ValueError(f"a list of shots must hold C x H x W tensors of one shape; got {sorted(shapes)[:3]}")
        return _Unlabeled(list(data))
    return data


class _Unlabeled(Dataset):
    def __init__(self, images: list):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], 0


def _calibration(train: Dataset, size: int, seed: int) -> list[int]:
    return calibration_indices(len(train), size, seed) if size else []


def unlabeled_subset(spec: str, images: int, seed: int = 0, calibration_size: int = 0, shots: int = 0) -> Subset:
    """`images` more training images (PIL, used without labels) for refining savers (docs/method.md §9),
    disjoint from the calibration split and from `few_shot_subset(spec, shots, seed, calibration_size)`
    (pass the shots the members were compressed with; 0 excludes none): the thresholds are then calibrated on
    images no member was fitted to."""
    images, seed = checks.integer("images", images, 1), checks.seed("seed", seed)
    calibration_size, shots = checks.integer("calibration_size", calibration_size, 0), checks.integer("shots", shots, 0)
    train = load_dataset(spec, train=True)
    held_out = _calibration(train, calibration_size, seed)
    if shots:  # the shots few_shot_subset draws with these arguments
        held_out = held_out + few_shot_indices(targets_of(train), shots, seed, exclude=held_out)
    if not isinstance(images, int) or not 1 <= images <= len(train) - len(held_out):
        raise ValueError(
            f"refinement images must be an integer between 1 and {len(train) - len(held_out)} (the training "
            f"images outside the calibration split and the shots); got {images}"
        )
    # another seed than the shots' draw, so the first images are not the shots' neighbours in that order
    return Subset(train, few_shot_indices(targets_of(train), images, seed + 1, exclude=held_out))
