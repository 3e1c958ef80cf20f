"""The demo's guaranteed cascades (docs/method.md §9): for each scope (the teacher with its own compressed
models only, or with any companion) and each tolerance eps, the cascade chosen and certified by
cascade.choose_cascade: top-1 on the population >= the teacher's - eps with probability >= 1 - delta over the
draw of the calibration split. The recorded probabilities are kept (records.safetensors) so
tools/bench_guarantee.py can check the promise on the very models the demo made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cascade

from ..storage import atomic_path
from .cascades import candidate_chains
from .report import guarantee_sentence

SCOPES = {"own-family": ("compressed",), "any": ("compressed", "companion")}
TOLERANCES = (0.0, 0.001, 0.005)  # eps as fractions: 0, 0.1 and 0.5 accuracy points


@dataclass(frozen=True)
class GuaranteedOption:
    scope: str
    eps: float
    choice: cascade.Choice
    kinds: tuple[str, ...]
    speed: dict | None = None

    @property
    def members(self) -> tuple[str, ...]:
        """The members to ship: the teacher alone when nothing was certified."""
        return self.choice.members[-1:] if self.choice.calibration.fallback else self.choice.members

    def as_json(self) -> dict:
        c, s = self.choice.calibration, self.speed or {}
        fallback = c.fallback
        return {
            "scope": self.scope,
            "eps": self.eps,
            "delta": c.delta,
            "members": list(self.members),
            "kinds": list(self.kinds[-1:] if fallback else self.kinds),
            "committee": [] if fallback else list(c.committee),
            "thresholds": [] if fallback else [round(t, 6) for t in c.thresholds],
            "top1": c.test_big_accuracy if fallback else c.test_accuracy,
            "macs_reduction": 0.0 if fallback else c.test_cost_reduction,
            "macs_per_sample": c.big_cost if fallback else c.test_avg_cost,
            "exit_ratios": [1.0] if fallback else list(c.test_exit_ratios or ()),
            "teacher_top1": c.test_big_accuracy,
            "certified": not fallback,
            "tried": list(self.choice.members) if fallback else None,
            "candidates": self.choice.candidates,
            "select_images": self.choice.select_size,
            "certify_images": self.choice.certify_size,
            "calibration_top1": c.calib_accuracy,
            "calibration_teacher_top1": c.calib_big_accuracy,
            "guarantee": guarantee_sentence(c),
            "predicted_speedup": s.get("predicted_speedup"),
            "time_predicted_speedup": s.get("time_predicted_speedup"),
            "throughput_speedup": s.get("realised_speedup"),
            "staged_throughput_speedup": s.get("staged_speedup"),
        }


def scope_chains(kinds: Mapping[str, str], ranking, costs: Mapping[str, float], scope: str) -> list[tuple[str, ...]]:
    """Every model of the scope as the one saver before the teacher, plus the demo's three-stage chains whose
    members all belong to the scope."""
    allowed = SCOPES[scope]
    teacher = next(n for n, k in kinds.items() if k == "teacher")
    chains = [(n, teacher) for n, k in kinds.items() if k in allowed]
    chains += [
        c for c in candidate_chains(kinds, ranking, costs) if len(c) > 2 and all(kinds[n] in allowed for n in c[:-1])
    ]
    return chains


def guaranteed_cascades(
    kinds: Mapping[str, str],
    costs: Mapping[str, float],
    calib: Mapping[str, cascade.Recorded],
    test: Mapping[str, cascade.Recorded],
    ranking,
    *,
    delta: float = 0.05,
    tolerances: Sequence[float] = TOLERANCES,
    seed: int = 0,
) -> list[GuaranteedOption]:
    """One GuaranteedOption per scope and tolerance (scopes in SCOPES order, tolerances ascending)."""
    teacher = next(n for n, k in kinds.items() if k == "teacher")
    probs = {n: r.probs for n, r in calib.items()}
    test_probs = {n: r.probs for n, r in test.items()}
    out = []
    for scope in SCOPES:
        chains = scope_chains(kinds, ranking, costs, scope)
        for eps in tolerances:
            choice = cascade.choose_cascade(
                probs,
                calib[teacher].labels,
                costs,
                chains,
                eps,
                delta,
                seed=seed,
                test_probs=test_probs,
                test_labels=test[teacher].labels,
            )
            out.append(GuaranteedOption(scope, eps, choice, tuple(kinds[n] for n in choice.members)))
    return out


def best(options: Sequence[GuaranteedOption], scope: str = "any", eps: float = 0.0) -> GuaranteedOption:
    return next(o for o in options if o.scope == scope and o.eps == eps)


def with_speed(options: Sequence[GuaranteedOption], timed: Mapping[str, dict]) -> list[GuaranteedOption]:
    """The options with the timing of their cascade (keyed by timing_name), where it was timed."""
    return [replace(o, speed=timed.get(timing_name(o))) for o in options]


def timing_name(option: GuaranteedOption) -> str:
    c = option.choice.calibration
    return f"{' -> '.join(option.members)} at {c.thresholds}, committee {c.committee}"


def timing_chains(options: Sequence[GuaranteedOption]) -> dict[str, tuple]:
    """{timing_name: (members, thresholds, committee)} of every certified option, each distinct cascade once."""
    return {
        timing_name(o): (o.members, o.choice.calibration.thresholds, o.choice.calibration.committee)
        for o in options
        if not o.choice.calibration.fallback
    }


def save_records(path: Path, records: Mapping[str, Mapping[str, cascade.Recorded]], costs, kinds) -> Path:
    """Every model's probabilities on both splits (safetensors, atomically), with MACs and kinds as metadata."""
    from safetensors.torch import save_file

    tensors = {}
    for split, recs in records.items():
        for name, r in recs.items():
            tensors[f"{split}/{name}"] = r.probs.contiguous().clone()  # safetensors refuses shared storage
        tensors[f"{split}/labels"] = next(iter(recs.values())).labels.contiguous().clone()
    meta = {"costs": json.dumps(dict(costs)), "kinds": json.dumps(dict(kinds))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_records(path: Path) -> tuple[dict, dict, dict]:
    """({split: {name: Recorded}}, costs, kinds) as save_records wrote them."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    records = {}
    for key, value in tensors.items():
        split, name = key.split("/", 1)
        if name != "labels":
            records.setdefault(split, {})[name] = cascade.Recorded(value, tensors[f"{split}/labels"])
    return records, json.loads(meta.get("costs", "{}")), json.loads(meta.get("kinds", "{}"))
