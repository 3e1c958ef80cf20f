"""Image priors for model inversion: total variation and L2 (docs/method.md §4, Eq. 5).

Both act on the images ``x`` in the model's *normalised* input space, shape
``(B, C, H, W)``, and return a scalar tensor that is differentiable w.r.t. ``x``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Smallest norm fed into ``norm ** exponent``: for exponent < 1 the derivative
# of t**p is infinite at t = 0 (a perfectly flat batch), which would turn the
# gradient into NaN. Clamping keeps it finite without changing any realistic value.
_NORM_FLOOR = 1e-12


def neighbour_differences(x: Tensor) -> list[Tensor]:
    """Differences between each pixel and its neighbour in four directions.

    Directions: right, down, down-right diagonal and down-left diagonal. The two
    diagonals make the prior (nearly) isotropic, which suppresses the
    checkerboard-like high-frequency patterns inversion otherwise produces.
    """
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
    return [
        x[..., :, 1:] - x[..., :, :-1],  # right
        x[..., 1:, :] - x[..., :-1, :],  # down
        x[..., 1:, 1:] - x[..., :-1, :-1],  # down-right
        x[..., 1:, :-1] - x[..., :-1, 1:],  # down-left
    ]


def total_variation(x: Tensor, exponent: float = 0.6) -> Tensor:
    """``sum_d ||Δ_d x||_F ** exponent`` over the four neighbour directions.

    The Frobenius norm is taken over the whole batch (not per image), as in
    docs/method.md Eq. 5. An exponent < 1 (0.6 for ViTs) penalises a few strong edges
    less than many weak ones, which keeps object boundaries while removing noise.
    """
    total = x.new_zeros(())
    for diff in neighbour_differences(x):
        if diff.numel() == 0:  # 1-pixel-wide images have no neighbours that way
            continue
        total = total + torch.linalg.vector_norm(diff).clamp_min(_NORM_FLOOR) ** exponent
    return total


def l2_prior(x: Tensor) -> Tensor:
    """Mean over the batch of each image's L2 norm: keeps pixel values small."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


def image_prior(x: Tensor, tv: float, tv_exponent: float, l2: float) -> Tensor:
    """``R(x) = tv * TV(x) + l2 * L2(x)`` (docs/method.md Eq. 5); skips terms weighted 0."""
    total = x.new_zeros(())
    if tv:
        total = total + tv * total_variation(x, tv_exponent)
    if l2:
        total = total + l2 * l2_prior(x)
    return total
