"""Find a little "saver" for a big ViT: compress the big model into a few companions, add any other
candidates, pick the saver and certify the cascade's threshold on a held-out calibration split (top-1 >= the
big model's - eps with probability >= 1 - delta; committee exit where it is certified), report it on the test
split, time it and write it as a cascade folder (OUT/cascade, `dcvit eval --model OUT/cascade`). Example (companions at 50% and 30% of ViT-B's MACs, plus timm's
ViT-Ti as an outside candidate):

    python recipes/saver_for_cascade.py --big vit_base_patch16_224 --data /data/imagenet --shots 100 \\
        --targets 0.5 0.3 --extra-savers vit_tiny_patch16_224 --preset quick --out runs/vit-b-saver

ImageFolder data needs PATH/train (few shots and the calibration split, kept disjoint) and PATH/val (test).
Writes OUT/report.md, OUT/study.json, OUT/curves.png, OUT/cascade/ and OUT/target-X/{model,result.json} per
companion. With only --targets (no --extra-savers) the cascade is own-family: the big model and its own
compressed (and refined) copies.
With --refine-images N a copy of each companion is also refined on N more unlabeled training images (outside
the shots and the calibration split), enters the study as dcvit-X-refined and is saved as OUT/target-X-refined/
(a model folder): deep companions can become better savers when such images exist.
Every candidate sees the big model's eval transform: it must take the same input size and label space. The
study runs on the CPU. --structure auto (the default) lets the synthetic metric set choose each block's edit;
dcvit is the paper's structure, mlp edits MLPs only, drop is the block-dropping baseline. --epochs, ...
override the preset's sizes (tiny values check the wiring in seconds). One file: copy it anywhere dcvit is
installed.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import dcvit
from dcvit import scripts
from dcvit.studies.companions import cascade_study, check_saver
from dcvit.studies.report import guarantee_sentence, save_study_cascade, study_summary, write_study

TARGETS = (0.5, 0.3)


def build_parser() -> scripts.OneLineParser:
    p = scripts.script_parser(__doc__, prog=Path(__file__).name)
    p.add_argument(
        "--big",
        default="vit_base_patch16_224",
        help="the big model: timm name (pretrained weights "
        "are loaded) or a dcvit.save directory (default vit_base_patch16_224)",
    )
    p.add_argument(
        "--targets",
        type=scripts.target_macs,
        nargs="+",
        default=list(TARGETS),
        metavar="T",
        help=f"MACs of the compressed companions, fractions of the big model's (default {' '.join(map(str, TARGETS))})",
    )
    p.add_argument(
        "--extra-savers",
        nargs="+",
        default=[],
        metavar="NAME",
        help="more candidates: timm names (pretrained) or dcvit.save directories",
    )
    p.add_argument(
        "--calibration-size",
        type=scripts.positive_int,
        default=dcvit.CALIBRATION_SIZE,
        help=f"held-out training images for saver choice and threshold calibration (default {dcvit.CALIBRATION_SIZE})",
    )
    p.add_argument(
        "--max-acc-drop",
        type=float,
        default=0.0,
        help="eps: tolerated top-1 drop vs the big model, a fraction in [0, 1) (0.001 = 0.1 point; default 0)",
    )
    p.add_argument(
        "--delta",
        type=float,
        default=0.05,
        help="risk in (0, 0.5] that the guarantee fails over the draw of the calibration split (default 0.05)",
    )
    p.add_argument(
        "--committee",
        choices=("auto", "on", "off"),
        default="auto",
        help="committee exit (the big model answers with the mean of its and the saver's probabilities): "
        "auto (default) where certified, on, off",
    )
    p.add_argument(
        "--speed-images",
        type=scripts.positive_int,
        default=2000,
        help="test images for the timed cascade (default 2000)",
    )
    p.add_argument(
        "--refine-images",
        type=int,
        default=0,
        metavar="N",
        help="refine each companion on N more unlabeled training images (outside the shots and the calibration "
        "split) before the study: better savers when you have the images (default 0: few-shot only)",
    )
    p.add_argument("--refine-epochs", type=scripts.positive_int, default=5, help="passes over those images (default 5)")
    scripts.add_run_arguments(p)
    return p


def run(args) -> dict:
    if args.refine_images < 0:
        raise ValueError(f"--refine-images must be 0 or more; got {args.refine_images}")
    if not 0 <= args.max_acc_drop < 1 or not 0 < args.delta <= 0.5:
        raise ValueError("--max-acc-drop must be a fraction in [0, 1) and --delta a risk in (0, 0.5]")
    out, spec, config = Path(args.out), scripts.data_spec(args.data), scripts.config_from_args(args)
    root = Path(spec.partition(":")[2])
    if spec.startswith("imagefolder:") and not any((root / s).is_dir() for s in ("val", "test")):
        raise ValueError(f"{root} needs train/ and val/ (or test/) sub-folders: the test split must be separate")
    labels = [f"{t:g}" for t in args.targets]
    members = [f"dcvit-{label}" for label in labels]
    names = [args.big, *members, *args.extra_savers]
    if len(set(names)) < len(names):
        raise ValueError("--targets and --extra-savers must name distinct models, none of them the big one")
    scripts.refuse_existing_run(out, args.resume)  # a run begun or finished: only with --resume
    big = dcvit.resolve_model(args.big, weights="pretrained")  # never random init: pointless to compress
    extras = {name: dcvit.resolve_model(name, weights="pretrained") for name in args.extra_savers}
    for name, model in extras.items():
        check_saver(name, model, big)  # the same input and classes as the big model, or a one-line error
    plans = [dcvit.plan_for(big, t, config) for t in args.targets]  # fail on unreachable targets before data work
    print("\n".join(f"{m}: {plan.describe()}" for m, plan in zip(members, plans)), flush=True)
    # The few shots come from the training split minus the calibration images, so the choice stays honest.
    data = dcvit.few_shot_subset(spec, args.shots, seed=args.seed, calibration_size=args.calibration_size)
    extra = refinement_images(args, spec)  # drawn now: too many fails before the compression runs
    results = dcvit.compress_family(big, plans, data, config, workdir=out / "checkpoints", resume=args.resume)
    if not scripts.is_main_process():  # under `accelerate launch`, only the main process goes on
        return {}
    summaries = [
        r.save(out / f"target-{label}", target=t, shots=args.shots, preset=args.preset)
        for label, t, r in zip(labels, args.targets, results)
    ]
    print("\n".join(f"{m}: {r.describe()}" for m, r in zip(members, results)), flush=True)
    models = {args.big: big, **{m: r.model for m, r in zip(members, results)}, **extras}
    if extra is not None:  # refined copies enter the pool beside the few-shot companions
        for member, label, r in zip(members, labels, results):
            refined = copy.deepcopy(r.model)
            dcvit.refine(refined, big, extra, config, epochs=args.refine_epochs)
            models[f"{member}-refined"] = refined
            dcvit.save(refined, out / f"target-{label}-refined")
        print(f"companions refined on {len(extra)} more unlabeled images (target-X-refined/)", flush=True)
    study = cascade_study(
        args.big,
        models,
        spec,
        calibration_size=args.calibration_size,
        seed=args.seed,
        max_acc_drop=args.max_acc_drop,
        delta=args.delta,
        committee={"auto": "auto", "on": True, "off": False}[args.committee],
        speed_images=args.speed_images,
        progress=sys.stderr.isatty(),
    )
    scripts.write_json(out / "study.json", study_summary(study))
    write_study(study, out)
    shipped = save_study_cascade(
        study, models, out / "cascade", data=spec, calibration_size=args.calibration_size, seed=args.seed
    )
    best, big_macs, saver_macs = study.chosen, study.costs[args.big], study.costs[study.saver]
    print(
        f"Chosen saver: {study.saver} ({saver_macs / 1e6:.2f}M MACs vs {args.big}'s {big_macs / 1e6:.2f}M; "
        f"ΔC {study.ranking[0][1]:.3f} on the calibration split)"
    )
    print(
        f"cascade on the test split: {100 * best.test_cost_reduction:.1f}% fewer MACs per image, top-1 "
        f"{100 * best.test_accuracy:.2f}% vs {100 * best.test_big_accuracy:.2f}% for {args.big} alone"
        + (" (nothing could be certified: everything goes to the big model)" if best.fallback else "")
    )
    print(f"guarantee: {guarantee_sentence(best)}")
    print(f"cascade folder: {shipped} (evaluate it with `dcvit eval --model {shipped}`)")
    print(f"report: {out / 'report.md'}")
    scripts.clean_checkpoints(args, out)  # --clean: only now, with every result written
    return {"saver": study.saver, "macs_reduction": best.test_cost_reduction, "family": summaries}


def refinement_images(args, spec: str):
    """The --refine-images set (None without it), disjoint from the shots and the calibration split."""
    if not args.refine_images:
        return None
    try:
        return dcvit.unlabeled_subset(spec, args.refine_images, args.seed, args.calibration_size, args.shots)
    except ValueError as err:
        raise ValueError(f"--refine-images: {err}") from None


def main(argv: list[str] | None = None) -> dict:
    return scripts.run_main(build_parser(), run, argv)


if __name__ == "__main__":
    main()
