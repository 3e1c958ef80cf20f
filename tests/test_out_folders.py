"""--out of every command (dcvit/outdir.py): a new or empty folder, or one the same command made earlier; never a
folder holding the user's files, never '' (the current folder), never in or around an input. Refusals are one
line, exit 2, before any slow work. Tiny random-init models, temporary folders."""

from __future__ import annotations

import pytest
from helpers.cli import one_line_error, run_cli
from helpers.models import tiny_vit

import dcvit
from dcvit.outdir import check_out, claim_out, marker


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(dcvit.save(tiny_vit(depth=2), tmp_path_factory.mktemp("models") / "m"))


def argv(command, model, out, data="imagefolder:/nonexistent-never-read"):
    return {
        "compress": ["compress", "--model", model, "--data", data, "--target-macs", "0.5", "--out", out],
        "family": ["family", "--model", model, "--data", data, "--targets", "0.5", "--out", out],
        "synth": ["synth", "--model", model, "--num-images", "1", "--iterations", "1", "--out", out],
        "cascade": ["cascade", "--big", model, "--savers", model, "--data", data, "--out", out],
        "demo": ["demo", "--fast", "--out", out],
    }[command]


COMMANDS = ["compress", "family", "synth", "cascade", "demo"]
USER_FILES = {"compress": "result.json", "family": "notes.txt", "synth": "grid.png", "cascade": "report.md",
              "demo": "report.md"}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_of_user_files_is_refused_and_kept(capsys, tmp_path, model, no_slow_work, command):
    out = tmp_path / "out"
    out.mkdir()
    for name in (USER_FILES[command], "curves.png"):
        (out / name).write_text("the user's")
    code, _, err = run_cli(capsys, *argv(command, model, out))
    one_line_error(code, err, f"--out {out}", "did not write", f"`dcvit {command}`", "new or empty folder")
    assert sorted(p.name for p in out.iterdir()) == sorted({USER_FILES[command], "curves.png"})
    assert all(p.read_text() == "the user's" for p in out.iterdir())


@pytest.mark.parametrize("command", COMMANDS)
def test_an_empty_out_is_refused(capsys, tmp_path, model, no_slow_work, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # where '' would write
    code, _, err = run_cli(capsys, *argv(command, model, ""))
    one_line_error(code, err, "--out is empty", "accepted: a folder path")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["compress", "family", "cascade"])
@pytest.mark.parametrize("where", ["data", "data/sub", "."])
def test_out_in_or_around_the_data_is_refused(capsys, tmp_path, model, no_slow_work, monkeypatch, command, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "c0").mkdir(parents=True)
    (tmp_path / marker(command)).touch()  # '.' made by this command: only the overlap refuses it
    code, _, err = run_cli(capsys, *argv(command, model, where, data="imagefolder:data"))
    one_line_error(code, err, f"--out {where}", "overlaps the input data", "outside every input")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["c0"]


@pytest.mark.parametrize("command", ["compress", "synth"])
def test_out_holding_the_model_is_refused(capsys, tmp_path, no_slow_work, command):
    model = dcvit.save(tiny_vit(depth=2), tmp_path / "run" / "model")
    (tmp_path / "run" / marker(command)).touch()
    code, _, err = run_cli(capsys, *argv(command, str(model), tmp_path / "run", data="fashion-mnist"))
    one_line_error(code, err, "overlaps the input", str(model))


def test_synth_writes_a_new_folder_then_replaces_only_its_own(capsys, tmp_path, model):
    out = tmp_path / "set"
    for _ in range(2):  # the second run replaces the first run's grid.png: that folder is synth's
        code, _, err = run_cli(capsys, *argv("synth", model, out), "--quiet")
        assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [marker("synth"), "grid.png", "meta.json", "tensors.safetensors"]
    )
    one_line_error(*run_cli(capsys, *argv("compress", model, out))[::2], "did not write")  # not compress's


def test_claim_checks_again_and_marks(tmp_path):
    out = check_out(str(tmp_path / "out"), "synth")
    assert not out.exists()  # checking creates nothing
    assert (claim_out(out, "synth") / marker("synth")).is_file()
    other = check_out(str(tmp_path / "other"), "synth")
    other.mkdir()
    (other / "grid.png").write_text("arrived meanwhile")
    with pytest.raises(ValueError, match="did not write"):
        claim_out(other, "synth")
    assert [p.name for p in other.iterdir()] == ["grid.png"]


def test_a_broken_link_or_a_linked_marker_is_not_a_folder_of_ours(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="broken link"):
        check_out(str(tmp_path / "dangling"), "synth")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").touch()
    (out / marker("synth")).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="did not write"):
        check_out(str(out), "synth")
