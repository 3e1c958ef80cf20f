#!/usr/bin/env python
"""How much could an own-family cascade save at all? An upper bound no calibration rule can beat.

For every compressed member of the demo's pool (runs/demo/records.safetensors, written by `make demo`) as the
one saver before the teacher: the most MACs saved by any threshold whose *test* top-1 stays within eps of the
teacher's (thresholds picked on the test split itself: an oracle, never a deployable choice), and the share of
test images on which the member's correctness differs from the teacher's.

    python tools/bench_own_family.py --records runs/demo/records.safetensors --eps 0.001 0.005
"""

from __future__ import annotations

import sys
from pathlib import Path

import cascade
from dcvit.scripts import script_parser
from dcvit.studies.guaranteed import load_records


def main(argv=None) -> int:
    p = script_parser(__doc__)
    p.add_argument("--records", type=Path, default=Path("runs/demo/records.safetensors"))
    p.add_argument("--eps", type=float, nargs="+", default=[0.001, 0.005])
    args = p.parse_args(argv)
    if not args.records.is_file():
        print(f"bench_own_family: {args.records} not found; run `make demo` first (it writes it)", file=sys.stderr)
        return 2
    records, costs, kinds = load_records(args.records)
    test = records["test"]
    teacher = next(n for n, k in kinds.items() if k == "teacher")
    labels, big = test[teacher].labels, test[teacher].probs
    big_right = big.argmax(1) == labels
    print(
        f"{'saver':<22}{'MACs':>7}{'differs':>9}" + "".join(f"{'saved, eps ' + f'{100 * e:g}':>16}" for e in args.eps)
    )
    for name in (n for n, k in kinds.items() if k == "compressed"):
        probs = test[name].probs
        curve = cascade.sweep([probs, big], labels, [costs[name], costs[teacher]])
        saved = 1.0 - curve.avg_cost / costs[teacher]
        cells = [
            float(saved[curve.accuracy >= big_right.double().mean() - eps].max()) for eps in args.eps
        ]  # the all-teacher end point always qualifies
        differs = float(((probs.argmax(1) == labels) != big_right).double().mean())
        print(f"{name:<22}{costs[name] / costs[teacher]:>7.1%}{differs:>9.2%}" + "".join(f"{c:>16.1%}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
