"""Views of the shots for the mimicking loss (CompressConfig.mimic_views, docs/method.md §6): batch-level
transforms of the model-input tensors, drawn from the fine-tune's generator. Teacher and student see the same
view, so the loss stays label-free ("consistent" teaching, Beyer et al. 2022); every step sees new views, so
100 images give more than 100 distinct inputs. One registered class per view, as metrics and structures are.

This module imports no other dcvit module at load time: config reads the registry while it loads.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

_VIEWS: dict[str, type[View]] = {}


class View:
    """Maps a batch (B, C, H, W) of normalised images to the batch both models see at this step."""

    name: ClassVar[str] = ""
    random: ClassVar[bool] = True  # False: the input as it is (the teacher's targets can be cached)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def register_view(cls: type[View]) -> type[View]:
    """Register a view class under its name (usable as a decorator)."""
    _VIEWS[cls.name] = cls
    return cls


def view_names() -> tuple[str, ...]:
    return tuple(_VIEWS)


def get_view(name: str) -> View:
    if name not in _VIEWS:
        raise ValueError(f"mimic_views must be one of {view_names()}; got {name!r}")
    return _VIEWS[name]()


def _uniform(n: int, gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


@register_view
class Plain(View):
    """The shots as they are (the default)."""

    name = "none"
    random = False

    def __call__(self, x, gen):
        return x


@register_view
class Crop(View):
    """Random resized crop (area 35-100%, aspect 3/4-4/3) resized back to the input size, and a horizontal flip
    with probability 1/2, per image. Milder than the reference's 8-100%: a 28-px image has little to spare."""

    name = "crop"
    scale = (0.35, 1.0)
    ratio = (3 / 4, 4 / 3)

    def __call__(self, x, gen):
        n, _, h, w = x.shape
        area = _uniform(n, gen, *self.scale)
        log_ratio = _uniform(n, gen, math.log(self.ratio[0]), math.log(self.ratio[1]))
        where, flips = torch.rand(n, 2, generator=gen), torch.rand(n, generator=gen) < 0.5
        out = []
        for i in range(n):
            aspect = math.exp(log_ratio[i].item())
            ch = max(1, min(h, round(math.sqrt(area[i].item() * h * w / aspect))))
            cw = max(1, min(w, round(math.sqrt(area[i].item() * h * w * aspect))))
            top, left = int(where[i, 0] * (h - ch + 1)), int(where[i, 1] * (w - cw + 1))
            patch = x[i : i + 1, :, top : top + ch, left : left + cw]
            patch = F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False)
            out.append(patch.flip(-1) if flips[i] else patch)
        return torch.cat(out)


def _partners(n: int, gen: torch.Generator) -> torch.Tensor:
    """Each image's partner in the batch: a random permutation (an image may meet itself in a batch of 1)."""
    return torch.randperm(n, generator=gen)


@register_view
class Mixup(View):
    """Each image blended with a partner from the batch, weight ~ U(0, 1) (Beta(1, 1)); no labels to mix: the
    teacher's outputs on the blend are the target (mixup as in Zhang et al. 2018, function matching in Beyer et al.)."""

    name = "mixup"

    def __call__(self, x, gen):
        lam = _uniform(len(x), gen).view(-1, 1, 1, 1).to(x.dtype)
        return lam * x + (1 - lam) * x[_partners(len(x), gen)]


@register_view
class CutMix(View):
    """A random box of each image (area ~ U(0, 1) of it) replaced by the same box of a partner (Yun et al. 2019)."""

    name = "cutmix"

    def __call__(self, x, gen):
        n, _, h, w = x.shape
        area, where = _uniform(n, gen), torch.rand(n, 2, generator=gen)
        partner, out = _partners(n, gen), x.clone()
        for i in range(n):
            bh, bw = round(h * math.sqrt(area[i].item())), round(w * math.sqrt(area[i].item()))
            top, left = int(where[i, 0] * (h - bh + 1)), int(where[i, 1] * (w - bw + 1))
            out[i, :, top : top + bh, left : left + bw] = x[partner[i], :, top : top + bh, left : left + bw]
        return out


@register_view
class CropMixup(View):
    """A crop view of every image, then mixup between the views."""

    name = "crop-mixup"

    def __call__(self, x, gen):
        return Mixup()(Crop()(x, gen), gen)
