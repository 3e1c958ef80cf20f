"""`dcvit demo`: the main job on the embedded default (what `make demo` runs)."""

from __future__ import annotations

from ..outdir import check_out
from .common import Command, seed_argument


def _demo_arguments(p) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--fast", action="store_true", help="a reduced run (under 3 minutes) that exercises every step")
    p.add_argument("--shots", type=int, help="unlabeled images (default 100; 50 with --fast)")
    p.add_argument(
        "--no-metric-cache",
        action="store_true",
        help="synthesize each family's metric set anew instead of sharing one through OUT/checkpoints/metric-sets",
    )
    seed_argument(p)


def run_demo_command(args) -> None:
    from ..studies.demo import DemoSettings, run_demo

    settings = DemoSettings.fast() if args.fast else DemoSettings()
    changes = {"seed": args.seed, "metric_cache": not args.no_metric_cache}
    if args.shots is not None:
        if args.shots < 1:
            raise ValueError(f"--shots must be a positive integer; got {args.shots}")
        changes["shots"] = args.shots
    # before the teacher, the shots and the compression runs; the demo marks the folder itself (.dcvit-demo)
    check_out(args.out, "demo")
    from dataclasses import replace

    run_demo(args.out, replace(settings, **changes), progress=not args.quiet)


COMMANDS = [
    Command(
        "demo",
        "compress the shipped teacher into a family, compare with block dropping, build a cascade, write a report",
        _demo_arguments,
        run_demo_command,
    ),
]
