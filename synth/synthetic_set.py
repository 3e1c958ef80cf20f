"""The synthetic metric set: images, target labels, losses; save/load and PNG grids.

Produced by :func:`synth.synthesize` (docs/method.md §4, Eq. 4-5).

On-disk format (no pickle anywhere): ``save(path)`` writes a *directory*::

    path/tensors.safetensors   images (float32, normalised space), labels (int64),
                               losses (float32, per-image CE)
    path/meta.json             mean, std, total_loss, config, format version

Each file is written to a temporary file in the same directory and moved into
place with ``os.replace``, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1
# Tiles smaller than this (e.g. 28x28 Fashion-MNIST) are upsampled with nearest
# neighbour so a person can actually see them in the grid.
MIN_TILE_PX = 84
GRID_PADDING_PX = 2


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``target``, then rename it over.

    The file gets the permissions a plain ``open`` would give (0o666 minus the umask), not mkstemp's 0o600;
    set after writing, since some writers (safetensors) replace the file they are given.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class SyntheticSet:
    """Synthetic images in the model's normalised input space, so ``model(s.images)`` works.

    ``losses`` is the per-image cross-entropy of the model on the kept images (no
    augmentation); ``total_loss`` is the objective CE + R of the kept batch.
    """

    images: Tensor
    labels: Tensor
    losses: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    total_loss: float = math.nan
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if self.images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        n, c = self.images.shape[:2]
        if self.labels.shape != (n,) or self.losses.shape != (n,):
            raise ValueError(
                f"labels and losses must have shape ({n},), got {tuple(self.labels.shape)} "
                f"and {tuple(self.losses.shape)}"
            )
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean and std must have {c} values (one per channel)")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to_pixels(self) -> Tensor:
        """Images un-normalised back to pixel values in ``[0, 1]``."""
        mean = torch.tensor(self.mean, dtype=self.images.dtype, device=self.images.device)
        std = torch.tensor(self.std, dtype=self.images.dtype, device=self.images.device)
        pixels = self.images * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
        return pixels.clamp(0.0, 1.0)

    @torch.no_grad()
    def target_agreement(self, model: torch.nn.Module) -> tuple[float, float]:
        """(share of images `model` classifies as their target label, mean probability of that label):
        how well the set still represents the classes it was synthesized for."""
        probs = model.eval()(self.images).softmax(1)
        hit = (probs.argmax(1) == self.labels).float().mean().item()
        return hit, probs.gather(1, self.labels[:, None]).mean().item()

    # ---------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the set to directory ``path`` (created if missing); returns it."""
        from safetensors.torch import save_file  # lazy: only needed for files

        out = Path(path)
        if out.exists() and not out.is_dir():
            raise ValueError(f"save path {out} exists and is not a directory; pass a directory path")
        tensors = {
            "images": self.images.detach().cpu().float().contiguous(),
            "labels": self.labels.detach().cpu().long().contiguous(),
            "losses": self.losses.detach().cpu().float().contiguous(),
        }
        meta = {
            "format": "synth.SyntheticSet",
            "version": FORMAT_VERSION,
            "num_images": len(self),
            "image_shape": list(self.images.shape[1:]),
            "mean": list(self.mean),
            "std": list(self.std),
            # JSON has no NaN/inf: store them as null.
            "total_loss": self.total_loss if math.isfinite(self.total_loss) else None,
            "config": self.config,
        }
        _atomic_write(out / TENSORS_FILE, lambda tmp: save_file(tensors, tmp))

        def write_json(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, sort_keys=True)
                f.write("\n")

        _atomic_write(out / META_FILE, write_json)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> SyntheticSet:
        """Read a set written by :meth:`save` (a directory)."""
        from safetensors.torch import load_file  # lazy: only needed for files

        src = Path(path)
        tensors_path, meta_path = src / TENSORS_FILE, src / META_FILE
        if not tensors_path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"{src} is not a saved SyntheticSet: expected a directory with {TENSORS_FILE} and {META_FILE}"
            )
        meta = _read_meta(meta_path)
        tensors = load_file(str(tensors_path), device=str(device))
        missing = sorted({"images", "labels", "losses"} - tensors.keys())
        if missing:
            raise ValueError(f"{tensors_path} lacks {', '.join(missing)}: not a file written by SyntheticSet.save")
        total = meta.get("total_loss")
        return cls(
            images=tensors["images"],
            labels=tensors["labels"],
            losses=tensors["losses"],
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            total_loss=math.nan if total is None else float(total),
            config=dict(meta.get("config") or {}),
        )

    # --------------------------------------------------------------------- grid
    def grid(self, nrow: int = 10) -> Tensor:
        """Tile ``to_pixels()`` into one uint8 image of shape (H, W, C), C in {1, 3}."""
        if nrow < 1:
            raise ValueError(f"nrow must be a positive int, got {nrow}")
        pixels = self.to_pixels().detach().cpu().float()
        if pixels.shape[1] not in (1, 3):  # e.g. 2 or 4 channels: show their mean
            pixels = pixels.mean(dim=1, keepdim=True)
        n, c, h, w = pixels.shape
        scale = max(1, math.ceil(MIN_TILE_PX / min(h, w)))
        if scale > 1:
            pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
            h, w = h * scale, w * scale
        cols = min(nrow, max(n, 1))
        rows = max(1, math.ceil(n / cols))
        pad = GRID_PADDING_PX
        canvas = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
        for i in range(n):
            top = pad + (i // cols) * (h + pad)
            left = pad + (i % cols) * (w + pad)
            canvas[:, top : top + h, left : left + w] = pixels[i]
        return (canvas * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()

    def save_grid(self, png_path: str | os.PathLike[str], nrow: int = 10) -> Path:
        """Write a PNG grid of the images (``nrow`` per row); labels are not drawn."""
        from PIL import Image  # lazy: only needed for files

        grid = self.grid(nrow)
        # (H, W) uint8 becomes a grayscale ("L") PNG, (H, W, 3) an RGB one.
        array = grid.squeeze(2).numpy() if grid.shape[2] == 1 else grid.numpy()
        image = Image.fromarray(array)
        out = Path(png_path)
        _atomic_write(out, lambda tmp: image.save(tmp, format="PNG"))
        return out


def _read_meta(path: Path) -> dict:
    """meta.json as SyntheticSet.save writes it, or a one-line ValueError saying what is wrong with it."""
    accepted = "accepted: the meta.json SyntheticSet.save writes (an object with 'mean' and 'std' lists)"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {accepted}") from None
    numbers = (int, float)
    ok = isinstance(meta, dict) and all(
        isinstance(meta.get(k), list) and all(isinstance(v, numbers) for v in meta[k]) for k in ("mean", "std")
    )
    ok = ok and isinstance(meta.get("total_loss", 0.0), (*numbers, type(None)))
    ok = ok and isinstance(meta.get("config") or {}, dict)
    if not ok:
        raise ValueError(f"{path} is not a synthetic set's meta.json; {accepted}")
    return meta


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> SyntheticSet:
    """Module-level alias of :meth:`SyntheticSet.load`."""
    return SyntheticSet.load(path, device=device)
