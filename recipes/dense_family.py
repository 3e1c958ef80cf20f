"""A dense family: one compressed model per target MACs, from one pretrained ViT and a few unlabeled images.
The targets share the synthetic metric set, the teacher's tokens and every block-wise trial they can, so a
family costs less than separate runs. Example (models at 90%, 83%, 75% and 67% of the MACs, quick preset):

    python recipes/dense_family.py --model vit_base_patch16_224 --data /data/imagenet --shots 100 \\
        --targets 0.9 0.83 0.75 0.67 --preset quick --out runs/vit-b-family

--structure auto (the default) lets the synthetic metric set choose each block's edit (narrow or remove its
MLP, remove its attention, drop it); dcvit is the paper's structure (Eq. 1-2), mlp edits MLPs only, drop is
the block-dropping baseline. Writes OUT/target-X/{model,result.json} per target, OUT/family.json and
OUT/checkpoints (rerun with --resume after an interruption). --epochs, --synth-images, ... override the
preset's sizes (tiny values check the wiring in seconds). One file: copy it anywhere dcvit is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import dcvit

PRESETS = {
    "paper": {},  # CompressConfig.paper(): 2000 epochs per step and per trial, lr 3e-5, batch 64, RandAugment
    "quick": {"epochs": 100, "trial_epochs": 20, "synth_iterations": 200},
}
TARGETS = (0.9, 0.83, 0.75, 0.67)
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
        "--model",
        default="vit_base_patch16_224",
        help="timm model name (pretrained weights are loaded) or a dcvit.save directory (default vit_base_patch16_224)",
    )
    p.add_argument(
        "--targets",
        type=target,
        nargs="+",
        default=list(TARGETS),
        metavar="T",
        help=f"target MACs, each a fraction in (0, 1) or absolute MACs (default {' '.join(map(str, TARGETS))})",
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


def table(summaries: list[dict]) -> str:
    lines = ["| target | MACs | of original | edited blocks |", "|---|---|---|---|"]
    for s in summaries:
        edits = "; ".join(f"{b['block']}: {b['edit']}" for b in s["structure"] if b["edit"] != "kept")
        lines.append(f"| {s['target']:g} | {s['macs'] / 1e6:.2f}M | {100 * s['macs_fraction']:.1f}% | {edits} |")
    return "\n".join(lines)


def run(args) -> list[dict]:
    labels = [f"{t:g}" for t in args.targets]
    if len(set(labels)) < len(labels):
        raise ValueError(f"--targets has duplicates: {' '.join(labels)}")
    out, spec, config = Path(args.out), data_spec(args.data), config_for(args)
    if (out / "checkpoints" / "settings.json").is_file() and not args.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    model = dcvit.resolve_model(args.model, weights="pretrained")  # never random init: pointless to compress
    plans = [dcvit.plan_for(model, t, config) for t in args.targets]  # fail on unreachable targets before data work
    print("\n".join(f"target {label}: {plan.describe()}" for label, plan in zip(labels, plans)), flush=True)
    data = dcvit.few_shot_subset(spec, args.shots, seed=args.seed)
    results = dcvit.compress_family(model, plans, data, config, workdir=out / "checkpoints", resume=args.resume)
    if int(os.environ.get("RANK", 0)) > 0:  # under `accelerate launch`, only the main process writes
        return []
    summaries = [
        r.save(out / f"target-{label}", target=t, shots=args.shots, preset=args.preset)
        for label, t, r in zip(labels, args.targets, results)
    ]
    write_json(
        out / "family.json",
        {
            "model": args.model,
            "data": spec,
            "shots": args.shots,
            "preset": args.preset,
            "config": config.as_dict(),
            "family": summaries,
        },
    )
    print(table(summaries))
    print(f"models: {out}/target-*/model (dcvit.load), summary: {out / 'family.json'}")
    return summaries


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:  # errors a user can fix (dcvit's UnsupportedModelError included)
        parser.error(str(err))


if __name__ == "__main__":
    main()
