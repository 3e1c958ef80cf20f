"""TinySaver saver selection: match ratio r_match and cost delta ΔC (docs/method.md §9, TinySaver Eq. 7).

A saver S is paired with a big model B. Sweeping the exit threshold from 1 down, the samples with the
highest saver confidence exit first; r_match is the largest exit ratio at which the saver is still at
least as often right on the exited samples as B would have been on those same samples. Then
ΔC = C_S / C_B - r_match: a saver that can take a large share of the traffic for a small fraction of B's
cost has a strongly negative ΔC and wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch

from ._checks import _as_float, check_labels, check_probs


class SaverRow(NamedTuple):
    name: str
    delta_c: float
    r_match: float


def match_ratio(saver_probs: torch.Tensor, big_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """r_match: the largest m / N over exit sets "saver confidence >= t" such that the saver's correct
    count on the m exited samples is >= the big model's correct count on the same samples; 0.0 when no
    non-empty exit set qualifies.

    Exit sets are the top-m samples by saver confidence, cut only between distinct confidence values:
    samples with equal confidence always exit together, as they would under any threshold.
    Vectorised: one sort plus one cumulative sum, O(N log N).
    """
    saver = check_probs(saver_probs, "saver_probs")
    big = check_probs(big_probs, "big_probs")
    if saver.shape != big.shape:
        raise ValueError(
            f"saver_probs and big_probs must have the same N x K shape, got {tuple(saver.shape)} and {tuple(big.shape)}"
        )
    n = saver.shape[0]
    if n == 0:
        raise ValueError("match_ratio needs at least one sample")
    labels = check_labels(labels, n, num_classes=saver.shape[1])
    conf = saver.max(dim=1).values
    gain = (saver.argmax(dim=1) == labels).long() - (big.argmax(dim=1) == labels).long()
    conf_sorted, order = torch.sort(conf, descending=True, stable=True)
    lead = gain[order].cumsum(0)  # lead[m-1]: saver minus big correct count on the top-m exit set
    # A cut after position j is a real threshold only if the next sample is strictly less confident.
    cut = torch.ones(n, dtype=torch.bool)
    cut[:-1] = conf_sorted[:-1] > conf_sorted[1:]
    ok = (cut & (lead >= 0)).nonzero()
    if ok.numel() == 0:
        return 0.0
    return (int(ok.max()) + 1) / n


def delta_cost(
    saver_probs: torch.Tensor, big_probs: torch.Tensor, labels: torch.Tensor, saver_cost: float, big_cost: float
) -> float:
    """ΔC = saver_cost / big_cost - r_match (lower is better; below 0 means the saver pays for itself)."""
    return _delta_from_ratio(saver_cost, big_cost, match_ratio(saver_probs, big_probs, labels))


def select_saver(
    pool: Mapping[str, tuple[torch.Tensor, float]], big: tuple[torch.Tensor, float], labels: torch.Tensor
) -> list[SaverRow]:
    """Rank candidate savers by ΔC, best (lowest) first; ties keep the pool's order.

    pool: name -> (probs N x K, cost); big: (probs N x K, cost). Returns SaverRow(name, delta_c, r_match)
    tuples.
    """
    if not pool:
        raise ValueError("select_saver needs a non-empty pool: {name: (probs, cost)}")
    big_probs, big_cost = big
    rows = []
    for name, (probs, cost) in pool.items():
        r = match_ratio(probs, big_probs, labels)
        rows.append(SaverRow(name, _delta_from_ratio(cost, big_cost, r), r))
    return sorted(rows, key=lambda row: row.delta_c)  # sorted() is stable


def _delta_from_ratio(saver_cost: float, big_cost: float, r_match: float) -> float:
    saver_cost = _as_float(saver_cost, "saver_cost")
    big_cost = _as_float(big_cost, "big_cost")
    if not (math.isfinite(saver_cost) and saver_cost >= 0.0):
        raise ValueError(f"saver_cost={saver_cost!r} must be finite and >= 0 (MACs per sample)")
    if not (math.isfinite(big_cost) and big_cost > 0.0):
        raise ValueError(f"big_cost={big_cost!r} must be finite and > 0 (MACs per sample); ΔC divides by it")
    return saver_cost / big_cost - r_match
