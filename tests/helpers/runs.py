"""Compression runs from the command line in tests: tiny settings, saved tiny teachers and image folders."""

import torch
from helpers.cli import run_cli
from helpers.models import tiny_vit
from PIL import Image

CLI_FAST = [
    "--shots",
    "8",
    "--target-macs",
    "0.8",
    "--epochs",
    "1",
    "--trial-epochs",
    "1",
    "--batch-size",
    "8",
    "--synth-iterations",
    "5",
    "--structure",
    "dcvit",
    "--quiet",
]


COMPRESS = ("compress", "--shots", "10", "--calibration-size", "0", "--target-macs", "0.7", "--structure", "drop",
            "--epochs", "1", "--synth-iterations", "2", "--batch-size", "10", "--quiet")  # fmt: skip


def other_teacher():
    model = tiny_vit()
    with torch.no_grad():
        model.head.bias.add_(1.0)  # same structure, other weights
    return model


def image_folder(root, seed, n=12):
    """n random 16x16 gray PNGs in two class folders."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        pixels = torch.randint(0, 256, (16, 16), generator=gen, dtype=torch.uint8).numpy()
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(root / f"c{i % 2}" / f"{i}.png")
    return f"imagefolder:{root}"


def compress_cli(capsys, env, out, *extra, model=None, data=None, calibration=2):
    return run_cli(
        capsys,
        "compress",
        "--model",
        model or env["model"],
        "--data",
        data or env["data"],
        "--calibration-size",
        calibration,
        "--out",
        out,
        *CLI_FAST,
        *extra,
    )
