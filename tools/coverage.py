#!/usr/bin/env python
"""The architecture coverage table of README.md, measured, not written by hand.

For each family, a shrunk random-init variant of a registered model (seconds per family on a CPU) goes
through what a user does: plan 75% of its MACs and apply the plan (within 1% of the target?), a one-step
`dcvit.compress`, `dcvit.save` / `dcvit.load` (identical outputs?), `drop_blocks`, then TorchScript and
torch.export of the compressed model (outputs equal to eager?). Each cell says what happened.

    python tools/coverage.py            # print the table
    python tools/coverage.py --write    # and replace the table between the markers in README.md

tests/test_coverage.py runs the same checks and fails if README's table differs from them.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

import dcvit
from dcvit.arch import UnsupportedModelError, get_adapter
from dcvit.config import CompressConfig
from dcvit.scripts import script_parser
from dcvit.surgery import drop_blocks

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- coverage table: tools/coverage.py --write -->", "<!-- end of coverage table -->"
SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=10)
TINY_RUN = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=4, synth_images=4, synth_iterations=2, search_steps=1, progress=False
)


@dataclass(frozen=True)
class Family:
    name: str  # in words, as the README says it
    example: str  # a registered model name a user would pass
    build: Callable[[], nn.Module]  # a shrunk random-init variant of it


def timm(name: str, **settings) -> Callable[[], nn.Module]:
    return lambda: dcvit.create_model(name, **{**SMALL, **settings})


def swin(name: str, **settings) -> Callable[[], nn.Module]:
    small = dict(img_size=32, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=10)
    return lambda: dcvit.create_model(name, **{**small, **settings})


def tv_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def tv_swin(v2: bool) -> Callable[[], nn.Module]:
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    layers = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return lambda: SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10, **layers
    )


FAMILIES = (
    Family("timm ViT / DeiT", "vit_base_patch16_224", timm("vit_tiny_patch16_224")),
    Family("timm DeiT3 (LayerScale)", "deit3_small_patch16_224", timm("deit3_small_patch16_224")),
    Family("timm ViT, post-norm blocks", "vit_base_patch16_rpn_224", timm("vit_base_patch16_rpn_224")),
    Family("timm ViT, SwiGLU MLP (AIMv2)", "aimv2_large_patch14_224", timm("aimv2_large_patch14_224")),
    Family("timm ViT, packed SwiGLU (DINOv2-g)", "vit_giant_patch14_dinov2", timm("vit_giant_patch14_dinov2")),
    Family("timm EVA-02 (rope, SwiGLU)", "eva02_tiny_patch14_224", timm("eva02_tiny_patch14_224", ref_feat_shape=4)),
    Family("timm rope ViT", "vit_small_patch16_rope_224", timm("vit_small_patch16_rope_224")),
    Family("timm BEiT", "beit_base_patch16_224", timm("beit_base_patch16_224")),
    Family("timm CaiT", "cait_xxs24_224", timm("cait_xxs24_224", depth_token_only=1)),
    Family("timm ViT-RelPos", "vit_relpos_small_patch16_224", timm("vit_relpos_small_patch16_224")),
    Family("timm Swin", "swin_tiny_patch4_window7_224", swin("swin_tiny_patch4_window7_224", window_size=4)),
    Family("timm Swin V2", "swinv2_tiny_window8_256", swin("swinv2_tiny_window8_256")),
    Family("torchvision ViT", "tv:vit_b_16", tv_vit),
    Family("torchvision Swin", "tv:swin_t", tv_swin(False)),
    Family("torchvision Swin V2", "tv:swin_v2_t", tv_swin(True)),
    Family("timm ViT, parallel blocks", "vit_small_patch16_18x2_224", timm("vit_small_patch16_18x2_224")),
)
COLUMNS = ("plan 75%", "compress", "save/load", "drop blocks", "TorchScript", "torch.export")


def _outcome(check: Callable[[], str]) -> str:
    try:
        return check()
    except UnsupportedModelError:
        raise
    except Exception as err:  # the table reports what a user would meet, whatever it is
        return f"no ({type(err).__name__})"


def _same(a: torch.Tensor, b: torch.Tensor) -> str:
    return "yes" if torch.allclose(a, b, atol=1e-5, rtol=1e-4) else f"no (max diff {float((a - b).abs().max()):.1e})"


def check_family(family: Family) -> dict[str, str]:
    torch.manual_seed(0)
    model = family.build().eval()
    try:
        adapter = get_adapter(model)
    except UnsupportedModelError:
        return dict.fromkeys(COLUMNS, "refused in one line")
    size = dcvit.macs.default_input_size(model)
    x = torch.randn(2, *size)
    plan = dcvit.plan(model, 0.75)
    small = dcvit.apply_plan(model, plan, plan.candidate_blocks[: plan.n_blocks]).eval()
    landed = dcvit.count_macs(small, size) / plan.macs_original
    row = {"plan 75%": f"{'yes' if abs(landed - 0.75) <= 0.0075 else 'no'} ({100 * landed:.1f}%)"}
    data = torch.utils.data.TensorDataset(torch.randn(4, *size), torch.zeros(4, dtype=torch.long))
    row["compress"] = _outcome(lambda: "yes" if dcvit.compress(model, 0.9, data, TINY_RUN).macs else "no")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        row["save/load"] = _outcome(
            lambda: (dcvit.save(small, Path(tmp) / "m"), _same(dcvit.load(Path(tmp) / "m")(x), small(x)))[1]
        )
        row["drop blocks"] = _outcome(
            lambda: "yes" if drop_blocks(model, [len(adapter.blocks(model)) - 1])(x).shape == small(x).shape else "no"
        )
        row["TorchScript"] = _outcome(lambda: _same(torch.jit.script(small)(x), small(x)))
        if row["TorchScript"].startswith("no") and _outcome(lambda: torch.jit.script(model) and "yes") != "yes":
            row["TorchScript"] = "no, nor the original"  # timm's own model does not script: not ours to fix
        row["torch.export"] = _outcome(lambda: _same(torch.export.export(small, (x,)).module()(x), small(x)))
    return row  # fmt: skip


def table(rows: dict[str, dict[str, str]]) -> str:
    lines = ["| family | example | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for family in FAMILIES:
        cells = " | ".join(rows[family.name][c] for c in COLUMNS)
        lines.append(f"| {family.name} | `{family.example}` | {cells} |")
    return "\n".join(lines)


def readme_table(text: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README.md has no coverage table markers ({START} ... {END})")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script's deprecation notice
    measured = table({f.name: check_family(f) for f in FAMILIES})
    print(measured)
    if args.write:
        text = README.read_text()
        before, rest = text.split(START, 1)
        README.write_text(before + START + "\n" + measured + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
