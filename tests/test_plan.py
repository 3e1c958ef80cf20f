import math

import pytest
from helpers.cli import one_line_error, run_cli
from helpers.models import small_vit, tiny_vit

import dcvit


@pytest.mark.parametrize("depth,dim,ratio", [(4, 32, 4.0), (8, 48, 4.0), (12, 64, 2.0), (6, 96, 3.0)])
@pytest.mark.parametrize("fraction", [0.97, 0.85, 0.7, 0.5])
def test_planned_macs_at_most_target_and_within_n_units(depth, dim, ratio, fraction):
    model = small_vit(depth=depth, dim=dim, heads=4 if dim % 4 == 0 else 3, mlp_ratio=ratio)
    profile = dcvit.macs_profile(model)
    try:
        p = dcvit.plan(model, fraction)
    except ValueError as err:
        assert "floor" in str(err)
        return
    unit = profile.mlp_unit(1)
    assert p.macs_planned <= p.macs_target
    assert p.macs_target - p.macs_planned <= p.n_blocks * unit
    assert p.mlp_hidden >= 1
    assert p.macs_target == int(fraction * profile.total)


def test_eq1_eq2_on_uniform_vit():
    model = small_vit(depth=12, dim=48)
    prof = dcvit.macs_profile(model)
    a, m, hidden = prof.attn[1], prof.mlp[1], prof.mlp_hidden[1]
    target = int(0.8 * prof.total)
    p = dcvit.plan(model, 0.8)
    n = math.ceil((prof.total - target) / (a + m))
    r = ((prof.total - target) - n * a) / (n * m)
    assert p.n_blocks == n and p.remove_attention
    assert p.mlp_hidden == math.floor((1 - r) * hidden)


def test_matched_block_drop_macs_compresses_one_more_block():
    model = small_vit(depth=12, dim=48)
    for k in (1, 2, 3):
        dropped = dcvit.drop_blocks(model, range(1, 1 + k))
        p = dcvit.plan(model, dcvit.count_macs(dropped))
        assert p.n_blocks == k + 1 and 0 < p.mlp_hidden < p.mlp_hidden_original


def test_forced_blocks_and_absolute_target():
    model = small_vit(depth=8)
    total = dcvit.count_macs(model)
    p = dcvit.plan(model, int(0.8 * total), blocks=4)
    assert p.n_blocks == 4 and p.macs_planned <= int(0.8 * total)
    with pytest.raises(ValueError, match="blocks"):
        dcvit.plan(model, 0.5, blocks=1)


def test_small_reduction_keeps_attention_and_narrows_one_mlp():
    model = small_vit(depth=6)
    p = dcvit.plan(model, 0.995)
    assert p.n_blocks == 1 and not p.remove_attention and p.mlp_hidden < p.mlp_hidden_original


def test_dense_range_every_percent_is_reachable():
    model = small_vit(depth=6, dim=32, heads=2)
    prof = dcvit.macs_profile(model)
    floor_fraction = (prof.total - sum(prof.attn[b] + prof.mlp[b] - prof.mlp_unit(b) for b in range(1, 5))) / prof.total
    for pct in range(math.ceil(100 * floor_fraction) + 1, 100, 7):
        p = dcvit.plan(model, pct / 100)
        assert p.macs_planned <= p.macs_target


@pytest.mark.parametrize(
    "bad,msg",
    [
        (0, "positive"),
        (-0.5, "positive"),
        (1.0, "not below"),
        (10**12, "not below"),
        ("abc", "number"),
        (0.02, "floor"),
    ],
)
def test_bad_targets(bad, msg):
    with pytest.raises(ValueError, match=msg):
        dcvit.plan(small_vit(depth=4), bad)


def test_candidate_blocks_validated():
    with pytest.raises(ValueError, match="candidate"):
        dcvit.plan(small_vit(depth=4), 0.8, candidate_blocks=[7])


# --- plans that would miss their target ---------------------------------------------------------------
def test_repeated_candidates_are_refused(capsys):
    with pytest.raises(ValueError, match="distinct"):
        dcvit.plan(tiny_vit(), 0.8, candidate_blocks=[3, 3, 3])
    code, _, err = run_cli(
        capsys,
        "plan",
        "--model",
        "fmnist_vit12",
        "--structure",
        "dcvit",
        "--target-macs",
        "0.75",
        "--candidates",
        3,
        3,
        3,
        3,
        3,
        3,
    )
    one_line_error(code, err, "distinct")


def test_a_plan_above_its_target_is_never_returned(monkeypatch):
    import dcvit.planning as planning

    monkeypatch.setattr(planning, "_candidates", lambda profile, blocks: tuple(blocks))  # bypass the check
    with pytest.raises(ValueError, match="above the target"):
        planning.plan(tiny_vit(), 0.8, candidate_blocks=[3, 3, 3])
