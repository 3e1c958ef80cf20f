"""A dense family: one compressed model per target MACs, from one pretrained ViT and a few unlabeled images.

The targets share the synthetic metric set, the teacher's tokens and every block-wise trial whose plan
(MLP width, attention) matches, so a family costs less than separate runs.

Example (four models at 90%, 83%, 75% and 67% of the MACs, the quick preset):

    python recipes/dense_family.py --model vit_base_patch16_224 --data /data/imagenet --shots 100 \\
        --targets 0.9 0.83 0.75 0.67 --preset quick --out runs/vit-b-family

Writes OUT/target-X/model (dcvit.load) and OUT/target-X/result.json per target, OUT/family.json and
OUT/checkpoints (rerun with --resume after an interruption). `--smoke` checks the wiring in seconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the shared helpers next to this file, however the script is started
    sys.path.insert(0, HERE)

import _common as common  # noqa: E402
from dcvit.driver import compress_family, plan_for  # noqa: E402
from dcvit.data import few_shot_subset  # noqa: E402
from dcvit.files import write_json  # noqa: E402

TARGETS = (0.9, 0.83, 0.75, 0.67)


def build_parser() -> common.Parser:
    p = common.Parser(prog="dense_family.py", description=__doc__)
    p.add_argument("--model", default="vit_base_patch16_224",
                   help="timm model name (pretrained weights are loaded) or a dcvit.save directory "
                        "(default vit_base_patch16_224)")
    p.add_argument("--targets", type=common.target, nargs="+", default=list(TARGETS), metavar="T",
                   help="target MACs, each a fraction in (0, 1) or absolute MACs (default "
                        f"{' '.join(map(str, TARGETS))})")
    common.add_run_arguments(p, shots=100)
    return p


def run(args, parser, data_root: Path | None = None) -> list[dict]:
    if len({common.label(t) for t in args.targets}) < len(args.targets):
        parser.error(f"--targets has duplicates: {' '.join(map(common.label, args.targets))}")
    out = Path(args.out)
    model, spec, shots, config = common.setup_run(args, parser, data_root)
    plans = [plan_for(model, t, config) for t in args.targets]  # fail on unreachable targets before data work
    for t, plan in zip(args.targets, plans):
        print(f"target {common.label(t)}: {plan.describe()}", flush=True)
    data = few_shot_subset(spec, shots, seed=args.seed)
    results = compress_family(model, plans, data, config, workdir=out / "checkpoints", resume=args.resume)
    summaries = [common.save_result(r, t, out / f"target-{common.label(t)}", shots=shots, preset=args.preset)
                 for t, r in zip(args.targets, results)]
    write_json(out / "family.json", {"model": "smoke" if args.smoke else args.model, "data": spec, "shots": shots,
                                     "preset": args.preset, "config": config.as_dict(), "family": summaries})
    print(common.family_table(summaries))
    print(f"models: {out}/target-*/model (dcvit.load), summary: {out / 'family.json'}")
    return summaries


def main(argv: list[str] | None = None) -> list[dict]:
    return common.main_with_smoke(build_parser, run, argv)


if __name__ == "__main__":
    main()
