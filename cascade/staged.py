"""Stage-by-stage cascade inference over a whole set of inputs (docs/method.md §9, "Staged inference").

`Cascade.forward` routes one batch: when the first member answers most inputs, the big model runs on the few
left in each batch, and a forward on a handful of inputs costs far more per input than on a full batch. When
the inputs are all at hand (offline scoring, or a server that queues hard requests), `predict_staged` runs
each member on everything still undecided, in full batches, so every member works at its efficient batch
size. The routing rule and the committee exit are the cascade's own (cascade.routing.Committee).
"""

from __future__ import annotations

import torch

from .routing import Cascade, CascadeStats, Committee


def _forward_in_batches(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.inference_mode()
def predict_staged(cascade: Cascade, inputs: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, CascadeStats]:
    """(logits for every input, where they exited). Each member runs once over all inputs that reached it, in
    batches of `batch_size`; the answers equal the per-batch cascade's up to floating-point differences
    between batch sizes. The cascade's own statistics are left as they were."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if len(inputs) == 0:  # no inputs: no logits (0 x classes, from the big model's answer to none) and no exits
        return cascade.models[-1](inputs), CascadeStats.from_counts([0] * len(cascade.models), cascade.costs)
    out: torch.Tensor | None = None
    undecided = torch.arange(len(inputs), device=inputs.device)
    exits = [0] * len(cascade.models)
    committee = Committee(list(cascade.committee))
    for i, model in enumerate(cascade.models):
        logits = committee.answer(i, _forward_in_batches(model, inputs.index_select(0, undecided), batch_size))
        if out is None:
            out = logits.new_empty((len(inputs), logits.shape[1]))
        if i == len(cascade.models) - 1:
            answer = torch.ones(len(undecided), dtype=torch.bool, device=inputs.device)
        else:
            answer = committee.exits(i, logits, cascade.thresholds[i])
        out[undecided[answer]] = logits[answer].to(out.dtype)
        exits[i] = int(answer.sum())
        committee.keep((~answer).nonzero().squeeze(1))
        undecided = undecided[~answer]
        if len(undecided) == 0:
            break
    return out, CascadeStats.from_counts(exits, cascade.costs)
