#!/usr/bin/env python
"""Does the cascade guarantee hold? A validity check anyone can rerun (docs/method.md §9, "The guarantee").

The pooled held-out images (the demo's calibration split + the test split, recorded by `make demo` in
runs/demo/records.safetensors) are taken as the population. Calibration sets are drawn from it with
replacement (--draws per size); each rule picks thresholds on the draw; the risk is measured on the whole pool:
a violation is population top-1 < the teacher's population top-1 - eps. For a rule that keeps its promise the
violation rate stays <= delta. Reported per rule, saver, size and eps: violations / draws with a 95%
Clopper-Pearson interval, and the median share of MACs saved on the pool.

Rules: the ones `dcvit cascade` offers (fixed-sequence with --committee off / on / auto, and "choose", which
also picks the saver among all of them on half the draw, as `dcvit cascade` and the demo do), and for contrast
the rules that are not offered because they promise nothing: "empirical" (measured accuracy >= the teacher's
- eps) and "nominal-95" (today's former default: a 95% one-sided bound, uncorrected for the search).

    python tools/bench_guarantee.py --records runs/demo/records.safetensors --out runs/guarantee
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from scipy import stats

import cascade
from cascade._checks import conf_correct
from cascade._search import _evaluate
from dcvit.scripts import script_parser
from dcvit.studies.guaranteed import load_records

RULES = ("off", "on", "auto", "choose", "empirical", "nominal-95")


def parse_args(argv=None):
    p = script_parser(__doc__)
    p.add_argument("--records", type=Path, default=Path("runs/demo/records.safetensors"))
    p.add_argument("--savers", nargs="*", help="default: the companions and every auto member (refined too)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.001])
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/guarantee"))
    p.add_argument("--render", action="store_true", help="only redraw guarantee.md / .png from OUT/guarantee.json")
    return p.parse_args(argv)


def pool(records: dict) -> tuple[dict, torch.Tensor]:
    """{name: probs} over calibration + test, and their labels."""
    names = list(records["calibration"])
    probs = {n: torch.cat([records["calibration"][n].probs, records["test"][n].probs]) for n in names}
    labels = torch.cat([records["calibration"][names[0]].labels, records["test"][names[0]].labels])
    return probs, labels


class Population:
    """Pool-level accuracy and cost of any (saver, committee, thresholds), evaluated on every pooled image."""

    def __init__(self, probs: dict, labels: torch.Tensor, teacher: str, costs: dict):
        self.probs, self.labels, self.teacher, self.costs = probs, labels, teacher, costs
        self.big_acc = float((probs[teacher].argmax(1) == labels).double().mean())
        self._cache = {}

    def evaluate(self, chain: tuple[str, ...], cal: cascade.Calibration) -> tuple[float, float]:
        """(population top-1, MACs saved) of the chosen cascade; the teacher alone after a fallback."""
        if cal.fallback:
            return self.big_acc, 0.0
        flags = cal.committee or (False,) * len(chain)
        key = (chain, flags)
        if key not in self._cache:
            self._cache[key] = conf_correct(cascade.committee_probs([self.probs[n] for n in chain], flags), self.labels)
        conf, correct = self._cache[key]
        costs = [self.costs[n] for n in chain]
        right, _, st = _evaluate(conf, correct, costs, cal.thresholds)
        return right / self.labels.numel(), 1.0 - st.avg_cost / costs[-1]


def run_rule(rule, saver, teacher, probs, labels, idx, costs, eps, delta, savers, seed):
    """(chain, Calibration) the rule picks on the draw `idx`."""
    draw = lambda n: probs[n][idx]  # noqa: E731
    if rule == "choose":
        chains = [(s, teacher) for s in savers]
        choice = cascade.choose_cascade(probs_view(probs, idx), labels[idx], costs, chains, eps, delta, seed=seed)
        return choice.members, choice.calibration
    chain = (saver, teacher)
    args = ([draw(saver), draw(teacher)], labels[idx], [costs[saver], costs[teacher]], eps)
    if rule in ("off", "on", "auto"):
        committee = {"off": False, "on": True, "auto": "auto"}[rule]
        return chain, cascade.certify(*args, delta, committee=committee)
    confidence = None if rule == "empirical" else 0.95
    return chain, cascade.calibrate(*args, confidence=confidence)


def probs_view(probs: dict, idx: torch.Tensor) -> dict:
    return {n: p[idx] for n, p in probs.items()}


def interval(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return ci.low, ci.high


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.render:
        return render(args.out)
    if not args.records.is_file():
        print(f"bench_guarantee: {args.records} not found; run `make demo` first (it writes it)", file=sys.stderr)
        return 2
    records, costs, kinds = load_records(args.records)
    probs, labels = pool(records)
    teacher = next(n for n, k in kinds.items() if k == "teacher")
    savers = args.savers or [n for n, k in kinds.items() if k == "companion" or n.startswith("auto-")]
    population = Population(probs, labels, teacher, costs)
    g = torch.Generator().manual_seed(args.seed)
    rows, start = [], time.perf_counter()
    for size in args.sizes:
        draws = [torch.randint(0, labels.numel(), (size,), generator=g) for _ in range(args.draws)]
        for eps in args.eps:
            for rule in args.rules:
                for saver in ["(all)"] if rule == "choose" else savers:
                    results = [
                        population.evaluate(
                            *run_rule(rule, saver, teacher, probs, labels, idx, costs, eps, args.delta, savers, d)
                        )
                        for d, idx in enumerate(draws)
                    ]
                    bad = sum(acc < population.big_acc - eps for acc, _ in results)
                    low, high = interval(bad, len(results))
                    saved = sorted(s for _, s in results)
                    rows.append(
                        {
                            "rule": rule,
                            "saver": saver,
                            "size": size,
                            "eps": eps,
                            "draws": len(results),
                            "violations": bad,
                            "rate": bad / len(results),
                            "ci95": [low, high],
                            "median_macs_saved": saved[len(saved) // 2],
                            "offered_by_cli": rule in ("off", "on", "auto", "choose"),
                        }
                    )
                    print(_row_text(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "delta": args.delta,
        "population": labels.numel(),
        "teacher": teacher,
        "teacher_top1": population.big_acc,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    (args.out / "guarantee.json").write_text(json.dumps(summary, indent=2) + "\n")
    render(args.out)
    print(f"wrote {args.out}/guarantee.json, guarantee.md and guarantee.png in {summary['seconds']:.0f} s")
    return 0


def render(out: Path) -> int:
    """guarantee.md (the compact table, then every row) and guarantee.png from guarantee.json."""
    summary = json.loads((out / "guarantee.json").read_text())
    plot(summary["rows"], summary["delta"], out / "guarantee.png")
    (out / "guarantee.md").write_text(compact(summary) + "\n\n" + markdown(summary) + "\n")
    return 0


def compact(summary: dict) -> str:
    """One row per rule: per calibration size and eps, the highest violation rate over the savers, and the median
    MACs saved with fmnist_cnn as the saver (for "choose": whichever saver each draw chose)."""
    rows = summary["rows"]
    cells = sorted({(r["size"], r["eps"]) for r in rows})
    head = " | ".join(f"n={n}, eps {100 * e:g}" for n, e in cells)
    lines = [f"| rule | offered | {head} |", "|---|---|" + "---|" * len(cells)]
    for rule in dict.fromkeys(r["rule"] for r in rows):
        out = []
        for n, e in cells:
            group = [r for r in rows if r["rule"] == rule and r["size"] == n and r["eps"] == e]
            worst = max(group, key=lambda r: r["rate"])
            cnn = next((r for r in group if r["saver"] in ("fmnist_cnn", "(all)")), worst)
            out.append(f"{100 * worst['rate']:.1f}% / {100 * cnn['median_macs_saved']:.0f}%")
        lines.append(f"| {rule} | {'yes' if group[0]['offered_by_cli'] else 'no'} | {' | '.join(out)} |")
    return "\n".join(lines)


def _row_text(r: dict) -> str:
    return (
        f"{r['rule']:<11} {r['saver']:<28} n={r['size']:<5} eps={100 * r['eps']:<4g} violations "
        f"{r['violations']:>3}/{r['draws']} ({100 * r['rate']:.1f}%, 95% CI {100 * r['ci95'][0]:.1f}-"
        f"{100 * r['ci95'][1]:.1f}%), median MACs saved {100 * r['median_macs_saved']:.1f}%"
    )


def markdown(summary: dict) -> str:
    lines = [
        f"Population: {summary['population']} pooled held-out images; teacher {summary['teacher']} "
        f"{100 * summary['teacher_top1']:.2f}%; delta {summary['delta']}. A violation: the chosen cascade's "
        "population top-1 < the teacher's - eps.",
        "",
        "| rule | offered by the CLI | saver | calibration size | eps (points) | violations | rate (95% CI) | "
        "median MACs saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['rule']} | {'yes' if r['offered_by_cli'] else 'no'} | {r['saver']} | {r['size']} | "
            f"{100 * r['eps']:g} | {r['violations']}/{r['draws']} | {100 * r['rate']:.1f}% "
            f"({100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}) | {100 * r['median_macs_saved']:.1f}% |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], delta: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = dict(zip(RULES, "osD^xv"))
    for rule in RULES:
        pts = [r for r in rows if r["rule"] == rule]
        if pts:
            ax.scatter(
                [100 * r["median_macs_saved"] for r in pts],
                [100 * r["rate"] for r in pts],
                marker=markers[rule],
                label=rule + ("" if pts[0]["offered_by_cli"] else " (not offered)"),
                alpha=0.75,
            )
    ax.axhline(100 * delta, color="black", linestyle="--", linewidth=1, label=f"delta = {delta:g}")
    ax.set_xlabel("median MACs saved on the pool (%)")
    ax.set_ylabel("violation rate over draws (%)")
    ax.set_title("Cascade rules: what they save vs how often they break their promise")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
