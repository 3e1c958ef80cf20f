"""Selection metrics (Eq. 6 and its ablations, docs/method.md §8): how a fine-tuned candidate is scored,
lower is better. One registered class per metric (CompressConfig.metric), as structures and adapters are.

This module imports no other dcvit module at load time: config reads the registry while it loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # pragma: no cover  (not dcvit.engine: that would close an import circle through config)
    import torch
    from torch import nn

_METRICS: dict[str, type[Metric]] = {}


class Metric:
    """Scores one candidate; the Engine computes Eq. 6's KL on the synthetic set for every candidate first."""

    name: ClassVar[str] = ""
    needs_metric_set: ClassVar[bool] = True  # False: scores without the synthetic set, which is then not made
    needs_features: ClassVar[bool] = False  # the teacher's output tokens on the synthetic set (Engine.metric_features)
    # The search's trial re-scores its leading edits by KL after recovery: comparable only when KL is the metric.
    confirms_search: ClassVar[bool] = False

    def score(self, engine, model: nn.Module, x: torch.Tensor, kl: float, train_loss: float) -> float:
        """The candidate `model`'s score; `engine` (dcvit.engine.Engine) holds the metric set and the teacher's
        outputs on it, `x` the metric set's images; `kl` and `train_loss` are already measured."""
        raise NotImplementedError


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Register a metric class under its name (usable as a decorator)."""
    _METRICS[cls.name] = cls
    return cls


def metric_names() -> tuple[str, ...]:
    """The registered names, in registration order (the built-ins: kl, mse, train_loss)."""
    return tuple(_METRICS)


def get_metric(name: str) -> Metric:
    if name not in _METRICS:
        raise ValueError(f"metric must be one of {metric_names()}; got {name!r}")
    return _METRICS[name]()


@register_metric
class Kl(Metric):
    """Eq. 6: KL divergence of the candidate's predictions from the teacher's on the synthetic set (the paper)."""

    name = "kl"
    confirms_search = True

    def score(self, engine, model, x, kl, train_loss):
        return kl


@register_metric
class Mse(Metric):
    """Feature MSE to the teacher's output tokens on the synthetic set (an ablation)."""

    name = "mse"
    needs_features = True

    def score(self, engine, model, x, kl, train_loss):
        from .scoring import feature_mse

        return feature_mse(engine.metric_features, model, x)


@register_metric
class TrainLoss(Metric):
    """The few-shot mimicking loss after the trial fine-tune (the ablation, and the block-dropping baseline)."""

    name = "train_loss"
    needs_metric_set = False

    def score(self, engine, model, x, kl, train_loss):
        return train_loss
