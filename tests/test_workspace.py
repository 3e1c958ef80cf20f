"""dcvit.workspace and the run folder it keeps: checkpoint names (existing runs are resumed by them), the
main-process-then-others order, resume fingerprints, and runs begun, finished, failed or of the wrong shape
(the refusals of dcvit.outdir.refuse_existing_run, from the API and the CLI)."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from helpers.cli import one_line_error, run_cli
from helpers.models import tiny_data, tiny_vit
from helpers.runs import COMPRESS, compress_cli, other_teacher

import synth
from dcvit.config import CompressConfig
from dcvit.driver import compress
from dcvit.engine import Engine
from dcvit.workspace import Workspace


# --- checkpoint names and process order ---------------------------------------------------------------
def test_checkpoint_names_are_those_of_existing_runs():
    """Spelled as runs made before this module owned them: a change would orphan their checkpoints."""
    plan = SimpleNamespace(mlp_hidden=103, remove_attention=True)
    dropped = SimpleNamespace(mlp_hidden=0, remove_attention=True)
    assert Workspace.trial_key("dcvit", plan, 2) == "trial-dcvit-b2-h103-a1"
    assert Workspace.step_key("dcvit", plan, [2, 1, 3], progressive=True) == "prog-dcvit-h103-a1-2-1-3"
    assert Workspace.step_key("drop", dropped, [1, 2], progressive=False) == "topk-drop-h0-a1-1-2"
    assert Workspace.search_trial_key("auto", 3, False, 0, None) == "auto-trial-b3-a0-u0"
    assert Workspace.search_trial_key("auto", 2, True, 128, 1) == "auto-trial-b2-a1-u128-h1"
    assert Workspace.search_step_key("mlp", 705235, 1, 3, (0, 1)) == "mlp-705235-step1of3-cb3c55716"
    keys = {Workspace.search_step_key("mlp", 705235, 1, s, c) for s in (3, 4) for c in ((0, 1), (0, 1, 2))}
    assert len(keys) == 4 and all(k.startswith("mlp-705235-step1of") for k in keys)


class FakeAccelerator:
    """Two processes as seen from one of them; records the calls in order."""

    def __init__(self, main: bool, events: list):
        self.is_main_process, self.num_processes, self.events = main, 2, events

    def wait_for_everyone(self):
        self.events.append("wait")


@pytest.mark.parametrize("main,order", [(True, ["work", "wait"]), (False, ["wait", "work"])])
def test_main_first_runs_the_main_process_before_the_others(tmp_path, main, order):
    events = []
    workspace = Workspace.shared(tmp_path / "run", {"format": 0}, False, FakeAccelerator(True, events))
    workspace.accelerator = FakeAccelerator(main, events)
    events.clear()
    assert workspace.main_first(lambda: events.append("work") or 7) == 7
    assert events == order


@pytest.mark.parametrize("main,order", [(True, ["work", "wait"]), (False, ["wait"])])
def test_main_only_leaves_the_others_waiting(tmp_path, main, order):
    events = []
    workspace = Workspace(tmp_path / "run", {"format": 0})
    workspace.accelerator = FakeAccelerator(main, events)
    workspace.main_only(lambda: events.append("work"))
    assert events == order


def test_shared_joins_the_main_process_folder(tmp_path):
    events = []
    Workspace.shared(tmp_path / "run", {"format": 0}, False, FakeAccelerator(True, events))
    other = Workspace.shared(tmp_path / "run", {"format": 0}, False, FakeAccelerator(False, events))
    assert events == ["wait", "wait"] and not other.created  # joined (resume=True), never removed by it
    with pytest.raises(ValueError, match="needs a shared workdir"):
        Workspace.shared(None, {"format": 0}, False, FakeAccelerator(True, events))


FAST = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False
)


# --- resume fingerprints ---------------------------------------------------------------------
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


def test_cli_diverged_run_fails_cleanly_and_a_corrected_rerun_works(capsys, tmp_path, cli_env):
    one_line_error(*compress_cli(capsys, cli_env, tmp_path / "out", "--lr", "1e6")[::2], "lower --lr")
    assert not (tmp_path / "out" / "result.json").exists() and not (tmp_path / "out" / "checkpoints").exists()
    assert compress_cli(capsys, cli_env, tmp_path / "out")[0] == 0  # no --resume needed


# --- finished and failed runs -----------------------------------------------------------------
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
    capsys.readouterr()  # the API runs' progress lines (printed or not, by the tests run before: random order)
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


# --- run folders that dcvit did not write ----------------------------------------------------------------
@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["fresh", "resume"])
@pytest.mark.parametrize("case", ["settings-a-folder", "checkpoints-a-file"])
def test_a_run_folder_of_the_wrong_shape_is_one_line(capsys, tmp_path, models, images, case, resume):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".dcvit-compress").touch()  # an earlier compress's folder, as far as the marker says
    if case == "settings-a-folder":
        (out / "checkpoints" / "settings.json").mkdir(parents=True)
    else:
        (out / "checkpoints").write_text("x")
    before = sorted(out.rglob("*"))
    code, _, err = run_cli(capsys, *COMPRESS, "--model", models[0], "--data", images, "--out", out, *resume)
    one_line_error(code, err, "checkpoints", "accepted: a new folder, or a run folder written by dcvit")
    assert sorted(out.rglob("*")) == before


# --- damaged run files on --resume: one line naming the file ------------------------------------
SETTINGS = {"format": 1, "seed": 0}


@pytest.mark.parametrize("content", ['{"seed": ', "[]", "\xff\xfe"])
def test_a_damaged_settings_file_refuses_resume_in_one_line(tmp_path, content):
    Workspace(tmp_path / "run", SETTINGS)
    (tmp_path / "run" / "settings.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError, match=r"settings\.json .*cannot be resumed") as error:
        Workspace(tmp_path / "run", SETTINGS, resume=True)
    assert "\n" not in str(error.value)


def test_a_damaged_step_record_names_the_step_to_delete(tmp_path):
    workspace = Workspace(tmp_path / "run", SETTINGS)
    (tmp_path / "run" / "step0").mkdir()
    (tmp_path / "run" / "step0" / "meta.json").write_text("[1, 2]")
    assert workspace.has("step0")
    with pytest.raises(ValueError, match=r"step0/meta\.json holds a JSON list.*delete the folder .*step0"):
        workspace.meta("step0")


@pytest.mark.parametrize(
    "meta", ['{"mean": ', "[]", json.dumps({"mean": "0.5", "std": [1.0]}), json.dumps({"mean": [0.5]})]
)
def test_a_damaged_metric_set_record_is_a_one_line_error(tmp_path, meta):
    made = synth.SyntheticSet(
        images=torch.zeros(2, 1, 4, 4), labels=torch.zeros(2, dtype=torch.long), losses=torch.zeros(2),
        mean=(0.5,), std=(0.25,), total_loss=0.0, config={},
    )  # fmt: skip
    made.save(tmp_path / "set")
    assert synth.load(tmp_path / "set").mean == (0.5,)  # the intact set loads
    (tmp_path / "set" / "meta.json").write_text(meta)
    with pytest.raises(ValueError, match=r"meta\.json .*accepted: the meta\.json SyntheticSet\.save writes"):
        synth.load(tmp_path / "set")
