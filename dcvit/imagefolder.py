"""Image folders: class sub-folders of images (`imagefolder:PATH`) or a plain folder of unlabeled images (`folder:PATH`), read without hanging on what a folder holds.

torchvision's ImageFolder walks with os.walk(followlinks=True) and opens whatever has an image suffix, so a class
folder holding a link to its parent (`up -> ..`) makes it walk forever, and a FIFO named x.png blocks the read
forever. This reader lists class folders and images itself: it follows no link to a folder, takes a link to a
file only when it ends at a regular file inside the data root (PATH), and opens regular files only. What it
leaves out is counted in one warning. A file PIL cannot decode, or refuses as a decompression bomb, is a
one-line error naming it. The order of images and classes is torchvision's, so seeded draws stay the same.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


class UnreadableImageError(ValueError):
    """An image file PIL cannot decode (corrupt, empty, not an image, too large): a user error, in one line."""


class ImageFolder(Dataset):
    """(PIL RGB image, class index) pairs from `folder`/CLASS/**/IMAGE; `classes` and `targets` as torchvision's."""

    def __init__(self, folder: Path, root: Path, transform: Callable | None = None):
        self.transform = transform
        self.classes, self.samples, skipped = scan(Path(folder), Path(root))
        self.targets = [target for _, target in self.samples]
        if skipped:
            logging.getLogger("dcvit").warning(
                f"{folder}: left out {skipped} entries (links to folders, links out of {root}, FIFOs, devices): "
                f"only regular image files inside the data root are read"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        image = load_image(path)
        return (image if self.transform is None else self.transform(image)), target


class FlatImages(Dataset):
    """(PIL RGB image, 0) pairs from every regular image file under `folder` (`folder:PATH`): unlabeled few-shot
    images as users hold them, no class sub-folders needed. One class, so seeded draws still work."""

    classes = ("unlabeled",)

    def __init__(self, folder: Path, transform: Callable | None = None):
        self.transform = transform
        found, skipped = _images(str(folder), os.path.realpath(folder))
        if not found:
            raise FileNotFoundError(f"no regular image files under {folder} ({', '.join(IMG_EXTENSIONS)})")
        self.samples = [(path, 0) for path in found]
        self.targets = [0] * len(found)
        if skipped:
            logging.getLogger("dcvit").warning(f"{folder}: left out {skipped} entries (links to folders or out of it)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image = load_image(self.samples[i][0])
        return (image if self.transform is None else self.transform(image)), 0


def is_flat(folder: Path) -> bool:
    """Images directly in `folder` and no sub-folders: unlabeled images, not classes (an empty folder is neither)."""
    with os.scandir(folder) as entries:
        entries = list(entries)
    if any(e.is_dir(follow_symlinks=False) for e in entries):
        return False
    return any(e.name.lower().endswith(IMG_EXTENSIONS) for e in entries)


def scan(folder: Path, root: Path) -> tuple[list[str], list[tuple[str, int]], int]:
    """Class names, (path, class index) samples, and how many entries were left out. Every class needs an image."""
    inside = os.path.realpath(root)
    with os.scandir(folder) as entries:
        classes = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    if not classes:
        raise FileNotFoundError(f"no class sub-folders in {folder} (links to folders are not followed)")
    samples, skipped = [], 0
    for index, name in enumerate(classes):
        found, left_out = _images(os.path.join(folder, name), inside)
        if not found:
            raise FileNotFoundError(f"class folder {name} has no regular image files ({', '.join(IMG_EXTENSIONS)})")
        samples += [(path, index) for path in found]
        skipped += left_out
    return classes, samples, skipped


def _images(class_dir: str, inside: str) -> tuple[list[str], int]:
    """Image paths under class_dir in torchvision's order (folders sorted by path, then names), and the count of
    entries left out. os.walk without followlinks lists a link to a folder but never enters it."""
    found, skipped = [], 0
    for top, dirs, files in sorted(os.walk(class_dir)):
        skipped += sum(os.path.islink(os.path.join(top, d)) for d in dirs)
        for name in sorted(files):
            path = os.path.join(top, name)
            if not name.lower().endswith(IMG_EXTENSIONS):
                continue
            if _regular_inside(path, inside):
                found.append(path)
            else:
                skipped += 1
    return found, skipped


def _regular_inside(path: str, inside: str) -> bool:
    """A regular file, or a link ending at a regular file under `inside` (the data root, links resolved)."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            target = os.path.realpath(path)
            if os.path.commonpath([target, inside]) != inside:
                return False
            mode = os.stat(target).st_mode
    except (OSError, ValueError):  # gone, unreadable, or a link loop
        return False
    return stat.S_ISREG(mode)


def load_image(path: str) -> Image.Image:
    """The image at `path` as RGB (torchvision's default loader), or a one-line UnreadableImageError naming it.

    Opened without blocking and checked to be a regular file first: the file may have changed since the scan.
    UnidentifiedImageError is an OSError; truncated data raises OSError or SyntaxError; an image over PIL's
    pixel limit raises DecompressionBombError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError("not a regular file")
            with Image.open(f) as image:
                return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UnreadableImageError(f"cannot read image {path}: {reason}") from None
