"""The few-shot recovery levers (CompressConfig.mimic_views / mimic_synthetic / mimic_logits / mimic_blocks /
final_epochs / final_views / final_batch_size / final_select / final_average): checked at construction, off by default
but the final recovery, each doing what it says on small models."""

import logging

import pytest
import torch
import torchvision
from helpers.models import tiny_data, tiny_swin, tiny_vit

import dcvit
import synth
from dcvit.accel import make_accelerator
from dcvit.arch import get_adapter
from dcvit.checks import ArgumentError
from dcvit.config import CompressConfig
from dcvit.driver import compress
from dcvit.engine import Engine
from dcvit.mimic import FewShotImages, TeacherTokens, mimic
from dcvit.recovery import TailAverage, averaged_epochs, block_loss, final_epochs, logit_kl, model_outputs
from dcvit.scoring import kl_score
from dcvit.views import get_view, view_names

FAST = CompressConfig(epochs=2, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"mimic_views": "rotate"}, r"mimic_views must be one of \('none', 'crop'"),
        ({"mimic_logits": -1.0}, r"mimic_logits must be a finite number >= 0"),
        ({"mimic_blocks": float("inf")}, r"mimic_blocks must be a finite number >= 0"),
        ({"final_epochs": -1}, r"final_epochs must be an integer between 0"),
        ({"final_select": 1}, r"final_select must be True or False"),
        ({"final_select": True, "final_epochs": 0}, r"final_select selects among the epochs .* set final_epochs >= 1"),
        ({"mimic_synthetic": True, "augment": True}, r"mimic_synthetic cannot be combined with augment=True"),
        ({"final_average": 1.5}, r"final_average must be a number in \[0, 1\]"),
        ({"final_views": "rotate"}, r"final_views must be one of \('none', 'crop'.*None\)"),
        ({"final_batch_size": 0}, r"final_batch_size must be an integer between 1 .* or None"),
        ({"final_average": 0.5, "final_epochs": 0}, r"final_average averages the epochs .* set final_epochs >= 1"),
        ({"final_average": 0.5, "final_select": True}, r"final_average and final_select both choose"),
    ],
)
def test_bad_recovery_settings_are_refused_in_one_line(bad, match):
    with pytest.raises(ArgumentError, match=match) as err:
        CompressConfig(**bad)
    assert "\n" not in str(err.value)


def test_only_the_final_recovery_is_on_by_default():
    c = CompressConfig()
    assert (c.mimic_views, c.mimic_synthetic, c.mimic_logits, c.mimic_blocks, c.final_epochs, c.final_select,
            c.final_average) == ("none", False, 0.0, 0.0, 10, False, 0.0)  # fmt: skip
    assert (c.final_views, c.final_batch_size) == ("cutmix", 16)  # the final recovery's own, measured best
    assert CompressConfig.paper().final_epochs == 0  # the paper's settings: no final recovery
    assert not c.needs_synthetic_inputs


# --- views ---------------------------------------------------------------------------------------------------
def batch(n=6):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", view_names())
def test_views_keep_the_shape_and_repeat_for_a_seed(name):
    x = batch()
    a = get_view(name)(x, torch.Generator().manual_seed(0))
    b = get_view(name)(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(a, x) == (not get_view(name).random)


def test_mixup_blends_and_cutmix_pastes_pixels_of_the_batch():
    x = batch()
    mixed = get_view("mixup")(x, torch.Generator().manual_seed(0))
    lo, hi = x.min(0).values, x.max(0).values  # a convex blend stays within the batch's range at every pixel
    assert bool(((mixed >= lo - 1e-6) & (mixed <= hi + 1e-6)).all())
    cut = get_view("cutmix")(x, torch.Generator().manual_seed(0))
    assert bool((cut.unsqueeze(1) == x.unsqueeze(0)).any(1).all())  # every pixel is one of the batch's own
    same = x[:1].expand(4, -1, -1, -1)
    assert torch.allclose(get_view("mixup")(same, torch.Generator().manual_seed(1)), same, atol=1e-6)


def test_a_crop_of_a_flat_image_is_flat_and_crops_differ_from_the_input():
    flat = torch.full((3, 1, 16, 16), 0.7)
    assert torch.allclose(get_view("crop")(flat, torch.Generator().manual_seed(0)), flat)
    assert not torch.equal(get_view("crop")(batch(), torch.Generator().manual_seed(0)), batch())


# --- richer targets ------------------------------------------------------------------------------------------
def tv_vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(16, 4, 2, 2, 16, 32, num_classes=5).eval()


def tv_swin():
    torch.manual_seed(0)
    return torchvision.models.swin_transformer.SwinTransformer([4, 4], 24, [2, 2], [2, 2], [7, 7], num_classes=5).eval()


@pytest.mark.parametrize(
    "make, size", [(tiny_vit, (1, 16, 16)), (tiny_swin, (3, 56, 56)), (tv_vit, (3, 16, 16)), (tv_swin, (3, 56, 56))]
)
def test_one_pass_gives_the_models_logits_and_every_block_output(make, size):
    model = make()
    x = torch.randn(2, *size)
    with torch.no_grad():
        out = model_outputs(get_adapter(model), model, x, logits=True, blocks=True)
        assert torch.allclose(out.logits, model(x), atol=1e-5)
    assert len(out.blocks) == len(get_adapter(model).blocks(model))


def test_logit_and_block_losses_are_zero_only_for_the_teacher_itself():
    teacher = tiny_vit(depth=3)
    x = batch(4)
    student = dcvit.drop_blocks(teacher, [1])
    with torch.no_grad():
        t = model_outputs(get_adapter(teacher), teacher, x, True, True)
        s = model_outputs(get_adapter(student), student, x, True, True)
    assert logit_kl(t.logits, t.logits).item() == pytest.approx(0, abs=1e-6)
    assert block_loss(t.blocks, t.blocks).item() == 0
    assert logit_kl(s.logits, t.logits).item() > 1e-4 and block_loss(s.blocks, t.blocks).item() > 1e-5


def fine_tune(config, epochs=4):
    """Mimic a tiny teacher with one of its blocks dropped; returns (result, student)."""
    teacher = tiny_vit(depth=3)
    accelerator = make_accelerator("no")
    images = FewShotImages(tiny_data(16), teacher, augment=False)
    targets = TeacherTokens(teacher, images, accelerator, config)
    student = dcvit.drop_blocks(teacher, [1])
    return mimic(student, targets, images, config, epochs=epochs, upto=2, seed=0, accelerator=accelerator), student


@pytest.mark.parametrize(
    "change", [{"mimic_views": "crop-mixup"}, {"mimic_views": "cutmix"}, {"mimic_logits": 1.0}, {"mimic_blocks": 1.0}]
)
def test_each_loss_lever_trains_and_repeats_for_a_seed(change):
    config = CompressConfig(batch_size=8, progress=False, **change)
    (a, sa), (b, sb) = fine_tune(config), fine_tune(config)
    assert a.losses == b.losses and all(torch.equal(p, q) for p, q in zip(sa.parameters(), sb.parameters()))
    assert a.losses[-1] < a.losses[0]
    base, _ = fine_tune(CompressConfig(batch_size=8, progress=False))
    assert a.losses != base.losses  # the lever changed the fine-tune


def test_targets_are_cached_only_when_the_inputs_repeat():
    teacher, accelerator = tiny_vit(depth=2), make_accelerator("no")
    images = FewShotImages(tiny_data(8), teacher, augment=False)
    assert TeacherTokens(teacher, images, accelerator, CompressConfig()).cached is not None
    fresh = TeacherTokens(teacher, images, accelerator, CompressConfig(mimic_views="mixup"))
    assert fresh.cached is None
    plain = TeacherTokens(teacher, images, accelerator)  # tokens only, cached: it serves none of the levers
    for change in ({"mimic_views": "mixup"}, {"mimic_logits": 1.0}, {"mimic_blocks": 0.5}):
        with pytest.raises(ValueError, match="targets were made for another config"):
            mimic(tiny_vit(depth=2), plain, images, CompressConfig(**change), epochs=1, upto=1, seed=0,
                  accelerator=accelerator)  # fmt: skip


# --- synthetic inputs ----------------------------------------------------------------------------------------
def test_synthetic_images_join_the_mimicking_inputs_not_the_shots():
    model = tiny_vit(depth=3)
    engine = Engine(model, tiny_data(16), FAST.replace(mimic_synthetic=True, metric="train_loss"))
    assert engine.metric_set is not None  # made for the lever although the ranking does not need it
    assert len(engine.images) == 16 and len(engine.inputs) == 16 + FAST.synth_images
    assert torch.equal(engine.inputs.fixed[16:], engine.metric_set.images)
    assert engine.targets.cached.tokens.shape[0] == 16 + FAST.synth_images


# --- the final recovery --------------------------------------------------------------------------------------
def test_final_epochs_grow_with_the_macs_removed():
    config = CompressConfig(final_epochs=3)
    assert [final_epochs(config, m, 100) for m in (100, 92, 60, 30)] == [0, 2, 12, 21]
    assert final_epochs(CompressConfig(), 30, 100) == 70  # the default, 10 per tenth
    assert final_epochs(CompressConfig(final_epochs=0), 30, 100) == 0


def test_the_run_clock_plans_the_final_recovery(caplog):
    # its epochs are in the run's plan: "all planned fine-tuning done" comes once, at the very end
    model = tiny_vit(depth=3)
    metric_set = synth.synthesize(model, 8, iterations=5, seed=0, image_size=(1, 16, 16), progress=False)
    with caplog.at_level(logging.INFO, logger="dcvit"):
        compress(model, 0.8, tiny_data(), FAST.replace(final_epochs=1, progress=True), metric_set=metric_set)
    clock = [m for m in caplog.messages if m.startswith("run: ") and "fine-tuning" in m]
    assert len(clock) >= 2 and "all planned fine-tuning done" in clock[-1]
    assert not any("all planned" in m for m in clock[:-1])


def test_final_recovery_keeps_the_structure_and_its_best_epoch_by_synthetic_kl():
    model = tiny_vit(depth=3)
    metric_set = synth.synthesize(model, 8, iterations=5, seed=0, image_size=(1, 16, 16), progress=False)
    plain = compress(model, 0.8, tiny_data(), FAST.replace(final_epochs=0), metric_set=metric_set)
    final = compress(model, 0.8, tiny_data(), FAST.replace(final_epochs=1, final_select=True), metric_set=metric_set)
    meta = final.history[-1]
    assert meta["final"] and meta["epochs"] == round(10 * (1 - plain.macs / plain.plan.macs_original))
    assert (
        final.macs == plain.macs and final.structure == plain.structure and len(final.history) == len(plain.history) + 1
    )
    logits = model(metric_set.images)
    # the start (the finished model without the final fine-tune) is among the candidates: never a worse KL
    assert kl_score(logits, final.model, metric_set.images) <= kl_score(logits, plain.model, metric_set.images) + 1e-7
    assert 0 <= meta["selected_epoch"] <= meta["epochs"] and "final" in final.seconds


def test_the_tail_average_is_the_mean_of_the_last_epochs_weights():
    net = torch.nn.Linear(3, 2)
    net.register_buffer("count", torch.zeros((), dtype=torch.long))
    keeper, states = TailAverage(epochs=4, count=2), []
    for epoch in range(1, 5):
        with torch.no_grad():
            net.weight.normal_(), net.bias.normal_(), net.count.fill_(epoch)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        keeper.update(net, epoch)
    keeper.restore(net)
    assert torch.allclose(net.weight, (states[2]["weight"] + states[3]["weight"]) / 2)
    assert torch.allclose(net.bias, (states[2]["bias"] + states[3]["bias"]) / 2)
    assert net.count.item() == 4  # integer buffers keep their last value
    assert [averaged_epochs(CompressConfig(final_average=f), 30) for f in (0.0, 0.01, 0.5, 1.0)] == [0, 1, 15, 30]


def test_the_final_recovery_can_end_on_the_mean_of_its_last_epochs():
    model = tiny_vit(depth=3)
    metric_set = synth.synthesize(model, 8, iterations=5, seed=0, image_size=(1, 16, 16), progress=False)
    run = lambda average: compress(
        model, 0.8, tiny_data(), FAST.replace(final_epochs=2, final_average=average), metric_set=metric_set
    )
    last, one, half = run(0.0), run(0.01), run(0.5)
    epochs = last.history[-1]["epochs"]
    assert epochs >= 2 and half.history[-1]["averaged_epochs"] == round(epochs / 2)
    assert one.history[-1]["averaged_epochs"] == 1 and last.history[-1]["averaged_epochs"] == 0
    weights = lambda r: torch.cat([p.flatten() for p in r.model.parameters()])
    assert torch.equal(weights(one), weights(last))  # the mean of one epoch is that epoch's weights
    assert not torch.equal(weights(half), weights(last)) and half.structure == last.structure


def test_the_final_recovery_has_its_own_views_and_batch_size():
    config = CompressConfig(batch_size=8, final_views="cutmix", final_batch_size=4)
    final = config.for_final_recovery()
    assert (final.mimic_views, final.batch_size) == ("cutmix", 4) and config.mimic_views == "none"
    # None: the run's own
    assert CompressConfig(batch_size=8, final_batch_size=None).for_final_recovery().batch_size == 8
    assert CompressConfig(mimic_views="mixup", final_views=None).for_final_recovery().mimic_views == "mixup"
    model = tiny_vit(depth=3)
    metric_set = synth.synthesize(model, 8, iterations=5, seed=0, image_size=(1, 16, 16), progress=False)
    run = lambda **changes: compress(
        model, 0.8, tiny_data(), FAST.replace(final_epochs=1, **changes), metric_set=metric_set
    )
    plain = run(final_views=None, final_batch_size=None)  # the run's own: no views, batches of 8
    views, batches = run(final_views="cutmix", final_batch_size=None), run(final_views=None, final_batch_size=4)
    weights = lambda r: torch.cat([p.flatten() for p in r.model.parameters()])
    # the structure's own run is the same (only the final recovery differs), the final recovery is not
    untimed = lambda r: [
        {k: v for k, v in h.items() if k not in ("seconds", "images_per_second")} for h in r.history[:-1]
    ]
    assert untimed(views) == untimed(plain) == untimed(batches)
    assert not torch.equal(weights(views), weights(plain)) and not torch.equal(weights(batches), weights(plain))


def test_plans_whose_members_reach_the_same_macs_do_not_share_a_final_recovery():
    """Two hand-built dcvit plans at one target over other candidate blocks compress other blocks to the same
    MACs; in one family each must end as it ends alone, not with the other's final model."""
    model = tiny_vit(depth=4)
    config = FAST.replace(trial_epochs=1, final_epochs=2)
    plans = [dcvit.plan_for(model, 0.8, config.replace(candidate_blocks=b)) for b in [(0, 1), (2, 3)]]
    family = dcvit.compress_family(model, plans, tiny_data(), config, metric_cache=False)
    assert family[0].macs == family[1].macs and family[0].blocks != family[1].blocks
    x = torch.randn(2, 1, 16, 16)
    for plan, member in zip(plans, family):
        alone = dcvit.compress_family(model, [plan], tiny_data(), config, metric_cache=False)[0]
        assert alone.blocks == member.blocks and torch.equal(alone.model(x), member.model(x))
