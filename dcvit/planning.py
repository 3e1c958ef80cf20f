"""Structure from a target MACs (docs/method.md §2, Eq. 1-2, and §11 for the structure search).

Eq. 1: n = ceil((M_o - M_p) / (M_attn + M_mlp)) blocks lose their attention;
Eq. 2: their MLPs keep H' = floor((1 - r) * H) units, r = ((M_o - M_p) - n * M_attn) / (n * M_mlp).
Per-block values are used, taking the blocks that save least, so any choice of n candidates fits the target.
Blocks may differ in width (Swin's stages, mixed MLP ratios): 1 - r is then a share of each block's own MLP,
stated as the units kept by the widest candidate MLP (Plan.hidden_for scales it to every other width).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

from . import checks
from .fingerprint import ModelFingerprint, fingerprint
from .macs import MacsProfile, count_macs, macs_profile
from .structure_registry import BASELINE_STRUCTURE, DEFAULT_STRUCTURE, PAPER_STRUCTURE, get_structure, structure_names


class BasePlan:
    """What every plan type shares: `structure` (a name in dcvit.structures' registry), `macs_original`,
    `macs_target`, `candidate_blocks` and `input_size`; its structure describes it."""

    structure: str

    def describe(self) -> str:
        return get_structure(self.structure).describe(self)

    def record(self) -> dict:
        """The plan's own fields in result.json (CompressionResult.summary)."""
        return {}

    def as_dict(self) -> dict:
        """The plan as JSON (`dcvit plan --json`): its fields, tuples as lists, the model's fingerprint a dict."""
        return {
            k: (list(v) if isinstance(v, tuple) else v.as_dict() if isinstance(v, ModelFingerprint) else v)
            for k, v in self.__dict__.items()
        }


@dataclass(frozen=True)
class Plan(BasePlan):
    """Blocks to compress, found by the paper's Eq. 1-2 (`plan`): n blocks lose their attention and keep
    mlp_hidden MLP units; the block-dropping baseline's plan (`plan_block_drop`) drops n whole blocks."""

    n_blocks: int
    mlp_hidden: int  # kept hidden units of a compressed block of width mlp_hidden_original (the widest candidate)
    remove_attention: bool
    macs_original: int
    macs_target: int
    macs_planned: int  # measured on the compressed module, not taken from the formula
    candidate_blocks: tuple[int, ...]
    mlp_hidden_original: int
    input_size: tuple[int, int, int]
    structure: str = PAPER_STRUCTURE
    fingerprint: ModelFingerprint | None = None  # the model it was made for (None: built by hand, unchecked)

    @property
    def keep_ratio(self) -> float:
        return self.mlp_hidden / self.mlp_hidden_original

    def hidden_for(self, hidden: int) -> int:
        """Kept units for a block of `hidden` units: the same share of its own width (non-uniform models)."""
        if hidden == self.mlp_hidden_original:
            return self.mlp_hidden
        # Integer floor, never above keep_ratio * hidden: the plan's MACs bound holds for every width.
        return max(1, self.mlp_hidden * hidden // self.mlp_hidden_original)

    def record(self) -> dict:
        return {
            "mlp_hidden": self.mlp_hidden,
            "mlp_hidden_original": self.mlp_hidden_original,
            "remove_attention": self.remove_attention,
        }


@dataclass(frozen=True)
class SearchPlan(BasePlan):
    """A structure search's plan (`plan_search`): the target, the candidate blocks and the number of
    progressive steps; the run chooses every block's edit, so nothing else is planned."""

    structure: str
    steps: int  # progressive steps, each fine-tuned for CompressConfig.epochs
    macs_original: int
    macs_target: int
    candidate_blocks: tuple[int, ...]
    input_size: tuple[int, int, int]
    mlp_hidden_original: int  # the widest candidate MLP's units, reported only: the search measures every edit
    fingerprint: ModelFingerprint | None = None  # the model it was made for (None: built by hand, unchecked)

    @property
    def macs_planned(self) -> int:
        """The target: the run measures its model's MACs; nothing is known before."""
        return self.macs_target

    def record(self) -> dict:
        # Search plans once shared Plan's fields (the step count in n_blocks, every unit and attention kept):
        # result.json keeps those keys, with those values, for its readers.
        width = self.mlp_hidden_original
        return {"mlp_hidden": width, "mlp_hidden_original": width, "remove_attention": False, "steps": self.steps}

    def as_dict(self) -> dict:
        legacy = {"n_blocks": self.steps, "mlp_hidden": self.mlp_hidden_original, "remove_attention": False}
        return {**super().as_dict(), **legacy, "macs_planned": self.macs_planned}


def resolve_target(target_macs: float, macs_original: int) -> int:
    """A fraction in (0, 1) of the original, or absolute MACs above 1."""
    try:
        target = float(target_macs)
    except (TypeError, ValueError):
        raise ValueError(
            f"target MACs must be a number: a fraction in (0, 1) or absolute MACs; got {target_macs!r}"
        ) from None
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"target MACs must be positive: a fraction in (0, 1) or absolute MACs; got {target_macs}")
    absolute = int(target * macs_original) if target < 1 else int(target)
    if target == 1 or absolute >= macs_original:
        raise ValueError(
            f"target MACs {target_macs} is not below the original model's {macs_original} MACs; "
            f"give a fraction in (0, 1) or fewer MACs"
        )
    return absolute


def default_candidates(num_blocks: int) -> tuple[int, ...]:
    """All blocks but the first and the last (the reference uses blocks 1..10 of 12)."""
    return tuple(range(1, num_blocks - 1)) if num_blocks > 2 else tuple(range(num_blocks))


def block_drop_macs(model: nn.Module, drop: int) -> int:
    """MACs after dropping the first `drop` default candidate blocks: the equal-MACs point at which DC-ViT and
    block dropping are compared (the demo, `dcvit bench`, the compression benchmark)."""
    from .arch import get_adapter
    from .surgery import drop_blocks

    candidates = default_candidates(len(get_adapter(model).blocks(model)))
    return count_macs(drop_blocks(model, candidates[:drop]))


def floor_macs(profile: MacsProfile, candidates: Sequence[int]) -> int:
    """The smallest reachable MACs: every candidate without attention and with a 1-unit MLP."""
    return profile.total - sum(profile.attn[b] + profile.mlp[b] - profile.mlp_unit(b) for b in candidates)


def _least_saving_first(profile: MacsProfile, candidates: Sequence[int], keep: Fraction = Fraction(0)) -> list[int]:
    """Candidates by what compressing them saves (attention + the dropped share of the MLP), smallest first."""
    return sorted(candidates, key=lambda b: profile.attn[b] + (1 - keep) * profile.mlp[b])


def _candidates(profile: MacsProfile, candidate_blocks: Sequence[int] | None) -> tuple[int, ...]:
    """The given candidate blocks, checked, or the default ones."""
    num_blocks = len(profile.attn)
    candidates = tuple(candidate_blocks) if candidate_blocks is not None else default_candidates(num_blocks)
    if not candidates or any(not checks.is_integer(b) or not 0 <= b < num_blocks for b in candidates):
        raise ValueError(f"candidate blocks must be a non-empty subset of 0..{num_blocks - 1}; got {list(candidates)}")
    repeated = sorted({b for b in candidates if candidates.count(b) > 1})
    if repeated:  # a repeated block would be counted as several blocks' savings: the plan would miss its target
        raise ValueError(f"candidate blocks must be distinct; got {list(candidates)} (repeated: {repeated})")
    return tuple(int(b) for b in candidates)


def _reference_width(profile: MacsProfile, candidates: Sequence[int]) -> int:
    """The widest candidate MLP: a plan states its kept share as units of it, the finest steps of the share."""
    return max(profile.mlp_hidden[b] for b in candidates)


def _eq2_keep(profile: MacsProfile, chosen: Sequence[int], delta: int) -> Fraction:
    """Eq. 2 for the blocks `chosen`: 1 - r, the share of each MLP kept, in exact arithmetic (so that floor()
    never rounds a width up past the target). Below 0 when the blocks cannot save `delta` even whole."""
    mlp_savings_needed = max(0, delta - sum(profile.attn[b] for b in chosen))
    return 1 - Fraction(mlp_savings_needed, sum(profile.mlp[b] for b in chosen))


def _conservative_keep(profile: MacsProfile, candidates: Sequence[int], n: int, delta: int) -> Fraction:
    """The kept share with which every choice of n candidates saves `delta`: Eq. 2 on the n blocks that save
    least. Which blocks save least depends on the share when blocks differ (Swin stages, mixed MLP widths),
    so re-rank at the new share until the ranking stands; each re-ranking lowers the share (homogeneous
    blocks stop at once, with the paper's values)."""
    chosen = _least_saving_first(profile, candidates)[:n]
    keep = _eq2_keep(profile, chosen, delta)
    for _ in range(len(candidates)):
        ranked = _least_saving_first(profile, candidates, min(max(keep, Fraction(0)), Fraction(1)))[:n]
        lower = _eq2_keep(profile, ranked, delta)
        if lower >= keep:
            break
        keep = lower
    return keep


def _structure(profile: MacsProfile, candidates: Sequence[int], delta: int, forced: int | None):
    """(n, remove_attention, kept units of the widest candidate MLP) for a MACs reduction `delta`."""
    width = _reference_width(profile, candidates)
    smallest_mlp = min(profile.mlp[b] for b in candidates)
    if forced is None and delta < min(profile.attn[b] for b in candidates) and delta < smallest_mlp:
        # Less than one attention module: keep every attention, narrow one MLP (dense small reductions);
        # the share fits the smallest MLP, so whichever block the trial picks saves enough.
        return 1, False, math.floor((1 - Fraction(delta, smallest_mlp)) * width)
    order = _least_saving_first(profile, candidates)
    n = forced or next(
        k for k in range(1, len(order) + 1) if sum(profile.attn[b] + profile.mlp[b] for b in order[:k]) >= delta
    )
    return n, True, math.floor(_conservative_keep(profile, candidates, n, delta) * width)


def _worst_blocks(profile: MacsProfile, draft: Plan) -> list[int]:
    """The n candidates that the plan makes save least, units rounded as apply_plan rounds them: the
    blocks on which the planned MACs are measured, since the trial may pick any n."""

    def saving(b: int) -> float:
        kept = draft.hidden_for(profile.mlp_hidden[b])
        return draft.remove_attention * profile.attn[b] + (profile.mlp_hidden[b] - kept) * profile.mlp_unit(b)

    return sorted(draft.candidate_blocks, key=saving)[: draft.n_blocks]


def plan(
    model: nn.Module,
    target_macs: float,
    *,
    blocks: int | None = None,
    input_size: Sequence[int] | None = None,
    candidate_blocks: Sequence[int] | None = None,
) -> Plan:
    """Plan the compressed structure for `target_macs` (fraction in (0, 1), or absolute MACs).

    `blocks=n` forces the number of compressed blocks. Raises ValueError for unreachable targets, and for
    a plan whose MACs, measured on the candidates it makes save least, are more than 1% above the target.
    """
    from .surgery import apply_plan  # surgery needs Plan; import here to keep the modules acyclic

    if blocks is not None:  # before the MACs are counted
        checks.integer("blocks", blocks, 1, note=" or None")
    profile = macs_profile(model, input_size)
    candidates = _candidates(profile, candidate_blocks)
    target = resolve_target(target_macs, profile.total)
    floor = floor_macs(profile, candidates)
    if target < floor:
        raise ValueError(
            f"target {target / 1e6:.3f}M MACs is below the floor of {floor / 1e6:.3f}M MACs "
            f"({100 * floor / profile.total:.1f}% of the original: all {len(candidates)} candidate "
            f"blocks without attention and with 1 MLP unit)"
        )
    if blocks is not None:
        blocks = checks.integer("blocks", blocks, 1, len(candidates), " (the candidate blocks) or None")

    delta = profile.total - target
    n, remove_attention, kept = _structure(profile, candidates, delta, blocks)
    if kept <= 0 and blocks is None and n < len(candidates):
        # Degenerate plan (plain block dropping): compress one more block instead, as the paper's matched-MACs runs do.
        n, remove_attention, kept = _structure(profile, candidates, delta, n + 1)
    if kept <= 0:
        raise ValueError(
            f"compressing {n} blocks leaves no MLP units to reach {target} MACs; "
            f"use more blocks (blocks={n + 1}) or drop_blocks for plain block dropping"
        )
    width = _reference_width(profile, candidates)
    draft = Plan(n, min(kept, width), remove_attention, profile.total, target, 0, candidates, width, profile.input_size)
    planned = count_macs(apply_plan(model, draft, _worst_blocks(profile, draft)), profile.input_size)
    _check_planned(planned, target, profile.total, "try other candidate blocks or blocks=n")
    return Plan(**{**draft.__dict__, "macs_planned": planned, "fingerprint": fingerprint(model, profile)})


def _check_planned(planned: int, target: int, total: int, hint: str = "try other candidate blocks") -> None:
    """A measured plan more than 1% above its target means the per-block estimate went wrong: refuse it."""
    if planned > target * 1.01:
        raise ValueError(
            f"the plan reaches {planned / 1e6:.3f}M MACs ({100 * planned / total:.1f}% of the original), more "
            f"than 1% above the target of {target / 1e6:.3f}M MACs ({100 * target / total:.1f}%); {hint}"
        )


def plan_block_drop(
    model: nn.Module,
    target_macs: float,
    *,
    input_size: Sequence[int] | None = None,
    candidate_blocks: Sequence[int] | None = None,
) -> Plan:
    """The block-dropping baseline's structure: the fewest whole candidate blocks whose removal reaches the target."""
    from .surgery import drop_blocks

    profile = macs_profile(model, input_size)
    candidates = _candidates(profile, candidate_blocks)
    target = resolve_target(target_macs, profile.total)
    order = sorted(candidates, key=lambda b: profile.blocks[b])
    removed = 0
    for n, b in enumerate(order, start=1):
        removed += profile.blocks[b]
        if profile.total - removed <= target:
            planned = count_macs(drop_blocks(model, order[:n]), profile.input_size)
            _check_planned(planned, target, profile.total)
            width = _reference_width(profile, candidates)
            return Plan(
                n,
                0,
                True,
                profile.total,
                target,
                planned,
                candidates,
                width,
                profile.input_size,
                BASELINE_STRUCTURE,
                fingerprint(model, profile),
            )
    raise ValueError(f"dropping all {len(candidates)} candidate blocks cannot reach {target} MACs")


def plan_search(
    model: nn.Module,
    target_macs: float,
    *,
    structure: str = DEFAULT_STRUCTURE,
    steps: int | None = None,
    input_size: Sequence[int] | None = None,
    candidate_blocks: Sequence[int] | None = None,
) -> SearchPlan:
    """A structure search's plan: the target, the candidate blocks (default: all) and the step count
    (default: one step per average block's worth of MACs removed, 1 to 8, so the search fine-tunes about as
    often as DC-ViT, which compresses one block per step). `structure` names a search structure, which
    says how low its edits reach. Raises ValueError for unreachable targets."""
    search = get_structure(structure)
    steps = checks.optional_integer("steps", steps, 1, 1000)
    if not hasattr(search, "floor"):  # dcvit.structures.SearchStructure's; imported, it would close a circle
        searches = [n for n in structure_names() if hasattr(get_structure(n), "floor")]
        raise ValueError(f"plan_search is for the search structures {searches}; got {structure!r}")
    profile = macs_profile(model, input_size)
    candidates = _candidates(profile, candidate_blocks if candidate_blocks is not None else range(len(profile.attn)))
    target = resolve_target(target_macs, profile.total)
    floor, what = search.floor(profile, candidates)
    if target < floor:
        raise ValueError(
            f"target {target / 1e6:.3f}M MACs is below the floor of {floor / 1e6:.3f}M MACs "
            f"({100 * floor / profile.total:.1f}% of the original: {what})"
        )
    if steps is None:
        block = sum(profile.blocks) / len(profile.blocks)
        steps = min(8, max(1, round((profile.total - target) / block)))
    width = _reference_width(profile, candidates)
    size = profile.input_size
    return SearchPlan(structure, steps, profile.total, target, candidates, size, width, fingerprint(model, profile))
