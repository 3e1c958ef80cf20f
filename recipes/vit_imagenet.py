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

import time
from pathlib import Path

import dcvit
from dcvit import scripts


def build_parser() -> scripts.OneLineParser:
    p = scripts.script_parser(__doc__, prog=Path(__file__).name)
    p.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm model name (pretrained weights are loaded) or a dcvit.save directory (default vit_base_patch16_224)",
    )
    p.add_argument(
        "--target-macs",
        type=scripts.target_macs,
        default=0.75,
        help="fraction of the original MACs in (0, 1), or absolute MACs (default 0.75)",
    )
    scripts.add_run_arguments(p)
    return p


def run(args) -> dict:
    out, spec, config = Path(args.out), scripts.data_spec(args.data), scripts.config_from_args(args)
    scripts.refuse_existing_run(out, args.resume)  # a run begun or finished: only with --resume
    model = dcvit.resolve_model(args.model, weights="pretrained")  # never random init: pointless to compress
    plan = dcvit.plan_for(model, args.target_macs, config)  # fails on unreachable targets before any data work
    print(f"plan: {plan.describe()}", flush=True)
    data = dcvit.few_shot_subset(spec, args.shots, seed=args.seed)
    start = time.perf_counter()
    result = dcvit.compress(model, plan, data, config, workdir=out / "checkpoints", resume=args.resume)
    if not scripts.is_main_process():  # under `accelerate launch`, only the main process writes
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
    scripts.clean_checkpoints(args, out)  # --clean: only now, with every result written
    return summary


def main(argv: list[str] | None = None) -> dict:
    return scripts.run_main(build_parser(), run, argv)


if __name__ == "__main__":
    main()
