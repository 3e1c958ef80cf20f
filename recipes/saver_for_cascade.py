"""Find a little "saver" for a big ViT: compress the big model into a few companions, add any other
candidates, pick the saver by ΔC on a held-out calibration split, calibrate the cascade's threshold there,
report it on the test split and time it. Example (companions at 50% and 30% of ViT-B's MACs, plus timm's
ViT-Ti as an outside candidate):

    python recipes/saver_for_cascade.py --big vit_base_patch16_224 --data /data/imagenet --shots 100 \\
        --targets 0.5 0.3 --extra-savers vit_tiny_patch16_224 --preset quick --out runs/vit-b-saver

ImageFolder data needs PATH/train (few shots and the calibration split, kept disjoint) and PATH/val (test).
Writes OUT/report.md, OUT/study.json, OUT/curves.png and OUT/target-X/{model,result.json} per companion.
Every candidate sees the big model's eval transform: it must take the same input size and label space. The
study runs on the CPU. --structure auto (the default) lets the synthetic metric set choose each block's edit;
dcvit is the paper's structure, mlp edits MLPs only, drop is the block-dropping baseline. --epochs, ...
override the preset's sizes (tiny values check the wiring in seconds). One file: copy it anywhere dcvit is
installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import dcvit
from dcvit.studies.companions import cascade_study, check_saver
from dcvit.studies.report import study_summary, write_study

PRESETS = {
    "paper": {},  # CompressConfig.paper(): 2000 epochs per step and per trial, lr 3e-5, batch 64, RandAugment
    "quick": {"epochs": 100, "trial_epochs": 20, "synth_iterations": 200},
}
TARGETS = (0.5, 0.3)
SIZES = ("epochs", "trial_epochs", "batch_size", "synth_images", "synth_iterations", "search_steps")
DATASETS = ("imagefolder", "cifar10", "cifar100", "fashion-mnist")


class Parser(argparse.ArgumentParser):
    """Errors are one line on stderr (exit 2); --help shows this docstring as written."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see --help)\n")


def target(text: str) -> float:
    """argparse type: a MACs target, a fraction in (0, 1) of the original or absolute MACs above 1."""
    value = float(text)  # argparse reports a ValueError as "invalid target value"
    if not math.isfinite(value) or value <= 0 or value == 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1) of the original MACs nor MACs above 1")
    return value


def positive_int(text: str) -> int:
    if int(text) < 1:  # argparse reports a ValueError as "invalid positive_int value"
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def build_parser() -> Parser:
    p = Parser(prog=Path(__file__).name, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--big",
        default="vit_base_patch16_224",
        help="the big model: timm name (pretrained weights "
        "are loaded) or a dcvit.save directory (default vit_base_patch16_224)",
    )
    p.add_argument(
        "--targets",
        type=target,
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
        type=positive_int,
        default=dcvit.CALIBRATION_SIZE,
        help=f"held-out training images for saver choice and threshold calibration (default {dcvit.CALIBRATION_SIZE})",
    )
    p.add_argument(
        "--max-acc-drop",
        type=float,
        default=0.0,
        help="tolerated top-1 drop vs the big model, a fraction in [0, 1) (0.01 = 1 point; default 0 = lossless)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="one-sided confidence in [0.5, 1) that the cascade "
        "stays within --max-acc-drop on new data (default 0.95; 0: compare measured accuracies)",
    )
    p.add_argument(
        "--speed-images", type=positive_int, default=2000, help="test images for the timed cascade (default 2000)"
    )
    p.add_argument(
        "--data",
        required=True,
        help="an ImageFolder root (PATH/train is used when present) or "
        f"KIND:PATH, KIND one of {', '.join(DATASETS)}; labels are never used",
    )
    p.add_argument("--shots", type=positive_int, default=100, help="unlabeled training images (default 100)")
    p.add_argument(
        "--structure",
        choices=("auto", "dcvit", "drop", "mlp"),
        default="auto",
        help="what blocks may lose (default auto; see above)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="paper: the paper's settings (2000 "
        "epochs, lr 3e-5, batch 64, RandAugment); quick: 100 epochs per step, 20 per trial (default paper)",
    )
    p.add_argument("--out", required=True, help="output folder (checkpoints go to OUT/checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--seed", type=int, default=0, help="few-shot sampling and training seed (default 0)")
    sizes = p.add_argument_group("sizes", "override the preset's (the dcvit.CompressConfig fields of these names)")
    for name in SIZES:
        sizes.add_argument(f"--{name.replace('_', '-')}", type=positive_int, metavar="N")
    return p


def config_for(args) -> dcvit.CompressConfig:
    sizes = {k: getattr(args, k) for k in SIZES if getattr(args, k) is not None}
    config = dcvit.CompressConfig.paper(
        **{**PRESETS[args.preset], **sizes}, seed=args.seed, progress=sys.stderr.isatty()
    )
    return config.for_structure(args.structure)


def data_spec(text: str) -> str:
    """--data as a dataset spec (a bare path is an ImageFolder root), checked before any slow work."""
    kind, _, path = text.partition(":")
    if kind.lower() not in DATASETS:
        text, path = f"imagefolder:{text}", text
    if path and not Path(path).exists():
        raise FileNotFoundError(f"dataset path {path} does not exist")
    return text


def write_json(path: Path, obj) -> None:
    """Atomically: a temporary file next to PATH, renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def run(args) -> dict:
    if not 0 <= args.max_acc_drop < 1 or (args.confidence and not 0.5 <= args.confidence < 1):
        raise ValueError("--max-acc-drop must be a fraction in [0, 1) and --confidence a level in [0.5, 1) or 0")
    out, spec, config = Path(args.out), data_spec(args.data), config_for(args)
    root = Path(spec.partition(":")[2])
    if spec.startswith("imagefolder:") and not any((root / s).is_dir() for s in ("val", "test")):
        raise ValueError(f"{root} needs train/ and val/ (or test/) sub-folders: the test split must be separate")
    labels = [f"{t:g}" for t in args.targets]
    members = [f"dcvit-{label}" for label in labels]
    names = [args.big, *members, *args.extra_savers]
    if len(set(names)) < len(names):
        raise ValueError("--targets and --extra-savers must name distinct models, none of them the big one")
    if (out / "checkpoints" / "settings.json").is_file() and not args.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    big = dcvit.resolve_model(args.big, weights="pretrained")  # never random init: pointless to compress
    extras = {name: dcvit.resolve_model(name, weights="pretrained") for name in args.extra_savers}
    for name, model in extras.items():
        check_saver(name, model, big)  # the same input and classes as the big model, or a one-line error
    plans = [dcvit.plan_for(big, t, config) for t in args.targets]  # fail on unreachable targets before data work
    print("\n".join(f"{m}: {plan.describe()}" for m, plan in zip(members, plans)), flush=True)
    # The few shots come from the training split minus the calibration images, so the choice stays honest.
    data = dcvit.few_shot_subset(spec, args.shots, seed=args.seed, calibration_size=args.calibration_size)
    results = dcvit.compress_family(big, plans, data, config, workdir=out / "checkpoints", resume=args.resume)
    if int(os.environ.get("RANK", 0)) > 0:  # under `accelerate launch`, only the main process goes on
        return {}
    summaries = [
        r.save(out / f"target-{label}", target=t, shots=args.shots, preset=args.preset)
        for label, t, r in zip(labels, args.targets, results)
    ]
    print("\n".join(f"{m}: {r.describe()}" for m, r in zip(members, results)), flush=True)
    models = {args.big: big, **{m: r.model for m, r in zip(members, results)}, **extras}
    study = cascade_study(
        args.big,
        models,
        spec,
        calibration_size=args.calibration_size,
        seed=args.seed,
        max_acc_drop=args.max_acc_drop,
        confidence=args.confidence or None,
        speed_images=args.speed_images,
        progress=sys.stderr.isatty(),
    )
    write_json(out / "study.json", study_summary(study))
    write_study(study, out)
    best, big_macs, saver_macs = study.calibrations[study.saver], study.costs[args.big], study.costs[study.saver]
    print(
        f"Chosen saver: {study.saver} ({saver_macs / 1e6:.2f}M MACs vs {args.big}'s {big_macs / 1e6:.2f}M; "
        f"ΔC {study.ranking[0][1]:.3f} on the calibration split)"
    )
    print(
        f"cascade on the test split: {100 * best.test_cost_reduction:.1f}% fewer MACs per image, top-1 "
        f"{100 * best.test_accuracy:.2f}% vs {100 * best.test_big_accuracy:.2f}% for {args.big} alone"
        + (" (no cheaper threshold kept the accuracy: everything goes to the big model)" if best.fallback else "")
    )
    print(f"report: {out / 'report.md'}")
    return {"saver": study.saver, "macs_reduction": best.test_cost_reduction, "family": summaries}


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:  # errors a user can fix (dcvit's UnsupportedModelError included)
        parser.error(str(err))


if __name__ == "__main__":
    main()
