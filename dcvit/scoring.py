"""The selection score (docs/method.md §7, Eq. 6), pure functions of a model and the synthetic metric set.

score_b = mean over synthetic images of KL(p_teacher || p_b); lower means the candidate is more recoverable.
The block-wise trial that fine-tunes each candidate and calls these lives in `dcvit.structures.dcvit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .arch import get_adapter


@dataclass(frozen=True)
class Trial:
    block: int
    score: float  # the selection metric (Eq. 6 by default); lower is better
    kl: float  # KL(teacher || candidate) on the synthetic set, whatever the metric
    train_loss: float  # final few-shot mimicking loss
    seconds: float
    process: int = 0  # which Accelerate process ran it


@torch.no_grad()
def kl_score(teacher_logits: torch.Tensor, model: nn.Module, images: torch.Tensor) -> float:
    """Eq. 6: (1/|S|) sum_i KL(softmax(teacher(x_i)) || softmax(model(x_i)))."""
    return kl_of_logits(teacher_logits, model.eval()(images))


@torch.no_grad()
def kl_of_logits(teacher_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Eq. 6 from the candidate's logits on the synthetic set (kl_score without the forward pass)."""
    log_q = F.log_softmax(logits.float(), dim=1)
    return F.kl_div(log_q, F.log_softmax(teacher_logits.float(), dim=1), log_target=True, reduction="batchmean").item()


@torch.no_grad()
def feature_mse(teacher_features: torch.Tensor, model: nn.Module, images: torch.Tensor) -> float:
    """Ablation metric: MSE between output tokens on the synthetic set."""
    return F.mse_loss(get_adapter(model).features(model.eval(), images).float(), teacher_features).item()
