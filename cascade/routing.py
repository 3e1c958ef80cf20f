"""Batched N-pass cascade inference (docs/method.md §9).

Model 1 sees the whole batch; a sample leaves the cascade at the first stage whose confidence
(max softmax) is >= that stage's threshold, otherwise the next, larger model runs on it. The last
model always answers. Routing uses boolean masks and index_select only: there is no loop over samples,
so a batch of 256 costs one call per stage, not 256. torch.jit.script compiles a Cascade (routing and committee
exit) when its members are scriptable; this module has no `from __future__ import annotations`, since TorchScript
reads the annotations as types.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import check_costs, check_model_classes, check_thresholds


@dataclass(frozen=True)
class CascadeStats:
    """Where samples left the cascade.

    exit_counts[i] / exit_ratios[i]: samples answered by model i (they ran models 0..i).
    run_counts[i]: samples model i ran on. avg_cost: MACs per sample, the sum over samples of the costs
    of the models each sample ran divided by n (None when the cascade has no costs; 0.0 when n == 0).
    """

    exit_counts: tuple[int, ...]
    exit_ratios: tuple[float, ...]
    run_counts: tuple[int, ...]
    avg_cost: float | None
    n: int

    @classmethod
    def from_counts(cls, exit_counts: Sequence[int], costs: Sequence[float] | None = None) -> "CascadeStats":
        counts = tuple(int(c) for c in exit_counts)
        n = sum(counts)
        # A sample answered by model i ran models 0..i, so model i ran on everything not answered before it.
        runs = tuple(n - sum(counts[:i]) for i in range(len(counts)))
        ratios = tuple(c / n if n else 0.0 for c in counts)
        avg = None
        if costs is not None:
            avg = sum(run * float(c) for run, c in zip(runs, costs)) / n if n else 0.0
        return cls(exit_counts=counts, exit_ratios=ratios, run_counts=runs, avg_cost=avg, n=n)


def confident(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """The rows that exit at a stage: float32 max softmax >= threshold (half-precision confidences would round
    near the threshold; a NaN confidence is not >=, so it goes on)."""
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1) >= threshold


class Committee:
    """The committee exit along one pass (cascade.guarantee): the running sum of the float32 softmax of every
    member that ran on each undecided row. At a stage with the committee on, the answer is the mean of those
    probabilities, returned as its log (a valid logit row: its softmax is the mean) and routed on its max.
    Summed in stage order and divided once, as cascade.guarantee.committee_probs does in calibration.
    TorchScript compiles this class with Cascade.forward (typed attributes, no refinement of attributes)."""

    def __init__(self, flags: list[bool]):
        self.flags = flags
        self.on = any(flags)
        self.running = torch.jit.annotate(torch.Tensor | None, None)  # the type TorchScript needs

    def answer(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """Stage i's answer logits for its rows (all rows still undecided), updating the running sum."""
        if not self.on:
            return logits
        probs = torch.softmax(logits.float(), dim=-1)
        running = self.running
        running = probs if running is None else running + probs
        self.running = running
        return (running / (i + 1)).log() if self.flags[i] else logits

    def exits(self, i: int, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        """The rows that leave at stage i (logits: what answer() returned): the committee's mean probability
        is compared as it is, not through a softmax of its log, so routing matches calibration bit for bit."""
        running = self.running
        if self.flags[i] and running is not None:
            return (running / (i + 1)).amax(dim=-1) >= threshold
        return confident(logits, threshold)

    def keep(self, rows: torch.Tensor) -> None:
        """Only `rows` go on to the next stage."""
        running = self.running
        if running is not None:
            self.running = running.index_select(0, rows)


def check_committee(committee: Sequence[bool] | None, n_models: int) -> tuple[bool, ...]:
    if committee is None:
        return (False,) * n_models
    flags = tuple(committee)
    if len(flags) != n_models or not all(isinstance(f, bool) for f in flags) or (flags and flags[0]):
        raise ValueError(
            f"committee must be {n_models} booleans, one per model, the first False (nothing ran before it), "
            f"got {committee!r}"
        )
    return flags


class Cascade(nn.Module):
    """N-pass cascade that replaces a classifier: forward(x) returns B x K logits, each row from the
    model that answered that sample.

    models: cheapest first, the big model last. thresholds: one per model except the last, each in
    [0, 1]; a sample exits at stage i when max softmax >= thresholds[i]. Threshold 0 sends everything
    out at that stage; threshold 1 lets only samples whose float32 confidence is exactly 1.0 exit (it
    happens for very large logit gaps), so in practice everything goes on. costs: optional MACs per
    sample of each model, for `avg_cost` in the statistics. Members that declare their class count
    (`num_classes`, or a final Linear `head`/`heads`/`fc`/`classifier`) must agree at construction; the
    others are checked on their logits in forward. A model whose `fc` or `head` is not its output layer
    can say so by setting `num_classes` to its true count (a disagreement makes it count as undeclared).

    After every call `last_stats` holds that batch's CascadeStats; `total_stats` accumulates over calls
    until `reset_stats()`. `spec` is None, or for a cascade read by cascade.load its checked cascade.json.
    Call it in eval mode under torch.no_grad()/inference_mode for inference;
    the cascade does not switch modes itself, as that is the caller's decision.

    torch.jit.script(cascade) compiles the routing with the members when every member is scriptable; the
    scripted module answers as this one does and keeps its exit counts in `_last_counts` / `_total_counts`
    (the statistics properties are Python only).
    """

    # Python-only parts, left out by torch.jit.script (the routing reads the list attributes below).
    __jit_unused_properties__ = ["thresholds", "committee", "last_stats", "total_stats"]
    __jit_ignored_attributes__ = ["spec", "pretrained_cfg"]
    _threshold_list: list[float]
    _committee_list: list[bool]
    _last_counts: list[int] | None
    _total_counts: list[int]

    def __init__(
        self,
        models: Sequence[nn.Module],
        thresholds: Sequence[float],
        costs: Sequence[float] | None = None,
        committee: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        models = list(models)
        if len(models) < 1:
            raise ValueError("a Cascade needs at least 1 model (cheapest first, big model last), got 0")
        for i, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise ValueError(f"models[{i}] must be a torch.nn.Module, got {type(m).__name__}")
        check_model_classes(models)
        self.models = nn.ModuleList(models)
        self.thresholds = thresholds  # validated by the property setter
        self.costs = check_costs(costs, len(models))
        self.committee = committee  # validated by the property setter
        self._last_counts = None
        self._total_counts = [0] * len(models)
        self.spec = None  # set by cascade.load: names, kinds, MACs and preprocessing of the members

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(self._threshold_list)

    @thresholds.setter
    def thresholds(self, value: Sequence[float]) -> None:
        # Settable so a calibrated Calibration.thresholds can be dropped in without rebuilding the module.
        self._threshold_list = list(check_thresholds(value, len(self.models)))

    @property
    def committee(self) -> tuple[bool, ...]:
        return tuple(self._committee_list)

    @committee.setter
    def committee(self, value: Sequence[bool] | None) -> None:
        self._committee_list = list(check_committee(value, len(self.models)))

    def extra_repr(self) -> str:
        extra = f", committee={self.committee}" if any(self.committee) else ""
        return f"thresholds={self.thresholds}, costs={self.costs}{extra}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A loop over a ModuleList is unrolled by TorchScript, which allows no break in it: `done` stands in.
        n_models = len(self.models)
        exit_counts = [0] * n_models
        out: torch.Tensor | None = None
        idx: torch.Tensor | None = None  # rows of the batch still undecided; None means all of them
        xs = x
        done = False
        committee = Committee(self._committee_list)
        for i, model in enumerate(self.models):
            if not done:
                logits = model(xs)
                _check_logits(i, logits, xs.shape[0], out)
                logits = committee.answer(i, logits.to(x.device))
                if out is None or idx is None:
                    answer = logits
                else:
                    dtype = torch.promote_types(out.dtype, logits.dtype)  # e.g. fp16 little, fp32 big
                    answer = out if out.dtype == dtype else out.to(dtype)
                    answer.index_copy_(0, idx, logits.to(dtype))
                if i == n_models - 1:
                    exit_counts[i] = logits.shape[0]  # the last model answers everything that reached it
                else:
                    go_on = ~committee.exits(i, logits, self._threshold_list[i])
                    n_on = int(go_on.sum())  # one sync per stage, needed anyway to skip empty batches
                    exit_counts[i] = logits.shape[0] - n_on
                    done = n_on == 0  # never call a model on an empty batch
                    if not done:
                        sel = go_on.nonzero().squeeze(1)
                        idx = sel if idx is None else idx.index_select(0, sel)
                        xs = xs.index_select(0, sel)
                        committee.keep(sel)
                        if answer is logits:
                            answer = answer.clone()  # never write into the tensor the model returned
                out = answer
        self._last_counts = exit_counts
        totals = self._total_counts
        self._total_counts = [totals[i] + exit_counts[i] for i in range(n_models)]
        assert out is not None  # the first member always runs
        return out

    @property
    def last_stats(self) -> CascadeStats | None:
        """Where the samples of the last call exited (None before the first call or after reset_stats())."""
        counts = self._last_counts
        return None if counts is None else CascadeStats.from_counts(counts, self.costs)

    @property
    def total_stats(self) -> "CascadeStats":
        """Statistics accumulated over every forward call since construction or reset_stats()."""
        return CascadeStats.from_counts(self._total_counts, self.costs)

    def reset_stats(self) -> None:
        self._total_counts = [0] * len(self.models)
        self._last_counts = None


def _check_logits(i: int, logits: torch.Tensor, rows: int, first: torch.Tensor | None) -> None:
    """Member i's output must be B x K logits for its `rows` inputs, with the first member's K."""
    if not isinstance(logits, torch.Tensor):  # in Python only: TorchScript knows the member's output type
        raise ValueError(
            f"models[{i}] must return B x num_classes logits for a batch of {rows}, got {type(logits).__name__}"
        )
    if logits.dim() != 2 or logits.shape[0] != rows:
        raise ValueError(
            f"models[{i}] must return B x num_classes logits for a batch of {rows}, got {list(logits.shape)}"
        )
    if first is not None and logits.shape[1] != first.shape[1]:
        raise ValueError(
            f"models[{i}] returns {logits.shape[1]} classes but models[0] returns "
            f"{first.shape[1]}; all models must share the label space"
        )
