"""Choosing a cascade among several member chains without breaking the guarantee (docs/method.md §9).

Picking the cheapest of many certified chains on the same calibration data would spend the guarantee once per
chain. Instead the calibration set is split at random (seeded, fixed before any model output is looked at):
the first part picks the chain and its committee setting (the cheapest point the fixed-sequence walk certifies
there), the second part certifies that one choice at the full delta. The second part never influenced the
choice, so the promise of cascade.certify holds for the chosen cascade. With one chain there is nothing to
choose and the whole calibration set certifies it (committee settings share delta, see cascade.certify).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .calibration import Calibration, certify


@dataclass(frozen=True)
class Choice:
    """The chosen chain (member names, cheapest first, big last) and its certified Calibration (calib_* fields:
    the certify part; test_* fields: the test split when given). candidates: chains it was chosen among."""

    members: tuple[str, ...]
    calibration: Calibration
    candidates: int
    select_size: int
    certify_size: int


def split_indices(n: int, select_share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n) into a select part (select_share of it) and a certify part."""
    if not 0.0 < select_share < 1.0:
        raise ValueError(f"select_share={select_share!r} must be in (0, 1): part of the calibration set that chooses")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, min(n - 1, round(select_share * n)))
    return order[:cut], order[cut:]


def choose_cascade(
    probs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    costs: Mapping[str, float],
    chains: Sequence[Sequence[str]],
    max_acc_drop: float = 0.0,
    delta: float = 0.05,
    *,
    committee: bool | str = "auto",
    select_share: float = 0.5,
    seed: int = 0,
    test_probs: Mapping[str, torch.Tensor] | None = None,
    test_labels: torch.Tensor | None = None,
) -> Choice:
    """The cheapest certified cascade among `chains` (see the module docstring); when nothing is certified,
    the chain chosen on the select part with fallback=True (use the big model alone).

    probs: name -> N x K calibration probabilities (every member of every chain); costs: name -> MACs."""
    chains = [tuple(c) for c in chains]
    if not chains or any(len(c) < 2 for c in chains):
        raise ValueError("chains must be a non-empty list of member lists, each with a saver and the big model last")
    missing = sorted({n for c in chains for n in c} - set(probs))
    if missing:
        raise ValueError(f"no calibration probabilities for {', '.join(missing)}")

    def run(chain, rows=None, flags=committee, test=False):
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        extra = {}
        if test and test_probs is not None:
            extra = dict(test_probs=[test_probs[n] for n in chain], test_labels=test_labels)
        return certify(
            [pick(probs[n]) for n in chain],
            pick(labels),
            [costs[n] for n in chain],
            max_acc_drop,
            delta,
            committee=flags,
            **extra,
        )

    n = labels.numel()
    if len(chains) == 1:
        return Choice(chains[0], run(chains[0], test=True), 1, 0, n)
    select, keep = split_indices(n, select_share, seed)
    tried = [(chain, run(chain, select)) for chain in chains]
    certified = [t for t in tried if not t[1].fallback]
    chain, picked = min(certified or tried, key=lambda t: t[1].calib_avg_cost)
    final = run(chain, keep, flags=picked.committee if certified else committee, test=True)
    return Choice(chain, final, len(chains), select.numel(), keep.numel())
