#!/usr/bin/env python
"""Wall-clock speed-up of a calibrated little -> big cascade against the big model alone, with and without
cascade.prepare_for_inference, next to the speed-up MACs predict.

Calibrates the threshold as `dcvit cascade` does (held-out training split, --max-acc-drop, --delta, --committee), then
times the cascade, the big model and the saver on test images, interleaved, medians of --repeats passes.

Example (BENCHMARKS.md, "Cascade throughput"):
    python tools/bench_cascade.py --big fmnist_vit12 --saver fmnist_cnn --batch-sizes 256 1 --repeats 9
"""

from __future__ import annotations

import json
import sys

import torch

import cascade
from dcvit.cli.cascade import COMMITTEE, tolerance_arguments
from dcvit.data import CALIBRATION_SIZE
from dcvit.factory import resolve_model
from dcvit.macs import count_macs
from dcvit.scripts import script_parser
from dcvit.studies.companions import cascade_splits, record_split, time_cascade


def parse_args(argv):
    p = script_parser(__doc__)
    p.add_argument("--big", default="fmnist_vit12")
    p.add_argument("--saver", default="fmnist_cnn")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--calibration-size", type=int, default=CALIBRATION_SIZE)
    p.add_argument("--images", type=int, default=2000, help="test images timed (batch 1: a quarter of them)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    tolerance_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    big, saver = resolve_model(args.big, weights="pretrained"), resolve_model(args.saver, weights="pretrained")
    calib, test = cascade_splits(big, args.data, args.calibration_size)
    rec = record_split({"saver": saver, "big": big}, calib, progress=False)
    costs = [count_macs(saver), count_macs(big)]
    cal = cascade.certify(
        [rec["saver"].probs, rec["big"].probs],
        rec["big"].labels,
        costs,
        args.max_acc_drop,
        args.delta,
        committee=COMMITTEE[args.committee],
    )
    runs = {
        prepare: time_cascade(
            saver,
            big,
            cal.thresholds,
            test,
            (costs[0], costs[1]),
            images=args.images,
            batch_sizes=args.batch_sizes,
            repeats=args.repeats,
            prepare=prepare,
            committee=cal.committee,
        )
        for prepare in (False, True)
    }
    rows = [
        {
            **r,
            "ratio": r["realised_speedup"] / r["predicted_speedup"],
            "staged_ratio": r["staged_speedup"] / r["predicted_speedup"],
        }
        for key in runs[True]
        for r in (runs[False][key], runs[True][key])
    ]
    if args.json:
        print(json.dumps({"thresholds": cal.thresholds, "rows": rows}, indent=2))
        return 0
    print(
        f"{args.saver} -> {args.big}, thresholds {cal.thresholds} ({cal.note}); MACs ratio {costs[1] / costs[0]:.1f}x"
    )
    print(
        "batch  prepared  exit   big img/s  saver/big speed  cascade speed-up  MACs-predicted  realised/predicted"
        "  staged speed-up  staged/predicted"
    )
    for r in rows:
        print(
            f"{r['batch_size']:5d}  {str(r['prepared']):8s}  {r['exit_ratio']:.3f}  {r['images'] / r['big_seconds']:9.0f}  "
            f"{r['saver_speed_ratio']:15.1f}  {r['realised_speedup']:16.2f}  {r['predicted_speedup']:14.2f}  "
            f"{r['ratio']:18.2f}  {r['staged_speedup']:15.2f}  {r['staged_ratio']:16.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
