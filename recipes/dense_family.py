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

from pathlib import Path

import dcvit
from dcvit import scripts

TARGETS = (0.9, 0.83, 0.75, 0.67)


def build_parser() -> scripts.OneLineParser:
    p = scripts.script_parser(__doc__, prog=Path(__file__).name)
    p.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm model name (pretrained weights are loaded) or a dcvit.save directory (default vit_base_patch16_224)",
    )
    p.add_argument(
        "--targets",
        type=scripts.target_macs,
        nargs="+",
        default=list(TARGETS),
        metavar="T",
        help=f"target MACs, each a fraction in (0, 1) or absolute MACs (default {' '.join(map(str, TARGETS))})",
    )
    scripts.add_run_arguments(p)
    return p


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
    out, spec, config = Path(args.out), scripts.data_spec(args.data), scripts.config_from_args(args)
    scripts.refuse_existing_run(out, args.resume)  # a run begun or finished: only with --resume
    model = dcvit.resolve_model(args.model, weights="pretrained")  # never random init: pointless to compress
    plans = [dcvit.plan_for(model, t, config) for t in args.targets]  # fail on unreachable targets before data work
    print("\n".join(f"target {label}: {plan.describe()}" for label, plan in zip(labels, plans)), flush=True)
    data = dcvit.few_shot_subset(spec, args.shots, seed=args.seed)
    results = dcvit.compress_family(model, plans, data, config, workdir=out / "checkpoints", resume=args.resume)
    if not scripts.is_main_process():  # under `accelerate launch`, only the main process writes
        return []
    summaries = [
        r.save(out / f"target-{label}", target=t, shots=args.shots, preset=args.preset)
        for label, t, r in zip(labels, args.targets, results)
    ]
    scripts.write_json(
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
    scripts.clean_checkpoints(args, out)  # --clean: only now, with every result written
    return summaries


def main(argv: list[str] | None = None) -> list[dict]:
    return scripts.run_main(build_parser(), run, argv)


if __name__ == "__main__":
    main()
