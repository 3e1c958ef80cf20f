#!/usr/bin/env python
"""Does the tolerance chosen on the calibration split hold on the test split? The measured-accuracy rule
(confidence None) against the one-sided confidence bound, for each saver and tolerated drop.

Records every model once on the held-out calibration split (training images) and on the test split, then
calibrates little -> big thresholds on the calibration split only and reports what they give on test.

Example (the first teacher's table in docs/history.md, "Does the tolerance hold on new data?"):
    python tools/bench_calibration.py --big fmnist_vit12 --savers fmnist_cnn fmnist_vit_tiny \\
        --drops 0 0.001 0.005 0.01 --confidence 0.95
"""

from __future__ import annotations

import sys

import cascade
from dcvit.data import CALIBRATION_SIZE
from dcvit.factory import resolve_model
from dcvit.macs import count_macs
from dcvit.scripts import script_parser
from dcvit.studies.companions import cascade_splits, record_split


def parse_args(argv):
    p = script_parser(__doc__)
    p.add_argument("--big", default="fmnist_vit12")
    p.add_argument("--savers", nargs="+", default=["fmnist_cnn", "fmnist_vit_tiny"])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--calibration-size", type=int, default=CALIBRATION_SIZE)
    p.add_argument("--test-limit", type=int, help="first N test images only (quick runs)")
    p.add_argument("--drops", type=float, nargs="+", default=[0.0, 0.001, 0.005, 0.01])
    p.add_argument("--confidence", type=float, default=0.95, help="the level compared with measured accuracies")
    args = p.parse_args(argv)
    if not 0.5 <= args.confidence < 1:
        p.error(f"--confidence must be a level in [0.5, 1), got {args.confidence}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    models = {n: resolve_model(n, weights="pretrained") for n in [args.big, *args.savers]}
    calib, test = cascade_splits(models[args.big], args.data, args.calibration_size, test_limit=args.test_limit or None)
    rec_calib, rec_test = record_split(models, calib, progress=False), record_split(models, test, progress=False)
    big = args.big
    for name in models:  # how much easier the calibration split is, per model (memorised or not)
        acc = [float((r[name].probs.argmax(1) == r[name].labels).float().mean()) for r in (rec_calib, rec_test)]
        print(f"{name}: top-1 {acc[0]:.2%} on the calibration split, {acc[1]:.2%} on test")
    print("saver            drop   rule        threshold  test Δacc (points)  fewer MACs  tolerance held on test")
    held = {None: 0, args.confidence: 0}
    for saver in args.savers:
        costs = [count_macs(models[saver]), count_macs(models[big])]
        for drop in args.drops:
            for conf in (None, args.confidence):
                cal = cascade.calibrate(
                    [rec_calib[saver].probs, rec_calib[big].probs],
                    rec_calib[big].labels,
                    costs,
                    drop,
                    test_probs=[rec_test[saver].probs, rec_test[big].probs],
                    test_labels=rec_test[big].labels,
                    confidence=conf,
                )
                delta = cal.test_accuracy - cal.test_big_accuracy
                ok = delta >= -drop - 1e-12
                held[conf] += ok
                rule = "measured" if conf is None else f"bound {conf:g}"
                print(
                    f"{saver:15s}  {drop:5.3f}  {rule:10s}  {cal.thresholds[0]:9.3f}  {100 * delta:+18.2f}  "
                    f"{cal.test_cost_reduction:10.1%}  {'yes' if ok else 'no'}"
                )
    cases = len(args.savers) * len(args.drops)
    print(
        f"tolerance held on test: measured rule {held[None]}/{cases}, "
        f"{args.confidence:g} bound {held[args.confidence]}/{cases}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
