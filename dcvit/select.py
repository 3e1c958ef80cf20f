"""Block selection (METHOD.md §7, Eq. 6): the block-wise trial scored on the synthetic metric set.

For every candidate block b, the candidate model (only b compressed to the planned width) is fine-tuned by
feature mimicking, then scored with score_b = mean over synthetic images of KL(p_teacher || p_b).
Lower is more recoverable. Candidates are checkpointed (and reused by the progressive driver); under
`accelerate launch` each process takes every num_processes-th candidate, so the ranking is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .arch import get_adapter

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .plan import Plan


@dataclass(frozen=True)
class Trial:
    block: int
    score: float        # the selection metric (Eq. 6 by default); lower is better
    kl: float           # KL(teacher || candidate) on the synthetic set, whatever the metric
    train_loss: float   # final few-shot mimicking loss
    seconds: float
    process: int = 0    # which Accelerate process ran it


@torch.no_grad()
def kl_score(teacher_logits: torch.Tensor, model: nn.Module, images: torch.Tensor) -> float:
    """Eq. 6: (1/|S|) sum_i KL(softmax(teacher(x_i)) || softmax(model(x_i)))."""
    log_q = F.log_softmax(model.eval()(images).float(), dim=1)
    return F.kl_div(log_q, F.log_softmax(teacher_logits.float(), dim=1), log_target=True, reduction="batchmean").item()


@torch.no_grad()
def feature_mse(teacher_features: torch.Tensor, model: nn.Module, images: torch.Tensor) -> float:
    """Ablation metric: MSE between output tokens on the synthetic set."""
    return F.mse_loss(get_adapter(model).features(model.eval(), images).float(), teacher_features).item()


def trial_key(plan: "Plan", block: int, surgery: str) -> str:
    return f"trial-{surgery}-b{block}-h{plan.mlp_hidden}-a{int(plan.remove_attention)}"


def run_trials(engine: "Engine", plan: "Plan", candidates: Sequence[int]) -> dict[int, Trial]:
    """Fine-tune and score one candidate model per block; returns {block: Trial} (all processes agree)."""
    acc = engine.accelerator
    mine = list(candidates)[acc.process_index::acc.num_processes]
    for block in engine.progress(mine, "block-wise trial"):
        key = trial_key(plan, block, engine.config.surgery)
        if engine.workspace.has(key):
            continue
        model, fit, seconds = engine.build_and_tune(key, engine.teacher, plan, [block], [block],
                                                    engine.config.epochs_per_trial)
        trial = engine.score(model, block, fit.final_loss, seconds, acc.process_index)
        engine.workspace.save(key, model, trial.__dict__)
    acc.wait_for_everyone()
    return {b: Trial(**engine.workspace.meta(trial_key(plan, b, engine.config.surgery))) for b in candidates}


def rank(trials: dict[int, Trial]) -> list[int]:
    """Blocks from most to least recoverable (lowest score first; ties by block index)."""
    return sorted(trials, key=lambda b: (trials[b].score, b))
