"""Cascades of two and three stages from one pool (docs/method.md §9): companion -> teacher, own compressed
model -> teacher, companion -> own model -> teacher, own model -> own model -> teacher.

Every option's thresholds come from the calibration split (exact search for 2 and 3 stages); the cheapest
option that stays lossless there is chosen; every option is then reported on the test split with its
measured throughput. The test split never drives a choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import nn

import cascade
from cascade.files import KINDS  # teacher / compressed / companion

from .timing import interleaved_medians


@dataclass(frozen=True)
class CascadeOption:
    """One cascade of the pool: members cheapest first, the teacher last, thresholds from calibration."""

    members: tuple[str, ...]
    kinds: tuple[str, ...]
    calibration: cascade.Calibration
    speed: dict | None = None  # measure_cascade at the serving batch size, once timed

    @property
    def name(self) -> str:
        return " -> ".join(self.members)

    @property
    def lossless(self) -> bool:
        """Certified (top-1 >= the teacher's - eps with probability >= 1 - delta), with something answered before
        the teacher."""
        return self.calibration.meets_tolerance and not self.calibration.fallback

    def as_json(self) -> dict:
        c, s = self.calibration, self.speed or {}
        return {
            "members": list(self.members),
            "kinds": list(self.kinds),
            "thresholds": [round(t, 6) for t in c.thresholds],
            "top1": c.test_accuracy,
            "macs_per_sample": c.test_avg_cost,
            "macs_reduction": c.test_cost_reduction,
            "exit_ratios": list(c.test_exit_ratios or ()),
            "calibration_top1": c.calib_accuracy,
            "calibration_teacher_top1": c.calib_big_accuracy,
            "calibration_macs_reduction": c.calib_cost_reduction,
            "lossless_on_calibration": self.lossless,
            "committee": list(self.calibration.committee or ()),
            "predicted_speedup": s.get("predicted_speedup"),
            "throughput_speedup": s.get("realised_speedup"),
            "time_predicted_speedup": s.get("time_predicted_speedup"),
            "staged_throughput_speedup": s.get("staged_speedup"),
        }


def candidate_chains(
    kinds: Mapping[str, str], ranking: Sequence[tuple[str, float, float]], costs: Mapping[str, float], own_top: int = 3
):
    """The member lists to try (teacher last): each companion alone; the best own model (lowest ΔC on the
    calibration split); each companion before each of the `own_top` best own models; and every pair of
    those, cheaper first. (ΔC ranks savers well for two stages; it bounds the three-stage search's cost.)"""
    teacher = next(n for n, k in kinds.items() if k == "teacher")
    companions = [n for n, k in kinds.items() if k == "companion"]
    own = [n for n, _, _ in ranking if kinds[n] == "compressed"][:own_top]
    chains = [(c, teacher) for c in companions]
    if own:
        chains.append((own[0], teacher))
    chains += [(c, m, teacher) for c in companions for m in own if costs[c] < costs[m]]
    chains += [tuple(sorted(pair, key=costs.__getitem__)) + (teacher,) for pair in combinations(own, 2)]
    return chains


def compare_cascades(
    kinds: Mapping[str, str],
    costs: Mapping[str, float],
    calib: Mapping[str, cascade.Recorded],
    test: Mapping[str, cascade.Recorded],
    ranking: Sequence[tuple[str, float, float]],
    *,
    max_acc_drop: float = 0.0,
    delta: float = 0.05,
) -> list[CascadeOption]:
    """Certify every candidate chain on the whole calibration split (each row's guarantee holds for that row
    alone; picking among rows is cascade.choose_cascade's job); certified ones first, cheapest first."""
    bad = {n: k for n, k in kinds.items() if k not in KINDS}
    if bad or list(kinds.values()).count("teacher") != 1:
        raise ValueError(f"kinds must name one teacher and otherwise {KINDS[1:]}; got {dict(kinds)}")
    options = []
    for chain in candidate_chains(kinds, ranking, costs):
        labels = calib[chain[-1]].labels
        calibration = cascade.certify(
            [calib[n].probs for n in chain],
            labels,
            [costs[n] for n in chain],
            max_acc_drop,
            delta,
            test_probs=[test[n].probs for n in chain],
            test_labels=test[chain[-1]].labels,
        )
        options.append(CascadeOption(tuple(chain), tuple(kinds[n] for n in chain), calibration))
    return sorted(options, key=lambda o: (not o.lossless, o.calibration.calib_avg_cost))


@torch.inference_mode()
def time_cascades(
    models: Mapping[str, nn.Module],
    chains: Mapping[str, tuple],
    images: torch.Tensor,
    batch_size: int,
    costs: Mapping[str, float],
    repeats: int = 7,
    prepare: bool = True,
    alone: Sequence[str] = (),
) -> dict[str, dict]:
    """Wall-clock time over `images` (CPU) of each cascade in `chains` (key -> member names cheapest first,
    thresholds[, committee flags]) and of every member alone, in one interleaved run (medians of `repeats` passes, so every
    ratio shares the same drift). Every member is prepared once (cascade.prepare_for_inference, checked on the
    first batch; prepare=False times them as given) and a model shared by several cascades, such as the teacher,
    is timed alone once; `alone` names more models to time alone. predicted_speedup is what MACs predict for
    these same images: the last member's cost over the cascade's average cost given the measured exits;
    time_predicted_speedup the same from the members' measured times."""
    names = list(dict.fromkeys(n for members, *_ in chains.values() for n in members))
    ready = {n: models[n] for n in names}
    if prepare:
        ready = {n: cascade.prepare_for_inference(m, images[:batch_size]) for n, m in ready.items()}
    ready = {n: m.eval() for n, m in ready.items()}
    built = {
        key: cascade.Cascade([ready[n] for n in members], thresholds, [costs[n] for n in members], *committee[:1])
        for key, (members, thresholds, *committee) in chains.items()
    }
    timed_alone = dict.fromkeys([*names, *alone])  # every member: what its own speed predicts (below)
    runs = {("cascade", key): c for key, c in built.items()} | {("alone", n): ready[n] for n in timed_alone}
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    timed = {name: (lambda net=net: [net(b) for b in batches]) for name, net in runs.items()}
    # the same cascades run stage by stage over all the images (cascade.predict_staged): full batches for every member
    timed |= {("staged", k): (lambda c=c: cascade.predict_staged(c, images, batch_size)) for k, c in built.items()}
    t = interleaved_medians(timed, repeats, device=images.device)
    out = {}
    for key, (members, *_) in chains.items():
        stats, big = built[key].total_stats, members[-1]
        out[key] = {
            "batch_size": batch_size,
            "images": len(images),
            "repeats": repeats,
            "prepared": prepare,
            "cascade_seconds": t[("cascade", key)],
            "big_seconds": t[("alone", big)],
            "alone_seconds": {n: t[("alone", n)] for n in timed_alone if n in members},
            "realised_speedup": t[("alone", big)] / t[("cascade", key)],
            "staged_speedup": t[("alone", big)] / t[("staged", key)],
            "exit_ratios": list(stats.exit_ratios),
            "predicted_speedup": costs[big] / stats.avg_cost,
            # the same prediction from each member's measured time instead of its MACs: the gap to
            # predicted_speedup is members running slower or faster than their MACs say, the gap to
            # realised_speedup the routing (masks, smaller batches)
            "time_predicted_speedup": t[("alone", big)]
            / sum(run / stats.n * t[("alone", n)] for run, n in zip(stats.run_counts, members)),
        }
    return out


def measure_cascade(
    members: Sequence[nn.Module],
    thresholds: Sequence[float],
    images: torch.Tensor,
    batch_size: int,
    costs: Sequence[float],
    repeats: int = 7,
    prepare: bool = True,
) -> dict:
    """time_cascades for one cascade of `members` (cheapest first) against its last member alone."""
    models = {str(i): m for i, m in enumerate(members)}
    chain = {"cascade": (list(models), thresholds)}
    return time_cascades(models, chain, images, batch_size, dict(zip(models, costs)), repeats, prepare)["cascade"]


def first_images(test, images: int) -> torch.Tensor:
    """The first `images` test images, stacked: what cascades are timed on."""
    return torch.stack([test[i][0] for i in range(min(images, len(test)))])


def options_markdown(cascades: list[dict], savers: list[dict]) -> str:
    """Markdown of every cascade compared (CascadeOption.as_json rows, the chosen first) and of every model
    as a saver (name, kind, macs, top1, delta_c, r_match)."""
    lines = [
        "## Cascades compared",
        "",
        "Each row certified on its own on the whole calibration split (top-1 on the population not below the "
        "teacher's, with probability >= 95%; committee exit where certified); top-1, MACs and speed-up on the test "
        "split. Picking the best row on the same data would spend the guarantee once per row: the shipped cascade "
        "is chosen and certified on separate halves instead (see 'Cascades with a guarantee'). Where timed "
        "(batch 256); 'from member times' is what each member's measured speed alone predicts for the same "
        "exits (its gap to 'predicted' is members running faster or slower than their MACs say, its gap to "
        "'measured' the routing). 'Staged' runs each member once over all the timed images that reach it, in full "
        "batches (cascade.predict_staged), as when the inputs are all at hand.",
        "",
        "| cascade (cheapest first) | kinds | thresholds | certified | test top-1 (%) | "
        "MACs saved (%) | predicted speed-up | from member times | measured speed-up | measured, staged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cascades:
        speed = lambda k, c=c: f"{c[k]:.2f}x" if c.get(k) is not None else "—"
        lines.append(
            f"| {' -> '.join(c['members'])} | {' / '.join(c['kinds'])} | "
            f"{', '.join(f'{t:.3f}' for t in c['thresholds'])} | {'yes' if c['lossless_on_calibration'] else 'no'} | "
            f"{100 * c['top1']:.2f} | {100 * c['macs_reduction']:.1f} | {speed('predicted_speedup')} | "
            f"{speed('time_predicted_speedup')} | "
            f"{speed('throughput_speedup')} | {speed('staged_throughput_speedup')} |"
        )
    lines += ["", "## Every model as a saver for the teacher (calibration split)", ""]
    lines += ["| model | kind | MACs (M) | test top-1 (%) | ΔC | r_match |", "|---|---|---|---|---|---|"]
    for r in savers:
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['macs'] / 1e6:.2f} | {100 * r['top1']:.2f} | {r['delta_c']:+.3f} | "
            f"{r['r_match']:.3f} |"
        )
    lines.append("")
    lines.append("ΔC = saver MACs / teacher MACs − r_match (TinySaver): below 0, the saver pays for itself.")
    return "\n".join(lines)
