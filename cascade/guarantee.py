"""Risk-controlled calibration: thresholds that keep a promise about the population (docs/method.md §9,
"The guarantee").

The promise: with probability at least 1 - delta over the draw of the calibration set, the cascade's
accuracy on the population the calibration set was drawn from is at least the big model's minus eps.

How (Learn then Test, fixed-sequence testing):
1. A path of operating points is fixed before looking at the data: one threshold lambda shared by every
   stage, from 1 (the most conservative) down to 0 (the cheapest); a sample leaves at the first stage whose
   confidence is >= lambda. The statistics only change where lambda crosses an observed confidence, so
   walking those breakpoints is the same as walking every float32 value in [0, 1] in order.
2. At each point the null hypothesis "accuracy(cascade) < accuracy(big) - eps" is tested at level delta
   with an exact test on the paired outcomes (see `certified`). The walk stops at the first point it
   cannot reject; every point before it is certified. Fixed-sequence testing keeps the chance that any
   certified point is bad at or below delta, however many points are walked, so the cheapest certified
   point may be kept.
3. Several configurations (committee on or off at each stage, or several member chains) are walked with
   delta split evenly between them (Bonferroni), so picking the cheapest certified one over all of them
   keeps the promise too.

Committee exit: a stage after the first may answer with the mean of the softmax probabilities of every
member that has run on that sample (they are already computed: zero extra MACs). `committee_probs` gives each
stage's answer under a committee setting; the routing rule is unchanged (max probability >= threshold).

scipy.stats gives the exact binomial tail and the Clopper-Pearson bound; it is imported only here, when a
guarantee is computed, so the rest of cascade/ still needs torch alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Part of delta spent on an upper bound for the disagreement rate when eps > 0 (see `certified`).
NUISANCE_SHARE = 0.2


def committee_probs(probs: Sequence[torch.Tensor], committee: Sequence[bool]) -> list[torch.Tensor]:
    """Each stage's answer: its own probabilities, or with committee[i] the mean of members 0..i.

    Summed in stage order and divided once, in float32, exactly as Cascade.forward does, so a threshold
    chosen on these routes the same samples at inference."""
    if len(committee) != len(probs) or (committee and committee[0]):
        raise ValueError("committee needs one flag per member and the first member cannot use it (nothing ran before)")
    out, running = [], None
    for i, p in enumerate(probs):
        running = p.clone() if running is None else running + p
        out.append(running / (i + 1) if committee[i] else p)
    return out


def committee_settings(n_models: int, committee: bool | str | Sequence[bool]) -> list[tuple[bool, ...]]:
    """The committee settings to walk: "auto" tries every on/off combination of the stages after the first,
    True puts it on the last stage only (the big model answers with everything that ran), False nowhere,
    a sequence is taken as given."""
    if committee == "auto":
        return [(False, *flags) for flags in itertools.product((False, True), repeat=n_models - 1)]
    if committee is True or committee is False:
        return [(False,) * (n_models - 1) + (bool(committee),)] if n_models > 1 else [(False,)]
    flags = tuple(bool(f) for f in committee)
    if len(flags) != n_models or (flags and flags[0]):
        raise ValueError(
            f"committee must be 'auto', True, False or {n_models} flags with the first False, got {committee!r}"
        )
    return [flags]


@dataclass(frozen=True)
class Path:
    """The shared-threshold path on one data set: entry j is the operating point at lambdas[j] (descending).

    wins / losses: samples the cascade gets right where the big model alone is wrong, and the reverse;
    cost: the sum over samples of the MACs each one ran (float64)."""

    lambdas: torch.Tensor
    wins: torch.Tensor
    losses: torch.Tensor
    cost: torch.Tensor
    n: int


def walk_path(conf: torch.Tensor, correct: torch.Tensor, big_correct: torch.Tensor, costs: Sequence[float]) -> Path:
    """Counts at every breakpoint of the shared-threshold path, in O(S N log N), no loop over samples.

    conf / correct: S x N confidences and correctness of each stage's answer (committee applied);
    big_correct: N, the big model alone. As lambda falls, a sample moves to an earlier stage each time
    lambda passes a confidence that beats every earlier stage's ("a record"): stage k takes over from the
    next record after it (or the last stage), so each record is one event that changes the counts."""
    n_stages, n = conf.shape
    win = correct & ~big_correct
    loss = ~correct & big_correct
    spent = torch.tensor(costs, dtype=torch.float64).cumsum(0)  # MACs of a sample answered at stage k
    free = n_stages - 1
    # record[k]: stage k's confidence beats every earlier stage's, so lowering lambda past it moves the sample.
    best_before = torch.full((n,), -1.0)
    record = torch.zeros(free, n, dtype=torch.bool)
    for k in range(free):
        record[k] = conf[k] > best_before
        best_before = torch.maximum(best_before, conf[k])
    takes_over_from = torch.empty(free, n, dtype=torch.long)
    nxt = torch.full((n,), free, dtype=torch.long)
    for k in reversed(range(free)):
        takes_over_from[k] = nxt
        nxt = torch.where(record[k], k, nxt)
    stage_k = torch.arange(free)[:, None].expand(free, n)
    col = torch.arange(n)[None].expand(free, n)
    prev = takes_over_from
    lam = conf[:free][record]
    d_win = (win[stage_k, col].long() - win[prev, col].long())[record]
    d_loss = (loss[stage_k, col].long() - loss[prev, col].long())[record]
    d_cost = (spent[stage_k] - spent[prev])[record]
    order = torch.argsort(lam, descending=True, stable=True)
    lam, d_win, d_loss, d_cost = lam[order], d_win[order], d_loss[order], d_cost[order]
    # One point per distinct lambda: the counts after every event at that value.
    last = torch.ones(lam.numel(), dtype=torch.bool)
    last[:-1] = lam[:-1] != lam[1:]
    wins = int(win[free].sum()) + d_win.cumsum(0)
    losses = int(loss[free].sum()) + d_loss.cumsum(0)
    cost = n * float(spent[-1]) + d_cost.cumsum(0)
    return Path(lam[last].double(), wins[last], losses[last], cost[last], n)


def certified(wins: torch.Tensor, losses: torch.Tensor, n: int, eps: float, delta: float) -> torch.Tensor:
    """Which points reject "accuracy(cascade) < accuracy(big) - eps" at level delta (exact, conservative).

    Per sample the cascade wins (right where big is wrong, rate p_w), loses (the reverse, p_l) or ties; the
    null is p_l - p_w > eps. Given the D = wins + losses disagreements, losses ~ Binomial(D, q) with
    q = p_l / (p_l + p_w).
    - eps = 0: the null is q > 1/2; reject when P(Binomial(D, 1/2) <= losses) <= delta (an exact one-sided
      McNemar test).
    - eps > 0: the null implies q >= 1/2 + eps / (2 s) with s = p_l + p_w. With s_up, the one-sided
      Clopper-Pearson upper bound on s at level NUISANCE_SHARE * delta, reject when s_up <= eps (a risk
      that small cannot exceed eps) or P(Binomial(D, q0) <= losses) <= the rest of delta, with
      q0 = 1/2 + eps / (2 s_up). The two errors add up to at most delta.
    """
    from scipy import stats  # the one place cascade/ uses scipy (module docstring)

    w = wins.double().numpy()
    lo = losses.double().numpy()
    d = w + lo
    if eps == 0:
        return torch.from_numpy(stats.binom.cdf(lo, d, 0.5) <= delta)
    nuisance = NUISANCE_SHARE * delta
    s_up = stats.beta.ppf(1.0 - nuisance, d + 1, n - d)
    s_up[d >= n] = 1.0
    q0 = (0.5 + eps / (2.0 * s_up)).clip(max=1.0)
    tail = stats.binom.cdf(lo, d, q0)
    return torch.from_numpy((s_up <= eps) | (tail <= delta - nuisance))


def fixed_sequence(path: Path, eps: float, delta: float) -> int:
    """How many points of the path, from its start, are certified (the walk stops at the first failure).

    Tested in growing blocks from the start: the walk usually stops long before the end of the path, and the
    exact tails cost about as much per point as everything else here together."""
    start, block, total = 0, 64, path.wins.numel()
    while start < total:
        end = min(total, start + block)
        ok = certified(path.wins[start:end], path.losses[start:end], path.n, eps, delta)
        failed = (~ok).nonzero()
        if failed.numel():
            return start + int(failed[0])
        start, block = end, block * 4
    return total


@dataclass(frozen=True)
class Certificate:
    """The cheapest certified point of one configuration: threshold (shared by every stage), its counts on
    the calibration data, and how many points the walk certified (0: none, the big model alone)."""

    committee: tuple[bool, ...]
    threshold: float
    cost: float
    wins: int
    losses: int
    steps: int


def certify_path(path: Path, committee: tuple[bool, ...], eps: float, delta: float) -> Certificate | None:
    """The cheapest point among those the fixed-sequence walk certifies (ties: the larger threshold), or
    None when the walk certifies nothing."""
    steps = fixed_sequence(path, eps, delta)
    if steps == 0:
        return None
    cost = path.cost[:steps]
    j = int((cost == cost.min()).nonzero()[0])
    return Certificate(committee, float(path.lambdas[j]), float(cost[j]), int(path.wins[j]), int(path.losses[j]), steps)
