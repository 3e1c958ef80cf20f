"""A plan records the model it was made for and its structure: a plan for another model or structure is a
one-line ValueError naming both, before any work (issue #23, silent wrong results)."""

import json
import time

import pytest
from helpers.models import small_vit, tiny_data, tiny_vit

import dcvit


@pytest.fixture(scope="module")
def plans():
    tiny, deep = tiny_vit(), tiny_vit(depth=12)
    return tiny, dcvit.plan(tiny, 0.8), dcvit.plan(deep, 0.8)


def test_plan_records_its_model(plans):
    tiny, plan, _ = plans
    fp = plan.fingerprint
    assert (fp.depth, fp.macs, fp.input_size) == (5, dcvit.count_macs(tiny), (1, 16, 16))
    assert fp.mlp_widths == (128,) * 5 and fp.architecture == "vit_tiny_patch16_224"
    payload = json.loads(json.dumps(plan.as_dict()))
    assert payload["fingerprint"]["depth"] == 5 and payload["structure"] == "dcvit"
    search = dcvit.plan_for(tiny, 0.8, dcvit.CompressConfig(progress=False))
    assert search.fingerprint == fp


def test_apply_plan_refuses_a_plan_for_another_depth(plans):
    tiny, _, deep_plan = plans
    with pytest.raises(ValueError, match=r"12 blocks.*5 blocks") as err:
        dcvit.apply_plan(tiny, deep_plan, [1])
    assert "\n" not in str(err.value)


def test_apply_plan_refuses_a_plan_for_other_widths(plans):
    _, plan, _ = plans
    wide = small_vit(depth=5, dim=48, heads=3, img=16, patch=4, chans=1)
    with pytest.raises(ValueError, match=r"MLP 128 units.*MLP 192 units"):
        dcvit.apply_plan(wide, plan, [1])


def test_apply_plan_accepts_its_own_model_step_by_step(plans):
    tiny, plan, _ = plans
    once = dcvit.apply_plan(tiny, plan, [1])
    twice = dcvit.apply_plan(once, plan, [2])  # a progressive step: block 1 edited already
    assert len(twice.dcvit_edits) == 2


def test_apply_plan_refuses_a_drop_plan(plans):
    tiny = plans[0]
    drop = dcvit.plan_block_drop(tiny, 0.8)
    with pytest.raises(ValueError, match="structure 'drop'"):
        dcvit.apply_plan(tiny, drop, [1])


def test_compress_refuses_a_plan_for_another_structure_before_any_work(plans):
    tiny, plan, _ = plans
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"structure 'dcvit'.*'drop'"):
        dcvit.compress(tiny, plan, tiny_data(), dcvit.CompressConfig(structure="drop", progress=False))
    assert time.perf_counter() - start < 1


def test_compress_refuses_a_plan_for_another_model_before_any_work(plans):
    tiny, _, deep_plan = plans
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"another model .*12 blocks.*5 blocks"):
        dcvit.compress(tiny, deep_plan, tiny_data(), dcvit.CompressConfig(structure="dcvit", progress=False))
    assert time.perf_counter() - start < 1


def test_compress_refuses_a_hand_built_plan_of_other_macs(plans):
    tiny, plan, _ = plans
    hand = dcvit.Plan(**{**plan.__dict__, "fingerprint": None, "macs_original": plan.macs_original * 2})
    with pytest.raises(ValueError, match="another model|a model of"):
        dcvit.compress(tiny, hand, tiny_data(), dcvit.CompressConfig(structure="dcvit", progress=False))
