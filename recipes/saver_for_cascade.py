"""Find a little "saver" for a big ViT: compress the big model into a few companions (DC-ViT), add any other
candidates, pick the saver by ΔC on a held-out calibration split, calibrate the cascade's threshold there,
report it on the test split and time it.

Example (companions at 50% and 30% of ViT-B's MACs, plus timm's ViT-Ti as an outside candidate):

    python recipes/saver_for_cascade.py --big vit_base_patch16_224 --data /data/imagenet --shots 100 \\
        --targets 0.5 0.3 --extra-savers vit_tiny_patch16_224 --preset quick --out runs/vit-b-saver

ImageFolder data needs PATH/train (few shots and the calibration split, kept disjoint) and PATH/val (test).
Writes OUT/report.md, OUT/study.json, OUT/curves.png and OUT/target-X/model per companion. Every candidate
sees the big model's eval transform, so it must take the same input size and label space. The study runs
on the CPU. `--smoke` checks the wiring in seconds on a tiny random ViT.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the shared helpers next to this file, however the script is started
    sys.path.insert(0, HERE)

import _common as common  # noqa: E402
import _smoke  # noqa: E402

import dcvit  # noqa: E402
from dcvit.cli.cascade import tolerance_arguments  # noqa: E402
from dcvit.studies.report import study_summary, write_study  # noqa: E402
from dcvit.studies.companions import cascade_study, check_saver  # noqa: E402
from dcvit.driver import compress_family, plan_for  # noqa: E402
from dcvit.data import CALIBRATION_SIZE, few_shot_subset, parse_spec  # noqa: E402
from dcvit.files import write_json  # noqa: E402

TARGETS, SMOKE_TARGETS = (0.5, 0.3), (0.75, 0.67)  # the tiny smoke model cannot go below ~56%


def build_parser() -> common.Parser:
    p = common.Parser(prog="saver_for_cascade.py", description=__doc__)
    p.add_argument("--big", default="vit_base_patch16_224",
                   help="the big model: timm name (pretrained) or a dcvit.save directory "
                        "(default vit_base_patch16_224)")
    p.add_argument("--targets", type=common.target, nargs="+", metavar="T",
                   help=f"MACs of the compressed companions, fractions of the big model's (default "
                        f"{' '.join(map(str, TARGETS))}; with --smoke {' '.join(map(str, SMOKE_TARGETS))})")
    p.add_argument("--extra-savers", nargs="+", default=[], metavar="NAME",
                   help="more candidates: timm names (pretrained) or dcvit.save directories")
    p.add_argument("--calibration-size", type=common.positive_int, default=CALIBRATION_SIZE,
                   help=f"held-out training images for saver choice and threshold calibration (default {CALIBRATION_SIZE})")
    tolerance_arguments(p)
    p.add_argument("--speed-images", type=common.positive_int, default=2000,
                   help="test images for the timed cascade (default 2000)")
    common.add_run_arguments(p, shots=100)
    return p


def run(args, parser, data_root: Path | None = None) -> dict:
    out, smoke = Path(args.out), args.smoke
    targets = args.targets or (SMOKE_TARGETS if smoke else TARGETS)
    if smoke:
        big_name, spec, shots = "smoke-big", f"imagefolder:{data_root}", _smoke.SHOTS
        calibration, speed = _smoke.CALIBRATION_SIZE, dict(speed_images=_smoke.SPEED_IMAGES,
                                                          speed_batches=_smoke.SPEED_BATCHES)
        config = common.config_for(args, _smoke.shrink)
    else:
        big_name, spec, shots, calibration = args.big, common.data_spec(args, parser), args.shots, args.calibration_size
        speed, config = dict(speed_images=args.speed_images), common.config_for(args)
        kind, root = parse_spec(spec)
        if kind == "imagefolder" and not any((root / s).is_dir() for s in ("val", "test")):
            parser.error(f"{root} needs train/ and val/ (or test/) sub-folders: the test split must be separate")
    names = [common.label(t) for t in targets]
    members = {f"dcvit-{n}": t for n, t in zip(names, targets)}
    if len(set(names)) < len(names) or {big_name, *members} & set(args.extra_savers):
        parser.error("--targets and --extra-savers must name distinct models, none of them the big one")
    common.check_fresh(out / "checkpoints", args.resume)
    big = _smoke.tiny_model(seed=args.seed) if smoke else common.load_pretrained(args.big)
    load = (lambda n: dcvit.resolve_model(n, weights="random")) if smoke else common.load_pretrained
    extras = {n: load(n) for n in args.extra_savers}
    for n, m in extras.items():
        check_saver(n, m, big)
    plans = [plan_for(big, t, config) for t in targets]  # fail on unreachable targets before any data work
    for n, plan in zip(members, plans):
        print(f"{n}: {plan.describe()}", flush=True)
    # The few shots come from the training split minus the calibration images, so the choice stays honest.
    data = few_shot_subset(spec, shots, seed=args.seed, calibration_size=calibration)
    results = compress_family(big, plans, data, config, workdir=out / "checkpoints", resume=args.resume)
    summaries = [common.save_result(r, t, out / f"target-{n}", shots=shots, preset=args.preset)
                 for n, t, r in zip(names, targets, results)]
    print(common.family_table(summaries), flush=True)
    models = {big_name: big, **{m: r.model for m, r in zip(members, results)}, **extras}
    study = cascade_study(big_name, models, spec, calibration_size=calibration, seed=args.seed,
                          max_acc_drop=args.max_acc_drop, confidence=args.confidence, progress=not smoke, **speed)
    write_json(out / "study.json", study_summary(study))
    write_study(study, out)
    best = study.calibrations[study.saver]
    print(f"Chosen saver: {study.saver} ({study.costs[study.saver] / 1e6:.2f}M MACs vs {big_name}'s "
          f"{study.costs[big_name] / 1e6:.2f}M; ΔC {study.ranking[0][1]:.3f} on the calibration split)")
    print(f"cascade on the test split: {100 * best.test_cost_reduction:.1f}% fewer MACs per image, top-1 "
          f"{100 * best.test_accuracy:.2f}% vs {100 * best.test_big_accuracy:.2f}% for {big_name} alone"
          + (" (no cheaper threshold kept the accuracy: everything goes to the big model)" if best.fallback else ""))
    print(f"report: {out / 'report.md'}")
    return {"saver": study.saver, "macs_reduction": best.test_cost_reduction, "family": summaries}


def main(argv: list[str] | None = None) -> dict:
    return common.main_with_smoke(build_parser, run, argv)


if __name__ == "__main__":
    main()
