"""Feature mimicking (dcvit/mimic.py, Eq. 3): a fine-tune that diverges is refused before anything is saved,
also when every weight stays finite (the frozen final norm keeps a wrecked student's tokens bounded, so only
the loss tells), and its run leaves no folder; a teacher with NaN weights is reported as a bad teacher, never
as divergence."""

import pytest
import torch
from helpers.cli import one_line_error
from helpers.models import tiny_data, tiny_vit
from helpers.runs import compress_cli

import dcvit
from dcvit.accel import make_accelerator
from dcvit.config import CompressConfig
from dcvit.driver import compress
from dcvit.mimic import BadTeacherError, FewShotImages, TeacherTokens, check_finite, mimic

FAST = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False
)


def fine_tune(lr: float, teacher=None, student=None):
    """Mimic a tiny teacher with one of its blocks dropped (or `student`), 3 epochs of 16 images; returns the result."""
    teacher = teacher or tiny_vit(depth=2)
    accelerator = make_accelerator("no")
    images = FewShotImages(tiny_data(16), teacher, augment=False)
    targets = TeacherTokens(teacher, images, accelerator)
    config = CompressConfig(lr=lr, batch_size=8, progress=False)
    student = student or dcvit.drop_blocks(teacher, [1])
    return mimic(student, targets, images, config, epochs=3, upto=1, seed=0, accelerator=accelerator)


def test_a_good_lr_converges():
    result = fine_tune(3e-4)
    assert result.losses[-1] < result.losses[0]


def test_foreach_adamw_gives_the_weights_of_the_per_tensor_loop(monkeypatch):
    # mimic's AdamW runs foreach (one kernel over all tensors) for speed; the demo's figures rely on it
    # computing exactly what torch's per-tensor loop, the CPU default, computes
    teacher = tiny_vit(depth=2)
    fast, loop = dcvit.drop_blocks(teacher, [1]), dcvit.drop_blocks(teacher, [1])
    fine_tune(3e-4, teacher, fast)
    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: real(params, **{**kw, "foreach": False}))
    fine_tune(3e-4, teacher, loop)
    moved = [not torch.equal(a, b) for a, b in zip(fast.parameters(), teacher.parameters())]
    assert any(moved)
    assert all(torch.equal(a, b) for a, b in zip(fast.parameters(), loop.parameters()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_weight_stops_the_fine_tune(bad):
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2, 2))]
    check_finite(1, 0.5, params, 1e-4)  # all finite: nothing raised
    with torch.no_grad():
        params[1][1, 0] = bad
    with pytest.raises(ValueError, match=r"diverged at epoch 1 \(loss 0.5, non-finite weights\)"):
        check_finite(1, 0.5, params, 1e-4)


@pytest.mark.parametrize("lr", [0.1, 10.0, 1e3])
def test_a_huge_lr_is_refused_though_the_loss_stays_finite(lr):
    with pytest.raises(ValueError, match=r"mimicking diverged: the loss ended at .*x its starting .*lower --lr") as err:
        fine_tune(lr)
    assert "\n" not in str(err.value)


def test_an_lr_that_overflows_is_refused():
    with pytest.raises(ValueError, match=r"mimicking diverged at epoch 1 \(loss nan\).*lower --lr"):
        fine_tune(1e30)


def test_a_nan_teacher_is_a_bad_teacher_not_divergence():
    teacher = tiny_vit(depth=2)
    with torch.no_grad():
        teacher.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(BadTeacherError, match=r"teacher is a bad model.*blocks\.0\.mlp\.fc1\.weight") as err:
        fine_tune(3e-4, teacher)
    assert "diverged" not in str(err.value)


def test_cli_refuses_to_save_a_diverged_run(capsys, tmp_path, cli_env):
    out = tmp_path / "out"
    one_line_error(*compress_cli(capsys, cli_env, out, "--lr", "10")[::2], "mimicking diverged: the loss ended at")
    assert not (out / "result.json").exists() and not (out / "model").exists()


def test_cli_names_a_nan_teacher(capsys, tmp_path, cli_env):
    teacher = tiny_vit()
    with torch.no_grad():
        teacher.pos_embed[0, 0, 0] = float("inf")
    cli_env["model"] = dcvit.save(teacher, tmp_path / "nan-teacher")
    code, _, err = compress_cli(capsys, cli_env, tmp_path / "out")
    one_line_error(code, err, "teacher is a bad model")
    assert "diverged" not in err


# --- divergence --------------------------------------------------------------------------------
@pytest.mark.parametrize("lr,fragment", [(float("inf"), "finite"), (1e6, "diverged at epoch 1 (loss nan)")])
def test_a_diverging_lr_stops_the_run(tmp_path, lr, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        compress(tiny_vit(), 0.8, tiny_data(), FAST.replace(lr=lr), workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing finished: no folder that refuses the corrected rerun
