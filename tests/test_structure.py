"""Every block edit of the structure search: surgery equals the reference computation, files replay it,
the MACs model is exact, the knapsack is optimal, and structure="auto" / "mlp" compress to their target."""

import itertools

import pytest
import torch
import torchvision
from helpers.models import small_vit, tiny_data, tiny_swin, tiny_vit
from torch import nn

import dcvit
from dcvit.arch import get_adapter
from dcvit.config import CompressConfig
from dcvit.edits import Edit, block_savings, menu
from dcvit.knapsack import choose, choose_within, landing, landing_note
from dcvit.macs import macs_profile
from dcvit.surgery import MlpOnlyBlock, ZeroMlp, block_state, edit_blocks

# (attention kept, kept MLP units: None = all, [] = none)
EDITS = {
    "narrow MLP": (True, [0, 2, 5, 7, 11]),
    "remove MLP": (True, []),
    "remove attention": (False, None),
    "remove attention, narrow MLP": (False, [1, 3, 4]),
    "drop": (False, []),
}


def reference_block(block, x, attention, units):
    """What an edited timm ViT block must compute, written out from the original block's weights."""
    out = x
    if attention:
        out = out + block.ls1(block.attn(block.norm1(x)))
    if units is None or units:
        h = block.mlp.act(block.mlp.fc1(block.norm2(out)))
        w2, b2 = block.mlp.fc2.weight, block.mlp.fc2.bias
        if units is not None:
            h, w2 = h[..., units], w2[:, units]
        out = out + block.ls2(h @ w2.T + b2)
    return out


@pytest.mark.parametrize("kind", list(EDITS))
def test_edit_equals_reference_computation(kind):
    torch.manual_seed(0)
    model = small_vit(depth=3, init_values=0.5)  # LayerScale on, so ls1 / ls2 are checked too
    attention, units = EDITS[kind]
    edited = edit_blocks(model, {1: (attention, units)})
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        expected = reference_block(model.blocks[1], x, attention, units)
        assert torch.allclose(edited.blocks[1](x), expected, atol=1e-5)
    assert block_state(get_adapter(edited), edited.blocks[1]) == (attention, 192 if units is None else len(units))
    assert model.blocks[1].mlp.fc1.out_features == 192  # the input model is untouched


@pytest.mark.parametrize("kind", list(EDITS))
def test_edit_survives_save_and_load(tmp_path, kind):
    torch.manual_seed(0)
    model = edit_blocks(small_vit(depth=3), {0: EDITS[kind], 2: (True, [4, 8])})
    dcvit.save(model, tmp_path / "m")
    loaded = dcvit.load(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert [e["op"] for e in loaded.dcvit_edits] == ["edit", "edit"]


def test_edits_compose_on_an_edited_block(tmp_path):
    torch.manual_seed(0)
    model = small_vit(depth=2)
    once = edit_blocks(model, {0: (False, list(range(0, 192, 2)))})  # DC-ViT block, 96 units
    twice = edit_blocks(once, {0: (False, [0, 5, 9])})  # narrowed again
    assert isinstance(twice.blocks[0], MlpOnlyBlock) and twice.blocks[0].mlp.fc1.out_features == 3
    thrice = edit_blocks(twice, {0: (False, [])})
    assert isinstance(thrice.blocks[0], nn.Identity)
    dcvit.save(thrice, tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(dcvit.load(tmp_path / "m")(x), thrice(x))


def test_impossible_edits_are_refused():
    model = small_vit(depth=2)
    no_attention = edit_blocks(model, {0: (False, None)})
    with pytest.raises(ValueError, match="no attention left"):
        edit_blocks(no_attention, {0: (True, None)})
    with pytest.raises(ValueError, match="changes nothing"):
        edit_blocks(model, {0: (True, None)})
    with pytest.raises(ValueError, match="distinct indices"):
        edit_blocks(model, {0: (True, [0, 0])})
    with pytest.raises(ValueError, match="dropped already"):
        edit_blocks(edit_blocks(model, {1: (False, [])}), {1: (True, [0])})


def _families():
    torch.manual_seed(0)
    vit = small_vit(depth=3)
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()
    swin = tiny_swin()
    return {"timm ViT": vit, "torchvision ViT": tv, "timm Swin": swin}


@pytest.mark.parametrize("family", ["timm ViT", "torchvision ViT", "timm Swin"])
def test_macs_model_is_exact_for_every_edit_and_family(family):
    """block_savings (what the search plans with) equals the MACs fvcore measures after the edit."""
    model = _families()[family]
    adapter = get_adapter(model)
    profile = macs_profile(model)
    b = 1
    width = block_state(adapter, adapter.blocks(model)[b])[1]
    for attention, units in [(True, width // 2), (True, 0), (False, width), (False, width // 4), (False, 0)]:
        kept = None if units == width else list(range(units))
        edited = edit_blocks(model, {b: (attention, kept)})
        measured = profile.total - dcvit.count_macs(edited, profile.input_size)
        assert measured == block_savings(profile, b, True, width, attention, units), (attention, units)
        x = torch.randn(1, *profile.input_size)
        assert edited(x).shape == model(x).shape


def test_knapsack_matches_brute_force():
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        edits = [
            Edit(b, True, u, int(torch.randint(1, 50, (1,), generator=gen)), float(torch.rand(1, generator=gen)))
            for b in range(4)
            for u in range(3)
        ]
        need = int(torch.randint(10, 120, (1,), generator=gen))
        best = None
        for pick in itertools.product(*[[None] + [e for e in edits if e.block == b] for b in range(4)]):
            chosen = [e for e in pick if e]
            if sum(e.saved for e in chosen) >= need:
                cost = sum(e.score for e in chosen)
                best = cost if best is None else min(best, cost)
        if best is None:
            with pytest.raises(ValueError):
                choose(edits, need)
            continue
        got = choose(edits, need)
        assert sum(e.saved for e in got) >= need and len({e.block for e in got}) == len(got)
        assert sum(e.score for e in got) == pytest.approx(best, abs=1e-6)


def test_choose_within_matches_brute_force():
    gen = torch.Generator().manual_seed(4)
    for _ in range(30):
        edits = [
            Edit(b, True, u, int(torch.randint(1, 50, (1,), generator=gen)), float(torch.rand(1, generator=gen)))
            for b in range(4)
            for u in range(3)
        ]
        need, slack = int(torch.randint(10, 120, (1,), generator=gen)), int(torch.randint(0, 10, (1,), generator=gen))
        best = None
        for pick in itertools.product(*[[None] + [e for e in edits if e.block == b] for b in range(4)]):
            chosen = [e for e in pick if e]
            if need <= sum(e.saved for e in chosen) <= need + slack:
                cost = sum(e.score for e in chosen)
                best = cost if best is None else min(best, cost)
        got = choose_within(edits, need, slack)
        if best is None:
            assert got is None
            continue
        assert got is not None and need <= sum(e.saved for e in got) <= need + slack
        assert sum(e.score for e in got) == pytest.approx(best, abs=1e-6)


def test_landing_says_why_a_search_passes_its_target():
    # the cheap edit saves far more than needed; the one that lands close scores worse
    edits = [Edit(0, True, 0, 300, 0.01), Edit(1, True, 0, 105, 0.5)]
    chosen = choose(edits, 100)
    assert [e.block for e in chosen] == [0]
    record = landing(edits, chosen, 100, tolerance=10)
    assert record is not None and record["over"] == 200 and record["closest_score"] == pytest.approx(0.5)
    note = landing_note(record, macs_original=1000)
    assert "20.0 points" in note and "0.5000" in note and "0.0100" in note
    assert landing(edits, [edits[1]], 100, tolerance=10) is None  # within the tolerance: nothing to say
    lone = landing([edits[0]], [edits[0]], 100, tolerance=10)
    assert lone is not None and lone["closest_score"] is None and "no set" in landing_note(lone, 1000)


def test_menu_respects_the_structure():
    assert all(attention for attention, _ in menu(True, 64, 64, mlp_only=True))
    assert (False, 0) in menu(True, 64, 64, mlp_only=False) and (True, 0) in menu(True, 64, 64, mlp_only=False)
    assert menu(True, 0, 64, mlp_only=True) == []  # nothing left to take from an MLP


SEARCH = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5, search_steps=2, progress=False
)


@pytest.mark.parametrize("structure", ["auto", "mlp"])
def test_search_meets_a_dense_target_reports_its_structure_and_resumes(tmp_path, structure):
    model = tiny_vit(depth=4)
    config = SEARCH.replace(structure=structure)
    target = 0.62  # between two block-drop points of this model
    result = dcvit.compress(model, target, tiny_data(), config, workdir=tmp_path / "run")
    assert result.macs <= result.plan.macs_target and result.macs >= 0.5 * result.plan.macs_original
    assert len(result.structure) == 4 and any(s["edit"] != "kept" for s in result.structure)
    if structure == "mlp":
        assert all(s["attention"] for s in result.structure)
    assert "structure" in result.describe()
    again = dcvit.compress(model, target, tiny_data(), config, workdir=tmp_path / "run", resume=True)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(again.model(x), result.model(x))
    fresh = dcvit.compress(model, target, tiny_data(), config)
    assert torch.equal(fresh.model(x), result.model(x))  # deterministic for a seed


def test_a_family_scores_the_first_step_once_and_equals_its_targets_run_alone(monkeypatch):
    """Every target's first step scores the teacher's edits; a family does it once, with unchanged members."""
    from dcvit.search import Search

    model, targets, config = tiny_vit(depth=4), [0.8, 0.62], SEARCH.replace(final_epochs=0)
    alone = [dcvit.compress(model, t, tiny_data(), config, metric_cache=False) for t in targets]
    scored, real = [], Search.zero_shot
    monkeypatch.setattr(Search, "zero_shot", lambda self, *a: scored.append(1) or real(self, *a))
    family = dcvit.compress_family(model, targets, tiny_data(), config, metric_cache=False)
    steps = sum(len(r.history) for r in family)
    assert len(scored) == steps - (len(targets) - 1)
    x = torch.randn(2, 1, 16, 16)
    for one, member in zip(alone, family):
        assert one.structure == member.structure and torch.equal(one.model(x), member.model(x))
    scored.clear()  # other candidate blocks: other first-step scores and steps, even at the same target
    plans = [dcvit.plan_for(model, t, config.replace(candidate_blocks=b)) for t, b in [(0.8, None), (0.8, (1, 2, 3))]]
    family = dcvit.compress_family(model, plans, tiny_data(), config, metric_cache=False)
    assert len(scored) == sum(len(r.history) for r in family)  # the same target, yet no step shared
    assert all(s["edit"] == "kept" for s in family[1].structure if s["block"] not in (1, 2, 3))


def test_search_plan_refuses_targets_below_its_floor():
    model = tiny_vit(depth=4)
    with pytest.raises(ValueError, match="every candidate MLP removed"):
        dcvit.plan_for(model, 0.3, SEARCH.replace(structure="mlp"))
    assert dcvit.plan_for(model, 0.3, SEARCH).structure == "auto"


def test_zero_mlp_is_scriptable():
    torch.jit.script(ZeroMlp())


@pytest.mark.parametrize("family", ["timm ViT", "torchvision ViT", "timm Swin"])
def test_scoring_from_a_cached_block_input_equals_the_full_forward(family):
    """The zero-shot scores skip the blocks before the edited one; the outputs must not change."""
    from dcvit.search import block_inputs, starting_at
    from dcvit.surgery import edit_block

    model = _families()[family]
    adapter = get_adapter(model)
    x = torch.randn(3, *macs_profile(model).input_size)
    inputs = block_inputs(model, adapter, x)
    for b in (0, len(adapter.blocks(model)) - 1):
        block = edit_block(adapter, adapter.blocks(model)[b], False, [0, 1])
        full = edit_blocks(model, {b: (False, [0, 1])})(x)
        with torch.no_grad(), starting_at(model, adapter, b, block, inputs[b]):
            assert torch.allclose(model(x), full, atol=1e-5)
        assert adapter.blocks(model)[b] is not block  # restored
