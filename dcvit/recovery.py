"""Recovery levers beyond Eq. 3 (docs/method.md §6, "Recovery levers"): the richer targets (logits, block
outputs) one forward pass gives, the best-epoch keeper, and the length of the final recovery: one more Eq. 3
fine-tune of a finished model, longer the more MACs were removed (CompressConfig.final_epochs per tenth), optionally
keeping its epoch with the least synthetic-set KL (Eq. 6; CompressConfig.final_select) or ending with the mean of
its last epochs' weights (CompressConfig.final_average); every structure gets it,
after its own run (dcvit.driver.final_recovery). The views of the shots are dcvit.views.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .rebuild import restored_modes


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What one forward pass gives the mimicking loss: output tokens (Eq. 3) and, when asked, logits and every
    block's output."""

    tokens: torch.Tensor
    logits: torch.Tensor | None = None
    blocks: tuple[torch.Tensor, ...] | None = None

    def __getitem__(self, idx: torch.Tensor) -> Outputs:
        pick = lambda t: t[idx.to(t.device)]
        return Outputs(
            pick(self.tokens),
            None if self.logits is None else pick(self.logits),
            None if self.blocks is None else tuple(pick(b) for b in self.blocks),
        )


def model_outputs(adapter, model: nn.Module, x: torch.Tensor, logits: bool = False, blocks: bool = False) -> Outputs:
    """Output tokens, and the logits (the adapter's head on them) and block outputs (forward hooks) if asked."""
    seen: list[torch.Tensor] = []
    grab = lambda m, args, out: seen.append(out[0] if isinstance(out, tuple) else out)
    hooks = [b.register_forward_hook(grab) for b in adapter.blocks(model)] if blocks else []
    try:
        tokens = adapter.features(model, x)
        head = adapter.head(model, tokens).float() if logits else None
    finally:
        for h in hooks:
            h.remove()
    return Outputs(tokens.float(), head, tuple(t.float() for t in seen) if blocks else None)


def logit_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) per image, averaged: Eq. 6's divergence as a training loss (temperature 1)."""
    return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")


def block_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over blocks of each block output's MSE relative to the teacher's mean square there: the residual
    stream grows with depth, and unscaled the last blocks would outweigh the rest."""
    terms = [F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12) for s, t in zip(student, teacher, strict=True)]
    return torch.stack(terms).mean()


class Best:
    """The weights of the best-scoring epoch under `select` (nothing kept without it)."""

    def __init__(self, student: nn.Module, select: Callable[[nn.Module], float] | None):
        self.select, self.epoch, self.state = select, 0 if select else None, None
        self.score = self._score(student) if select else math.inf
        if select:
            self.state = copy.deepcopy(student.state_dict())

    def _score(self, student: nn.Module) -> float:
        with restored_modes(student), torch.no_grad():
            return self.select(student)

    def update(self, student: nn.Module, epoch: int) -> None:
        if self.select and (score := self._score(student)) < self.score:
            self.score, self.epoch, self.state = score, epoch, copy.deepcopy(student.state_dict())

    def restore(self, student: nn.Module) -> None:
        if self.state is not None:
            student.load_state_dict(self.state)


class TailAverage:
    """The mean of the weights after each of the last `count` of `epochs` epochs (the tail average of stochastic
    weight averaging, Izmailov et al., UAI 2018: a point nearer the middle of the flat region the last steps
    circle). Integer buffers keep their last value; `restore` loads the mean."""

    def __init__(self, epochs: int, count: int):
        self.first, self.seen, self.mean = epochs - count + 1, 0, None
        self.epoch = None  # no single epoch is kept

    @torch.no_grad()
    def update(self, student: nn.Module, epoch: int) -> None:
        if epoch < self.first:
            return
        self.seen += 1
        state = student.state_dict()
        if self.mean is None:
            self.mean = {k: v.detach().clone() for k, v in state.items()}
            return
        for k, v in state.items():  # a running mean: mean += (x - mean) / n
            if v.is_floating_point():
                self.mean[k].add_(v.detach() - self.mean[k], alpha=1 / self.seen)
            else:
                self.mean[k].copy_(v)

    def restore(self, student: nn.Module) -> None:
        if self.seen > 1:  # one epoch's mean is that epoch's weights: nothing to load
            student.load_state_dict(self.mean)


def averaged_epochs(config, epochs: int) -> int:
    """How many of the final recovery's `epochs` final_average averages (at least one when it is on)."""
    return max(1, round(config.final_average * epochs)) if config.final_average and epochs else 0


def final_epochs(config, macs: int, macs_original: int) -> int:
    """final_epochs per tenth of the teacher's MACs removed, rounded (at least one when any were removed)."""
    removed = 1 - macs / macs_original
    return max(1, round(config.final_epochs * 10 * removed)) if config.final_epochs and removed > 0 else 0
