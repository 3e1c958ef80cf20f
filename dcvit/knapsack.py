"""Choosing a step's edits (docs/method.md §11, step 3): a multiple-choice knapsack over the scored edits, at most
one per block, that saves the step's MACs at the least total score; and, when the last step lands past its
target, the record of why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .edits import Edit

KNAPSACK_RESOLUTION = 1000  # MACs buckets: savings are rounded down to need / 1000, so the target always holds


def _knapsack(edits: Sequence[Edit], need: int, unit: int, top: int) -> tuple[list[float], list[list]]:
    """Multiple-choice knapsack over savings in buckets of `unit` MACs (an edit's saving rounded down, so a
    chosen set never saves less than its bucket says): best[j] is the least total score of a set (at most one
    edit per block) filling exactly j buckets, bucket `top` standing for `top` or more; `back` rebuilds it."""
    inf = float("inf")
    best = [0.0] + [inf] * top
    back: list[list] = []
    for block in sorted({e.block for e in edits}):
        new, choice = list(best), [None] * (top + 1)
        for e in (e for e in edits if e.block == block):
            step = e.saved // unit
            cost = max(e.score, 0.0) + 1e-9 * e.saved / need  # ties: the smaller edit
            for j in range(top + 1):
                if best[j] < inf and best[j] + cost < new[min(top, j + step)]:
                    new[min(top, j + step)] = best[j] + cost
                    choice[min(top, j + step)] = (e, j)
        back.append(choice)
        best = new
    return best, back


def _rebuild(back: list[list], j: int) -> list[Edit]:
    chosen = []
    for choice in reversed(back):
        if choice[j] is not None:
            e, j = choice[j]
            chosen.append(e)
    return sorted(chosen, key=lambda e: e.block)


def choose(edits: Sequence[Edit], need: int) -> list[Edit]:
    """Multiple-choice knapsack: at most one edit per block, total saving >= need, least total score."""
    if need <= 0:
        return []
    unit = max(1, math.ceil(need / KNAPSACK_RESOLUTION))
    cap = math.ceil(need / unit)
    best, back = _knapsack(edits, need, unit, cap)
    if best[cap] == float("inf"):
        raise ValueError(f"the candidate blocks cannot save {need} more MACs; the target is below what they reach")
    return _rebuild(back, cap)


def choose_within(edits: Sequence[Edit], need: int, slack: int) -> list[Edit] | None:
    """The least-score set saving between `need` and about `need + slack` MACs, or None when no set of
    `edits` lands there (the bound is on the rounded-down buckets: it may pass by a few buckets' MACs)."""
    unit = max(1, math.ceil(need / KNAPSACK_RESOLUTION))
    cap = math.ceil(need / unit)
    top = cap + slack // unit + 1  # the last bucket holds every set that saves more than need + slack
    best, back = _knapsack(edits, need, unit, top)
    j = min(range(cap, top), key=lambda j: best[j])
    return None if best[j] == float("inf") else _rebuild(back, j)


def landing(edits: Sequence[Edit], chosen: Sequence[Edit], need: int, tolerance: int) -> dict | None:
    """Why the last step lands more than `tolerance` MACs past the target, or None when it does not: the
    least-score set saves more than needed, so record what a set within the tolerance would have scored."""
    over = sum(e.saved for e in chosen) - need
    if over <= tolerance:
        return None
    closest = choose_within(edits, need, tolerance)
    return {
        "over": over,
        "tolerance": tolerance,
        "score": sum(e.score for e in chosen),
        "closest_score": None if closest is None else sum(e.score for e in closest),
        "closest_saved": None if closest is None else sum(e.saved for e in closest),
    }


def landing_note(record: dict, macs_original: int) -> str:
    """One line for the output: how far past the target a search landed and why."""
    over = 100 * record["over"] / macs_original
    tolerance = 100 * record["tolerance"] / macs_original
    why = (
        "no set of the offered edits (MLP widths of 3/4, 1/2, 1/4, 1/8 or none of the original, attention "
        f"removed, whole blocks dropped) lands within {tolerance:.0f} point"
        if record["closest_score"] is None
        else f"the best set within {tolerance:.0f} point scores {record['closest_score']:.4f} on the synthetic "
        f"set against {record['score']:.4f}, and the search keeps the lower"
    )
    return f"lands {over:.1f} points of the MACs below the target: {why}"
