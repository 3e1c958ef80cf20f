"""Compress a pretrained timm ImageNet ViT with a few unlabeled ImageNet images (DC-ViT, as in the paper).

Example (100 images, 75% of the MACs, the paper's settings; ImageNet laid out as PATH/train/<class>/*.JPEG):

    python recipes/vit_imagenet.py --model vit_base_patch16_224 --data /data/imagenet \\
        --shots 100 --target-macs 0.75 --preset paper --out runs/vit-b-75

Writes OUT/model (load it with dcvit.load), OUT/result.json and OUT/checkpoints (every finished step;
rerun with --resume after an interruption). `--smoke` checks the wiring in seconds on a tiny random ViT.
The paper preset is long (2000 epochs per trial and per step): run it on a GPU.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the shared helpers next to this file, however the script is started
    sys.path.insert(0, HERE)

import _common as common  # noqa: E402
from dcvit.driver import compress, plan_for  # noqa: E402
from dcvit.data import few_shot_subset  # noqa: E402


def build_parser() -> common.Parser:
    p = common.Parser(prog="vit_imagenet.py", description=__doc__)
    p.add_argument("--model", default="vit_base_patch16_224",
                   help="timm model name (pretrained weights are loaded) or a dcvit.save directory "
                        "(default vit_base_patch16_224)")
    p.add_argument("--target-macs", type=common.target, default=0.75,
                   help="fraction of the original MACs in (0, 1), or absolute MACs (default 0.75)")
    common.add_run_arguments(p, shots=100)
    return p


def run(args, parser, data_root: Path | None = None) -> dict:
    out = Path(args.out)
    model, spec, shots, config = common.setup_run(args, parser, data_root)
    plan = plan_for(model, args.target_macs, config)  # fails on unreachable targets before any data work
    print(f"plan: {plan.describe()}", flush=True)
    data = few_shot_subset(spec, shots, seed=args.seed)
    start = time.perf_counter()
    result = compress(model, plan, data, config, workdir=out / "checkpoints", resume=args.resume)
    summary = common.save_result(result, args.target_macs, out, model=args.model if not args.smoke else "smoke",
                                 data=spec, shots=shots, preset=args.preset, smoke=args.smoke,
                                 config=config.as_dict(), wall_seconds=time.perf_counter() - start)
    print(f"compressed blocks {summary['blocks']} (in that order), MLP {plan.mlp_hidden_original} -> "
          f"{plan.mlp_hidden} units, attention {'removed' if plan.remove_attention else 'kept'}")
    print(f"MACs {summary['macs_original'] / 1e6:.2f}M -> {summary['macs'] / 1e6:.2f}M "
          f"({100 * summary['macs_fraction']:.1f}% of the original) in {summary['wall_seconds']:.1f} s")
    print(f"model: {summary['model_dir']} (dcvit.load), summary: {out / 'result.json'}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    return common.main_with_smoke(build_parser, run, argv)


if __name__ == "__main__":
    main()
