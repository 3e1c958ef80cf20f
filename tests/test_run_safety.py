"""A run never silently mixes, loses or corrupts work: resume fingerprints, divergence, finished folders,
plan targets, and MACs counting leaving the caller's model as it was."""

import json
import shutil

import pytest
import torch
from conftest import tiny_data, tiny_vit
from helpers.cli import one_line_error, run_cli
from PIL import Image

import dcvit
from dcvit.config import CompressConfig
from dcvit.driver import compress
from dcvit.engine import Engine
from dcvit.macs import count_macs, macs_profile
from dcvit.scoring import Trial

FAST = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False
)
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


@pytest.fixture
def cli_env(tmp_path):
    """A saved tiny teacher, another one, and two different image folders."""
    return {
        "model": dcvit.save(tiny_vit(), tmp_path / "teacher"),
        "other": dcvit.save(other_teacher(), tmp_path / "t2"),
        "data": image_folder(tmp_path / "a", 1),
        "other_data": image_folder(tmp_path / "b", 2),
    }


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


# --- 1. resume fingerprints ---------------------------------------------------------------------
def test_resume_refuses_another_teacher_or_other_shots(tmp_path):
    compress(tiny_vit(), 0.8, tiny_data(), FAST, workdir=tmp_path / "w")
    with pytest.raises(ValueError, match="settings differ.*teacher_sha256"):
        compress(other_teacher(), 0.8, tiny_data(), FAST, workdir=tmp_path / "w", resume=True)
    other_images = torch.utils.data.TensorDataset(torch.randn(16, 1, 16, 16), torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="settings differ.*few_shot_sha256"):
        compress(tiny_vit(), 0.8, other_images, FAST, workdir=tmp_path / "w", resume=True)
    with pytest.raises(ValueError, match=r"config\.lr"):  # a changed setting is named, not just "config"
        compress(tiny_vit(), 0.8, tiny_data(), FAST.replace(lr=1e-2), workdir=tmp_path / "w", resume=True)
    settings = json.loads((tmp_path / "w" / "settings.json").read_text())
    assert settings["format"] >= 2


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"model": "other"}, "teacher_sha256"),
        ({"data": "other_data"}, "few_shot_sha256"),
        ({"calibration": 3}, "few_shot_sha256"),
    ],
)
def test_cli_resume_refuses_other_teacher_data_or_calibration(capsys, tmp_path, cli_env, change, fragment):
    assert compress_cli(capsys, cli_env, tmp_path / "out")[0] == 0
    kwargs = {k: cli_env.get(v, v) for k, v in change.items()}
    one_line_error(*compress_cli(capsys, cli_env, tmp_path / "out", "--resume", **kwargs)[::2], fragment)


# --- 2. divergence --------------------------------------------------------------------------------
@pytest.mark.parametrize("lr,fragment", [(float("inf"), "finite"), (1e6, "diverged at epoch 1 (loss nan)")])
def test_a_diverging_lr_stops_the_run(tmp_path, lr, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        compress(tiny_vit(), 0.8, tiny_data(), FAST.replace(lr=lr), workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing finished: no folder that refuses the corrected rerun


def test_cli_diverged_run_fails_cleanly_and_a_corrected_rerun_works(capsys, tmp_path, cli_env):
    one_line_error(*compress_cli(capsys, cli_env, tmp_path / "out", "--lr", "1e6")[::2], "lower --lr")
    assert not (tmp_path / "out" / "result.json").exists() and not (tmp_path / "out" / "checkpoints").exists()
    assert compress_cli(capsys, cli_env, tmp_path / "out")[0] == 0  # no --resume needed


def test_result_json_is_strict_json(capsys, tmp_path, cli_env, monkeypatch):
    real = Engine.score

    def nan_score(self, *args, **kwargs):  # e.g. a ranking without a metric set has kl = NaN
        return Trial(**{**real(self, *args, **kwargs).__dict__, "kl": float("nan"), "score": float("nan")})

    monkeypatch.setattr(Engine, "score", nan_score)
    code, out, _ = compress_cli(capsys, cli_env, tmp_path / "out", "--json")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    saved = json.loads((tmp_path / "out" / "result.json").read_text(), parse_constant=refuse)
    assert code == 0 and json.loads(out, parse_constant=refuse) == saved
    assert set(saved["scores"].values()) == {None}


# --- 3. finished and failed runs -----------------------------------------------------------------
def test_cli_refuses_to_overwrite_a_finished_run(capsys, tmp_path, cli_env):
    out = tmp_path / "out"
    assert compress_cli(capsys, cli_env, out)[0] == 0
    shutil.rmtree(out / "checkpoints")
    before = (out / "result.json").read_text()
    one_line_error(*compress_cli(capsys, cli_env, out)[::2], "already holds a finished run")
    assert (out / "result.json").read_text() == before
    assert compress_cli(capsys, cli_env, out, "--resume")[0] == 0


def test_a_begun_run_is_refused_without_resume_before_any_work(capsys, tmp_path, cli_env, monkeypatch):
    compress(tiny_vit(), 0.8, tiny_data(), FAST, workdir=tmp_path / "w")
    with pytest.raises(ValueError, match=r"already holds a run \(settings.json\); pass --resume"):
        compress(tiny_vit(), 0.8, tiny_data(), FAST, workdir=tmp_path / "w")
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / ".dcvit-compress").touch()
    (out / "checkpoints" / "settings.json").write_text("{}")
    monkeypatch.setattr("dcvit.factory.resolve_model", lambda *a, **k: pytest.fail("loaded the model"))
    code, _, err = compress_cli(capsys, cli_env, out)
    one_line_error(code, err, "already holds a run (checkpoints/settings.json); pass --resume")
    assert (out / "checkpoints" / "settings.json").read_text() == "{}"


def test_a_run_failing_before_any_step_leaves_no_settings(tmp_path, monkeypatch):
    def failing(self, *args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Engine, "fine_tune", failing)
    with pytest.raises(RuntimeError):
        compress(tiny_vit(), 0.8, tiny_data(), FAST, workdir=tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the run did not create is never removed
    with pytest.raises(RuntimeError):
        compress(tiny_vit(), 0.8, tiny_data(), FAST, workdir=tmp_path / "mine")
    assert (tmp_path / "mine" / "settings.json").is_file()
    monkeypatch.undo()
    compress(tiny_vit(), 0.8, tiny_data(), FAST, workdir=tmp_path / "new")  # the rerun needs no resume
    assert (tmp_path / "new" / "settings.json").is_file()


# --- 4. plans ------------------------------------------------------------------------------------
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


# --- 5. counting leaves the model's modes alone --------------------------------------------------
def test_counting_restores_training_flags():
    model = tiny_vit().train()
    model.blocks[1].eval()
    modes = [m.training for m in model.modules()]
    count_macs(model), macs_profile(model), dcvit.plan(model, 0.8)
    assert [m.training for m in model.modules()] == modes
