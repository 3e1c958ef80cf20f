"""Writing through dcvit/storage.py: atomic files on a full disk, names too long, an --out left dangling
during the work; every OS error is one line naming the file and what works (CLI: exit 2), and nothing
half-written stays behind. Tiny saved models, temporary folders."""

import errno
import os

import pytest
from helpers.cli import one_line_error, run_cli
from helpers.runs import COMPRESS


def full_disk_after(monkeypatch, writes: int) -> None:
    """Every atomic writer renames its finished temporary file into place: let `writes` renames pass, then
    answer ENOSPC as a full disk would (the temporary file is left for the writer to clean up)."""
    real, done = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if len(done) >= writes:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        done.append(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def temporaries(root) -> list:
    return [p for p in root.rglob("*") if p.name.startswith(".") and ".tmp" in p.name or "cascade-tmp" in p.name]


SYNTH = ("synth", "--num-images", "2", "--iterations", "1", "--quiet")


# --- output places: names too long, links left dangling, full disks ------------------------------------
@pytest.mark.parametrize("command", ["synth", "compress", "cascade"])  # demo: the same check_out
def test_a_300_character_out_is_one_line(capsys, tmp_path, models, monkeypatch, command):
    monkeypatch.setattr("dcvit.factory.resolve_model", lambda *a, **k: pytest.fail("started before refusing"))
    out = tmp_path / ("o" * 300)
    argv = {
        "synth": [*SYNTH, "--model", models[0]],
        "compress": [*COMPRESS, "--model", models[0]],
        "cascade": ["cascade", "--big", models[0], "--savers", models[1]],
    }[command]
    code, _, err = run_cli(capsys, *argv, "--out", out)
    one_line_error(code, err, "--out", "File name too long", "255")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writes", [0, 2])  # the set's tensors, or its grid after the set (2 files)
def test_synth_on_a_full_disk_leaves_no_folder(capsys, tmp_path, models, monkeypatch, writes):
    full_disk_after(monkeypatch, writes)
    code, _, err = run_cli(capsys, *SYNTH, "--model", models[0], "--out", tmp_path / "set")
    one_line_error(code, err, "No space left on device", "free some space")
    assert list(tmp_path.iterdir()) == []


def test_synth_out_left_dangling_during_the_work_is_one_line(capsys, tmp_path, models, monkeypatch):
    import synth

    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    real = synth.synthesize

    def synthesize(*args, **kwargs):
        target.rmdir()  # the link's target goes away while the set is made
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "synthesize", synthesize)
    code, _, err = run_cli(capsys, *SYNTH, "--model", models[0], "--out", link)
    one_line_error(code, err, "--out", "broken link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


@pytest.mark.parametrize("writes", [3])  # the cascade folder, after the report and curves
def test_cascade_on_a_full_disk_leaves_no_folder(capsys, tmp_path, models, images, monkeypatch, writes):
    full_disk_after(monkeypatch, writes)
    code, _, err = run_cli(capsys, "cascade", "--big", models[0], "--savers", models[1], "--data", images,
                           "--calibration-size", "10", "--out", tmp_path / "run", "--quiet")  # fmt: skip
    one_line_error(code, err, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_compress_and_resume_on_a_full_disk(capsys, tmp_path, models, images, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:  # the first write (settings.json) fails: no run is left to resume
        full_disk_after(m, 0)
        code, _, err = run_cli(capsys, *COMPRESS, "--model", models[0], "--data", images, "--out", out)
        one_line_error(code, err, "No space left on device")
        assert temporaries(tmp_path) == [] and not (out / "checkpoints").exists()
    assert run_cli(capsys, *COMPRESS, "--model", models[0], "--data", images, "--out", out)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    full_disk_after(monkeypatch, 0)  # resuming rewrites the result: the finished files stay as they were
    code, _, err = run_cli(capsys, *COMPRESS, "--model", models[0], "--data", images, "--out", out, "--resume")
    one_line_error(code, err, "No space left on device")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_os_error_line_names_the_file_shortened_and_what_works():
    from dcvit.storage import os_error_line

    line = os_error_line(OSError(errno.ENAMETOOLONG, "File name too long", "/x/" + "y" * 1000))
    assert line.startswith("File name too long (/x/yyy") and "..." in line and "255 bytes" in line
    assert len(line) < 250 and "\n" not in line
    line = os_error_line(PermissionError(errno.EACCES, "Permission denied", "/a\nb"))
    assert line == "Permission denied (/a b): choose a path you may read and write"
