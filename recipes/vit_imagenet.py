"""Compress a pretrained timm ImageNet ViT with a few unlabeled ImageNet images (DC-ViT, as in the paper).

Example (100 images, 75% of the MACs, the paper's settings; ImageNet laid out as PATH/train/<class>/*.JPEG):

    python recipes/vit_imagenet.py --model vit_base_patch16_224 --data /data/imagenet \\
        --shots 100 --target-macs 0.75 --preset paper --out runs/vit-b-75

--structure auto (the default) lets the synthetic metric set choose each block's edit (narrow or remove its
MLP, remove its attention, drop it); dcvit is the paper's structure (Eq. 1-2), mlp edits MLPs only, drop is
the block-dropping baseline. Writes OUT/model (load it with dcvit.load), OUT/result.json and OUT/checkpoints
(every finished step; rerun with --resume after an interruption). The paper preset is long (2000 epochs per
trial and per step): run it on a GPU. --epochs, --synth-images, ... override the preset's sizes (tiny values
check the wiring in seconds). A single file: copy it anywhere dcvit is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import dcvit

PRESETS = {
    "paper": {},  # CompressConfig.paper(): 2000 epochs per step and per trial, lr 3e-5, batch 64, RandAugment
    "quick": {"epochs": 100, "trial_epochs": 20, "synth_iterations": 200},
}
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
        "--target-macs",
        type=target,
        default=0.75,
        help="fraction of the original MACs in (0, 1), or absolute MACs (default 0.75)",
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
    out, spec, config = Path(args.out), data_spec(args.data), config_for(args)
    if (out / "checkpoints" / "settings.json").is_file() and not args.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    model = dcvit.resolve_model(args.model, weights="pretrained")  # never random init: pointless to compress
    plan = dcvit.plan_for(model, args.target_macs, config)  # fails on unreachable targets before any data work
    print(f"plan: {plan.describe()}", flush=True)
    data = dcvit.few_shot_subset(spec, args.shots, seed=args.seed)
    start = time.perf_counter()
    result = dcvit.compress(model, plan, data, config, workdir=out / "checkpoints", resume=args.resume)
    if int(os.environ.get("RANK", 0)) > 0:  # under `accelerate launch`, only the main process writes
        return {}
    summary = result.save(
        out,
        target=args.target_macs,
        model=args.model,
        data=spec,
        shots=args.shots,
        preset=args.preset,
        config=config.as_dict(),
        wall_seconds=time.perf_counter() - start,
    )
    print(result.describe())
    print(
        f"MACs {summary['macs_original'] / 1e6:.2f}M -> {summary['macs'] / 1e6:.2f}M "
        f"({100 * summary['macs_fraction']:.1f}% of the original) in {summary['wall_seconds']:.1f} s"
    )
    print(f"model: {summary['model_dir']} (dcvit.load), summary: {out / 'result.json'}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:  # errors a user can fix (dcvit's UnsupportedModelError included)
        parser.error(str(err))


if __name__ == "__main__":
    main()
