"""Threshold sweeps and Little-Big calibration on cached probabilities (docs/method.md §9).

Everything here works on recorded softmax outputs (see cascade.record), never on models; every
threshold (tuple) of a grid is evaluated at once (cascade._search), so a sweep over thousands of
thresholds costs about one pass over the samples. Confidences are compared in float32 with the same
">= t" rule as Cascade, so a threshold chosen here routes identically at inference.
Thresholds are chosen on calibration data only; test tensors are evaluated with the chosen thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._checks import (
    check_big_cost,
    check_confidence,
    check_costs,
    check_fraction,
    check_grid_size,
    check_risk,
    check_stage_probs,
    conf_correct,
)
from ._grid import _exact_grid, _grid_candidates
from ._search import _evaluate, _feasible, _lower_bound, search, tolerance_query
from .guarantee import Certificate, certify_path, committee_probs, committee_settings, walk_path


@dataclass(frozen=True)
class SweepResult:
    """One entry per threshold of a 2-model cascade; float64 CPU tensors of equal length."""

    thresholds: torch.Tensor
    accuracy: torch.Tensor
    avg_cost: torch.Tensor
    exit_ratio: torch.Tensor  # share of samples answered by the little (first) model


@dataclass(frozen=True)
class Calibration:
    """Thresholds picked on calibration data and how they do there and, if given, on the test split.

    cost_reduction = 1 - avg_cost / big_cost (big_cost: the last model alone); it is negative when the
    cascade costs more than the big model alone, e.g. in the fallback.
    fallback: every threshold is 1.0, i.e. no cheaper routing kept accuracy within max_acc_drop and all
    samples go to the big model (cost = sum of all costs, unless some confidences are exactly 1.0).
    meets_tolerance: calibration accuracy >= big's calibration accuracy - max_acc_drop; with a confidence,
    the one-sided lower bound on (cascade - big) calibration accuracy, calib_lower_bound, is >= -max_acc_drop,
    or nothing exits before the big model.
    """

    thresholds: tuple[float, ...]
    max_acc_drop: float
    big_cost: float
    calib_accuracy: float
    calib_avg_cost: float
    calib_big_accuracy: float
    calib_cost_reduction: float
    calib_exit_ratios: tuple[float, ...]
    meets_tolerance: bool
    fallback: bool
    note: str
    test_accuracy: float | None = None
    test_avg_cost: float | None = None
    test_big_accuracy: float | None = None
    test_cost_reduction: float | None = None
    test_exit_ratios: tuple[float, ...] | None = None
    confidence: float | None = None
    calib_lower_bound: float | None = None
    # certify (cascade.guarantee): the promise is kept with probability >= 1 - delta over the calibration draw
    rule: str = (
        "empirical"  # "empirical" (measured accuracies), "nominal" (confidence, no search correction), "fixed-sequence"
    )
    delta: float | None = None
    committee: tuple[bool, ...] | None = None  # per member: answers with the mean of every member run so far
    families: int = 1  # configurations delta was split between (Bonferroni)

    @property
    def guaranteed(self) -> bool:
        """Whether the thresholds carry the fixed-sequence guarantee (and something exits before the big model)."""
        return self.rule == "fixed-sequence" and not self.fallback


def sweep(
    stage_probs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    costs: Sequence[float],
    thresholds_grid: Sequence[float] | torch.Tensor | None = None,
) -> SweepResult:
    """Accuracy, average cost and exit ratio of a little -> big cascade for every threshold.

    Default grid: the distinct observed confidences of the little model plus 0 and 1, ascending.
    That grid is exact: each of its points is a distinct operating point and no other threshold gives
    a point that is not already on it (see _exact_grid). A user grid is kept in the given order.
    """
    probs, labels = check_stage_probs(stage_probs, labels, min_stages=2)
    if len(probs) != 2:
        raise ValueError(
            f"sweep takes exactly 2 models (little, big), got {len(probs)}; "
            f"for N-pass cascades use calibrate or report_table"
        )
    costs = check_costs(costs, 2, required=True)
    conf, correct = conf_correct(probs, labels)
    if thresholds_grid is None:
        grid = _exact_grid(conf[0]).double()
    else:
        grid = torch.as_tensor(thresholds_grid, dtype=torch.float64).detach().cpu().flatten()
        if grid.numel() == 0 or not bool(((grid >= 0) & (grid <= 1)).all()):
            raise ValueError("thresholds_grid must be a non-empty sequence of numbers in [0, 1]")
    n = labels.numel()
    # Compare in float32, like Cascade; evaluate on the sorted distinct values, then map back.
    uniq, inverse = torch.unique(grid.float(), return_inverse=True)
    cands = _grid_candidates(conf, correct, costs, [uniq])
    return SweepResult(
        thresholds=grid,
        accuracy=cands.correct[inverse].double() / n,
        avg_cost=cands.cost[inverse] / n,
        exit_ratio=cands.exits[0][inverse].double() / n,
    )


def calibrate(
    calib_probs: Sequence[torch.Tensor],
    calib_labels: torch.Tensor,
    costs: Sequence[float],
    max_acc_drop: float = 0.0,
    test_probs: Sequence[torch.Tensor] | None = None,
    test_labels: torch.Tensor | None = None,
    *,
    confidence: float | None = None,
    grid_size: int = 100,
) -> Calibration:
    """Cheapest thresholds whose calibration accuracy >= big-alone calibration accuracy - max_acc_drop.

    calib_probs / test_probs: one N x K probability tensor per model, cheapest first, big last: softmax
    outputs (entries in [0, 1], rows summing to 1), not logits; labels: N class indices in [0, K).
    max_acc_drop: a fraction (0.01 = one accuracy point; 0 = lossless).
    confidence: None compares the measured calibration accuracies, so the cheapest feasible point sits where
    the noisy accuracy curve first touches the tolerance and new data lands on either side of it about
    equally often. A level such as 0.95 instead requires the one-sided lower confidence bound on the paired
    accuracy difference (cascade - big, per sample) to be >= -max_acc_drop: the tolerance then holds on new
    data from the same distribution with about that confidence (nominal: the search tests many thresholds
    and keeps the cheapest that passes), at the price of a larger threshold. With max_acc_drop = 0 that asks
    for evidence of a gain: a saver that does not beat the big model on the samples it would answer lets
    nothing exit (thresholds 1.0), so allow a small drop (e.g. 0.001) for such savers.
    Search: 2 and 3 models, exact: every observed confidence of each stage, all pairs for 3 models (time
    O(n^2) for n distinct confidences, measured in docs/engineering.md, "Threshold search time"; memory bounded;
    see cascade._three for why this finds the optimum over all thresholds in [0, 1]). 4 or more models: the product of per-stage
    grids (all distinct confidences, or grid_size quantiles when there are more), whose time and memory grow
    as grid_size ** (N - 1), fine for N = 4; grid_size is used only there, and lowered where the product would
    pass cascade._search.MAX_CANDIDATES tuples (memory stays bounded: 5 models search 36 values per stage, 6
    models 16; more than 11 models are a ValueError).
    No feasible thresholds except all-1.0: returns thresholds all 1.0 with fallback=True (see Calibration).
    """
    probs, labels, costs, big_cost, drop, (test_probs, test_labels) = _check_inputs(
        calib_probs, calib_labels, costs, max_acc_drop, test_probs, test_labels
    )
    confidence = check_confidence(confidence)
    check_grid_size(grid_size)

    conf, correct = conf_correct(probs, labels)
    n = labels.numel()
    big_correct = int(correct[-1].sum())
    (found,) = search(conf, correct, costs, [tolerance_query(big_correct, n, drop, confidence)], grid_size)
    thresholds = found if found is not None else (1.0,) * (len(probs) - 1)
    n_correct, n_differ, stats = _evaluate(conf, correct, costs, thresholds)
    chosen = torch.tensor([n_correct, n_differ, n - stats.exit_counts[-1]])
    meets = bool(_feasible(*chosen, big_correct, n, drop, confidence))
    bound = None if confidence is None else float(_lower_bound(chosen[0] - big_correct, chosen[1], n, confidence))
    fallback = all(t == 1.0 for t in thresholds)
    if not fallback:
        note = f"cheapest thresholds within {drop * 100:g} accuracy points of the big model on calibration data"
        if confidence is not None:
            note += f" with {confidence:.0%} one-sided confidence"
    elif meets:
        note = (
            "no cheaper thresholds stay within tolerance: thresholds 1.0 send everything to the big model "
            "(cost = sum of all costs)"
        )
        if stats.exit_counts[-1] < n:
            note += f", except {n - stats.exit_counts[-1]} samples whose confidence is exactly 1.0"
    else:
        note = (
            f"no thresholds meet the tolerance: even at 1.0, {n - stats.exit_counts[-1]} samples with "
            f"confidence exactly 1.0 exit early and lose accuracy; use the big model alone"
        )

    test = _on_test(test_probs, test_labels, costs, thresholds)
    return Calibration(
        rule="empirical" if confidence is None else "nominal",
        thresholds=thresholds,
        max_acc_drop=drop,
        confidence=confidence,
        calib_lower_bound=bound,
        big_cost=big_cost,
        calib_accuracy=n_correct / n,
        calib_avg_cost=stats.avg_cost,
        calib_big_accuracy=big_correct / n,
        calib_cost_reduction=1.0 - stats.avg_cost / big_cost,
        calib_exit_ratios=stats.exit_ratios,
        meets_tolerance=meets,
        fallback=fallback,
        note=note,
        **test,
    )


def certify(
    calib_probs: Sequence[torch.Tensor],
    calib_labels: torch.Tensor,
    costs: Sequence[float],
    max_acc_drop: float = 0.0,
    delta: float = 0.05,
    test_probs: Sequence[torch.Tensor] | None = None,
    test_labels: torch.Tensor | None = None,
    *,
    committee: bool | str | Sequence[bool] = "auto",
    families: int = 1,
) -> Calibration:
    """Thresholds with a guarantee (cascade.guarantee): with probability >= 1 - delta over the draw of the
    calibration set, the cascade's population accuracy is >= the big model's - max_acc_drop.

    One threshold shared by every stage, walked from 1 down by fixed-sequence testing; the cheapest certified
    point is kept. committee: "auto" walks every on/off setting of the committee exit for the stages after the
    first (delta split between them) and keeps the cheapest certified; True / False / a flag per member fix
    it. families: how many other configurations the caller chooses among on the same calibration data
    (e.g. member chains); delta is divided by it as well, so the caller's pick keeps the promise. Nothing
    certified: thresholds 1.0 without committee, fallback=True (use the big model alone).
    """
    probs, labels, costs, big_cost, eps, (test_probs, test_labels) = _check_inputs(
        calib_probs, calib_labels, costs, max_acc_drop, test_probs, test_labels
    )
    delta = check_risk(delta)
    if isinstance(families, bool) or not isinstance(families, int) or families < 1:
        raise ValueError(f"families must be an int >= 1 (configurations chosen among), got {families!r}")
    settings = committee_settings(len(probs), committee)
    share = delta / (len(settings) * families)
    big_right = probs[-1].argmax(dim=1) == labels
    answers = {flags: conf_correct(committee_probs(probs, flags), labels) for flags in settings}
    found: Certificate | None = None
    for flags, (conf, correct) in answers.items():
        cert = certify_path(walk_path(conf, correct, big_right, costs), flags, eps, share)
        if cert is not None and (found is None or cert.cost < found.cost):
            found = cert
    flags = found.committee if found else (False,) * len(probs)
    thresholds = (found.threshold if found else 1.0,) * (len(probs) - 1)
    # the chosen setting's answers, computed once above (the fallback's all-off setting may not have been walked)
    conf, correct = answers.get(flags) or conf_correct(probs, labels)
    n = labels.numel()
    n_correct, _, stats = _evaluate(conf, correct, costs, thresholds)
    if found:
        note = (
            f"cheapest certified thresholds: top-1 >= the big model's - {eps * 100:g} points on the population, "
            f"with probability >= {1 - delta:.0%} (fixed-sequence walk, delta split over {len(settings) * families} "
            f"configurations)"
        )
    else:
        note = (
            f"nothing certified at {eps * 100:g} points and delta {delta:g}: use the big model alone (thresholds "
            f"1.0 still let samples of confidence exactly 1.0 exit)"
        )
    return Calibration(
        thresholds=thresholds,
        max_acc_drop=eps,
        big_cost=big_cost,
        calib_accuracy=n_correct / n,
        calib_avg_cost=stats.avg_cost,
        calib_big_accuracy=int(big_right.sum()) / n,
        calib_cost_reduction=1.0 - stats.avg_cost / big_cost,
        calib_exit_ratios=stats.exit_ratios,
        meets_tolerance=found is not None,
        fallback=found is None,
        note=note,
        rule="fixed-sequence",
        delta=delta,
        committee=flags,
        families=len(settings) * families,
        **_on_test(test_probs, test_labels, costs, thresholds, flags),
    )


def _check_inputs(calib_probs, calib_labels, costs, max_acc_drop, test_probs, test_labels):
    """What calibrate and certify both take, checked: probs, labels, costs, the big cost, the tolerance and the
    (test_probs, test_labels) pair."""
    probs, labels = check_stage_probs(
        calib_probs, calib_labels, min_stages=2, what="calib_probs", labels_what="calib_labels"
    )
    costs = check_costs(costs, len(probs), required=True)
    big_cost = check_big_cost(costs)
    drop = check_fraction(max_acc_drop, "max_acc_drop")
    return probs, labels, costs, big_cost, drop, _check_test(test_probs, test_labels, probs)


def _check_test(test_probs, test_labels, probs: list[torch.Tensor]):
    if (test_probs is None) != (test_labels is None):
        raise ValueError("give both test_probs and test_labels, or neither")
    if test_probs is None:
        return None, None
    test_probs, test_labels = check_stage_probs(test_probs, test_labels, what="test_probs", labels_what="test_labels")
    if len(test_probs) != len(probs) or test_probs[0].shape[1] != probs[0].shape[1]:
        raise ValueError(
            f"test_probs must have one N x {probs[0].shape[1]} tensor per model ({len(probs)}), like calib_probs"
        )
    return test_probs, test_labels


def _on_test(test_probs, test_labels, costs, thresholds, committee: tuple[bool, ...] | None = None) -> dict:
    """The test_* fields of a Calibration for fixed thresholds (and committee), {} without test data."""
    if test_probs is None:
        return {}
    big_right = test_probs[-1].argmax(dim=1) == test_labels
    if committee is not None:
        test_probs = committee_probs(test_probs, committee)
    t_conf, t_correct = conf_correct(test_probs, test_labels)
    t_n = test_labels.numel()
    t_right, _, t_stats = _evaluate(t_conf, t_correct, costs, thresholds)
    return dict(
        test_accuracy=t_right / t_n,
        test_avg_cost=t_stats.avg_cost,
        test_big_accuracy=int(big_right.sum()) / t_n,
        test_cost_reduction=1.0 - t_stats.avg_cost / costs[-1],
        test_exit_ratios=t_stats.exit_ratios,
    )
