"""Planning for blocks of different widths (Swin's stages, mixed MLP ratios) and `tv:NAME` models.

A plan states the share of each block's own MLP that is kept; whichever n candidates the trial picks, the
compressed model lands at most 1% off the target, and a plan whose measured MACs miss it is refused.
"""

import dataclasses

import pytest
import torch
from helpers.models import small_vit, tiny_swin
from timm.layers import Mlp

import dcvit
import dcvit.planning as planning
from dcvit.cli import main
from dcvit.surgery import edit_blocks

# Swin-S and Swin-B trace 24 blocks per MACs count (several seconds each on a busy CPU): slow tests.
SWINS = [
    "swin_tiny_patch4_window7_224",
    pytest.param("swin_small_patch4_window7_224", marks=pytest.mark.slow),
    pytest.param("swin_base_patch4_window7_224", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=SWINS)
def swin(request):
    """The real Swin-T/S/B structure (stage depths, widths, heads) at 32 pixels, random init, and its profile."""
    torch.manual_seed(0)
    model = dcvit.create_model(request.param, img_size=32, num_classes=10).eval()
    return model, dcvit.macs_profile(model)


def mixed_vit():
    """A timm ViT whose blocks' MLPs have 1x to 8x the embedding width, in no order."""
    torch.manual_seed(0)
    model = small_vit(depth=6, dim=32, heads=2)
    for block, hidden in zip(model.blocks, (128, 64, 256, 32, 192, 96)):
        block.mlp = Mlp(32, hidden)
    return model


def savings(prof, p):
    """Per candidate block: the MACs the plan removes from it (attention, and the MLP units it drops)."""
    kept = {b: p.hidden_for(prof.mlp_hidden[b]) for b in p.candidate_blocks}
    attn = {b: prof.attn[b] if p.remove_attention else 0 for b in p.candidate_blocks}
    return {b: attn[b] + (prof.mlp_hidden[b] - kept[b]) * prof.mlp_unit(b) for b in p.candidate_blocks}


def check_lands_on_target(model, prof, fraction):
    """plan, then apply_plan to the n candidates it makes save least (the trial may pick any n): within 1%."""
    p = dcvit.plan(model, fraction)
    target = int(fraction * prof.total)
    assert p.macs_target == target
    saved = savings(prof, p)
    least = sorted(saved, key=saved.get)[: p.n_blocks]
    measured = dcvit.count_macs(dcvit.apply_plan(model, p, least))
    assert abs(measured - target) <= 0.01 * target, (p.describe(), measured / target)
    assert measured == p.macs_planned
    return p, saved


@pytest.mark.parametrize("fraction", [0.75, 0.5])
def test_swin_plan_lands_within_one_percent(swin, fraction):
    model, prof = swin
    p, _ = check_lands_on_target(model, prof, fraction)
    widths = {prof.mlp_hidden[b] for b in p.candidate_blocks}
    assert len(widths) > 1 and p.mlp_hidden_original == max(widths)
    assert 0 < p.keep_ratio < 1  # every block's MLP is narrowed by the same share (the defect kept them whole)


@pytest.mark.parametrize("fraction", [0.75, 0.5])
def test_mixed_width_vit_plan_lands_within_one_percent(fraction):
    model = mixed_vit()
    prof = dcvit.macs_profile(model)
    p, saved = check_lands_on_target(model, prof, fraction)
    most = sorted(saved, key=saved.get)[-p.n_blocks :]
    assert dcvit.count_macs(dcvit.apply_plan(model, p, most)) <= p.macs_planned
    for b in p.candidate_blocks:  # each block keeps the plan's share of its own width, rounded down
        h = prof.mlp_hidden[b]
        assert p.hidden_for(h) == max(1, p.mlp_hidden * h // p.mlp_hidden_original) <= p.keep_ratio * h + 1e-9


def test_homogeneous_vit_share_is_eq2():
    model = small_vit(depth=8, dim=48)
    p = dcvit.plan(model, 0.7)
    assert p.hidden_for(p.mlp_hidden_original) == p.mlp_hidden
    assert p.hidden_for(p.mlp_hidden_original // 2) == p.mlp_hidden // 2


def test_a_plan_that_misses_its_target_is_refused(monkeypatch):
    """A per-block estimate that is wrong (here: MLPs counted twice) must not pass as a plan."""
    real = planning.macs_profile

    def doubled_mlps(model, input_size=None):
        prof = real(model, input_size)
        return dataclasses.replace(prof, mlp=tuple(2 * m for m in prof.mlp))

    monkeypatch.setattr(planning, "macs_profile", doubled_mlps)
    with pytest.raises(ValueError, match="above the target") as err:
        dcvit.plan(mixed_vit(), 0.75)
    assert "\n" not in str(err.value) and "floor" not in str(err.value)


def test_a_block_drop_plan_that_misses_its_target_is_refused(monkeypatch):
    real = planning.macs_profile

    def doubled_blocks(model, input_size=None):
        prof = real(model, input_size)
        return dataclasses.replace(prof, blocks=tuple(2 * b for b in prof.blocks))

    model = tiny_swin()
    assert dcvit.count_macs(dcvit.drop_blocks(model, [1, 2])) <= dcvit.plan_block_drop(model, 0.75).macs_target
    monkeypatch.setattr(planning, "macs_profile", doubled_blocks)
    with pytest.raises(ValueError, match="above the target"):
        dcvit.plan_block_drop(model, 0.75)


def test_below_the_floor_keeps_its_own_message():
    with pytest.raises(ValueError, match="below the floor"):
        dcvit.plan(mixed_vit(), 0.05)


@pytest.mark.parametrize("structure", ["auto", "mlp"])
def test_search_floor_is_the_measured_floor_on_swin(structure):
    """The search's floor (all blocks dropped / all MLPs removed) is what those edits measure on Swin."""
    model = tiny_swin()
    blocks = range(len(dcvit.macs_profile(model).attn))
    attention = structure == "mlp"
    floor = dcvit.count_macs(edit_blocks(model, {b: (attention, []) for b in blocks}))
    total = dcvit.count_macs(model)
    assert planning.plan_search(model, floor / total + 1e-6, structure=structure).macs_target >= floor - 1
    with pytest.raises(ValueError, match="floor"):
        planning.plan_search(model, (floor - 1000) / total, structure=structure)


# --- tv:NAME --------------------------------------------------------------------------------------------
def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv",
    [  # `dcvit macs` counts any model, a ResNet too (tests/test_cli.py)
        ["plan", "--target-macs", "0.5"],
        ["plan", "--target-macs", "0.5", "--structure", "dcvit"],
        ["compress", "--target-macs", "0.5", "--out", "OUT"],
        ["family", "--targets", "0.9", "0.8", "--out", "OUT"],
        ["bench"],
        ["eval"],
        ["synth", "--out", "OUT"],
    ],
)
def test_unsupported_torchvision_model_is_one_line(capsys, tmp_path, argv):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code, out, err = run(capsys, *argv[:1], "--model", "tv:resnet18", *argv[1:])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "tv:resnet18 (ResNet) has no dcvit adapter" in err and "tv:vit_b_16" in err


def test_unknown_torchvision_name_is_one_line(capsys):
    code, _, err = run(capsys, "plan", "--model", "tv:no_such_net", "--target-macs", "0.5")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown torchvision model 'tv:no_such_net'" in err and "supported torchvision families" in err


def test_torchvision_settings_refused_in_one_line():
    with pytest.raises(ValueError, match="cannot be built") as err:
        dcvit.create_model("tv:vit_b_16", no_such_setting=1)
    assert "\n" not in str(err.value)


def test_torchvision_vit_data_config_follows_its_size():
    model = dcvit.create_model("tv:vit_b_16", image_size=32, num_classes=10)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model.pretrained_cfg["interpolation"] == "bilinear" and model.pretrained_cfg["crop_pct"] == 224 / 256
    assert dcvit.macs_profile(model).input_size == (3, 32, 32)


def test_torchvision_swin_macs_by_name(capsys):
    """`dcvit macs --model tv:swin_t` printed an AttributeError traceback: the factory read ViT's image_size."""
    code, out, err = run(capsys, "macs", "--model", "tv:swin_t", "--input-size", "3", "64", "64")
    assert code == 0, err
    assert "GMACs" in out and len(out.splitlines()) == 2 + 12  # header, column names, 12 blocks
