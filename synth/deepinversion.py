"""DeepInversion-style synthesis of a metric set from a trained classifier.

docs/method.md §4 (Eq. 4-5): start from Gaussian noise ``x`` in the model's normalised
input space with target labels ``y`` and minimise, over ``x`` only,

    CE(f(x'), y) + R(x),   R(x) = tv * sum_d ||Δ_d x||_F ** tv_exponent + l2 * mean_i ||x_i||_2

where ``x'`` is ``x`` randomly rolled (jitter) and flipped. Adam (betas 0.5, 0.9),
linear warm-up then cosine learning rate, pixels clamped to the valid range after
every step; the batch with the lowest objective seen is returned.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import default_jitter, jitter_and_flip, max_shift
from .model_inputs import (
    ImageSize,
    logits_of,
    patch_size,
    probe_num_classes,
    resolve_image_shape,
    resolve_normalisation,
)
from .regularizers import image_prior
from .synthetic_set import SyntheticSet

ADAM_BETAS = (0.5, 0.9)
PROGRESS_EVERY = 10  # iterations between progress-bar refreshes


def cosine_lr(iteration: int, iterations: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine decay towards 0."""
    warmup = min(warmup, iterations)
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, iterations - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def choose_labels(
    num_images: int, num_classes: int, labels: Sequence[int] | Tensor | None, generator: torch.Generator
) -> Tensor:
    """Target labels: validated ``labels``, else distinct random classes, else a balanced cycle."""
    if labels is not None:
        try:
            given = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"labels must be a sequence or tensor of ints; got {type(labels).__name__}") from exc
        if given.dim() != 1 or len(given) != num_images:
            raise ValueError(f"labels must be 1-D with num_images={num_images} entries; got shape {tuple(given.shape)}")
        if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
            raise ValueError(f"labels must be integers; got dtype {given.dtype}")
        if len(given) and (int(given.min()) < 0 or int(given.max()) >= num_classes):
            raise ValueError(
                f"labels must be in [0, {num_classes}) for this model; got min {int(given.min())}, max {int(given.max())}"
            )
        return given.long().cpu()
    permutation = torch.randperm(num_classes, generator=generator)
    if num_images <= num_classes:
        return permutation[:num_images]
    # More images than classes: cycle one permutation so every class gets
    # floor or ceil of num_images / num_classes images.
    return permutation.repeat(math.ceil(num_images / num_classes))[:num_images]


def _progress_bar(total: int, enabled: bool | Callable[[int, str], Any]) -> Any:
    """A counter with update(n) and set_postfix(...): `enabled` itself when it makes one (dcvit passes
    dcvit.progress.bar: a bar on a terminal, log lines elsewhere), else a tqdm bar, only on a terminal: its
    carriage returns would pile up in a redirected log."""
    if callable(enabled):
        return enabled(total, "synthesizing")
    if not enabled or not _stderr_is_terminal():
        return None
    try:
        from tqdm.auto import tqdm  # optional: synth only requires torch
    except ImportError:
        return None
    return tqdm(total=total, desc="synthesizing", leave=False)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced or closed
        return False


def invert_batch(
    model: nn.Module,
    labels: Tensor,
    shape: tuple[int, int, int],
    low: Tensor,
    high: Tensor,
    generator: torch.Generator,
    *,
    iterations: int,
    lr: float,
    tv: float,
    tv_exponent: float,
    l2: float,
    jitter: float,
    flip: bool,
    warmup: int,
    bar: Any = None,
) -> tuple[Tensor, float]:
    """Optimise one batch of images (Eq. 4); returns (best images, their objective)."""
    device = low.device
    # Noise is drawn on the CPU generator and moved, so the seed gives the same
    # starting point on every device.
    x = torch.randn((len(labels), *shape), generator=generator).to(device)
    x = torch.maximum(torch.minimum(x, high), low).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr, betas=ADAM_BETAS)
    shift_h, shift_w = max_shift(jitter, shape[1]), max_shift(jitter, shape[2])
    best_x, best_loss = x.detach().clone(), math.inf
    for it in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(it, iterations, lr, warmup)
        x_aug = jitter_and_flip(x, shift_h, shift_w, flip, generator)
        loss = F.cross_entropy(logits_of(model(x_aug)), labels) + image_prior(x, tv, tv_exponent, l2)
        # autograd.grad (not backward) so the model's .grad fields are never touched.
        (x.grad,) = torch.autograd.grad(loss, x)
        value = float(loss.detach())
        if value < best_loss:  # the images that produced this loss, before the step
            best_x, best_loss = x.detach().clone(), value
        optimizer.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, high), low))
        if bar is not None and ((it + 1) % PROGRESS_EVERY == 0 or it + 1 == iterations):
            bar.update((it % PROGRESS_EVERY) + 1)
            bar.set_postfix(loss=f"{value:.4f}")
    return best_x, best_loss


def synthesize(
    model: nn.Module,
    num_images: int,
    *,
    image_size: ImageSize = None,
    labels: Sequence[int] | Tensor | None = None,
    iterations: int = 2000,
    lr: float = 0.25,
    tv: float = 1e-4,
    tv_exponent: float = 0.6,
    l2: float = 1e-5,
    jitter: float | None = None,
    flip: bool = True,
    warmup: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, str], Any] = True,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    batch_size: int | None = None,
) -> SyntheticSet:
    """Synthesise ``num_images`` images the model classifies as their labels (docs/method.md §4).

    Image shape and mean/std default to the model's data config (see
    :mod:`synth.model_inputs`); ``jitter`` is a fraction of the image side; None follows the model: at
    most half a patch for a ViT (``min(30/224, (patch // 2) / side)``, see
    :func:`synth.augment.default_jitter`), else the reference 30/224. ``config["jitter"]`` records the
    value used.
    ``warmup`` (learning-rate warm-up iterations) defaults to 5% of ``iterations``.
    ``batch_size`` splits the images into independently optimised chunks; then
    ``total_loss`` is the size-weighted mean of the chunks' best objectives.
    The model is put in eval mode for the run and restored afterwards.
    ``progress``: a tqdm bar when stderr is a terminal (True), none (False), or a callable (total, desc) -> counter
    with ``update(n)`` and ``set_postfix(**values)``, such as ``dcvit.progress.bar``.
    """
    num_images = _check_int("num_images", num_images, 1)
    iterations = _check_int("iterations", iterations, 1)
    warmup = max(1, iterations // 20) if warmup is None else _check_int("warmup", warmup, 0)  # 100 at 2000
    seed = _check_int("seed", seed, -(2**63))
    chunk = num_images if batch_size is None else _check_int("batch_size", batch_size, 1)
    lr, tv, l2 = (_check_nonnegative(n, v) for n, v in (("lr", lr), ("tv", tv), ("l2", l2)))
    if isinstance(tv_exponent, bool) or not isinstance(tv_exponent, numbers.Real) or not 0 < tv_exponent < math.inf:
        raise ValueError(f"tv_exponent must be a finite number > 0; got {tv_exponent!r}")
    if jitter is not None and (isinstance(jitter, bool) or not isinstance(jitter, numbers.Real) or not 0 <= jitter < 1):
        raise ValueError(f"jitter must be a fraction of the image side in [0, 1) or None; got {jitter!r}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)

    # Restore each module's own train/eval flag afterwards, not just the root's.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        shape = resolve_image_shape(model, image_size, mean)
        jitter = default_jitter(patch_size(model), shape) if jitter is None else jitter
        mean_t, std_t = resolve_normalisation(model, shape[0], mean, std)
        num_classes = probe_num_classes(model, shape, device)
        generator = torch.Generator().manual_seed(seed)  # local: the global RNG is untouched
        targets = choose_labels(num_images, num_classes, labels, generator).to(device)
        mean_v = torch.tensor(mean_t, device=device).view(1, -1, 1, 1)
        std_v = torch.tensor(std_t, device=device).view(1, -1, 1, 1)
        low, high = (0.0 - mean_v) / std_v, (1.0 - mean_v) / std_v  # pixel range [0, 1]
        starts = range(0, num_images, chunk)
        bar = _progress_bar(iterations * len(starts), progress)
        images, losses, weighted_total = [], [], 0.0
        with bar if bar is not None else nullcontext():
            for start in starts:
                y = targets[start : start + chunk]
                best_x, best_loss = invert_batch(
                    model,
                    y,
                    shape,
                    low,
                    high,
                    generator,
                    iterations=iterations,
                    lr=lr,
                    tv=tv,
                    tv_exponent=float(tv_exponent),
                    l2=l2,
                    jitter=float(jitter),
                    flip=bool(flip),
                    warmup=warmup,
                    bar=bar,
                )
                with torch.no_grad():
                    losses.append(F.cross_entropy(logits_of(model(best_x)), y, reduction="none"))
                images.append(best_x)
                weighted_total += best_loss * len(y)
    finally:
        for module, training in modes:
            module.training = training
    config = {
        "method": "deepinversion",
        "num_images": num_images,
        "image_size": list(shape),
        "iterations": iterations,
        "lr": lr,
        "tv": tv,
        "tv_exponent": float(tv_exponent),
        "l2": l2,
        "jitter": float(jitter),
        "flip": bool(flip),
        "warmup": warmup,
        "seed": seed,
        "batch_size": batch_size,
        "num_classes": num_classes,
        "model": type(model).__name__,
    }
    return SyntheticSet(
        images=torch.cat(images),
        labels=targets,
        losses=torch.cat(losses).float(),
        mean=mean_t,
        std=std_t,
        total_loss=weighted_total / num_images,
        config=config,
    )
