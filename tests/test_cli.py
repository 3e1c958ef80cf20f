"""The `dcvit` command line (dcvit/cli/): commands and their output, --traceback, the warnings it hides, and
user errors refused in one line (exit 2, no traceback) before any slow work; progress output fit for logs.

In-process through `dcvit.cli.main` on random-init 1-channel 16-pixel ViTs and tiny generated ImageFolders;
slow work is replaced by sentinels where a test only checks what happens before it.
"""

import errno
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
import torch
from helpers.cli import one_line_error, run_cli
from helpers.models import tiny_vit
from PIL import Image

import dcvit
from dcvit.cli import build_parser, silence_known_noise


def test_plan_json(capsys):
    code, out, err = run_cli(capsys, "plan", "--model", "fmnist_vit12", "--target-macs", "0.75", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["macs_planned"] <= payload["macs_target"] and payload["n_blocks"] >= 1


def test_macs_text(capsys):
    code, out, _ = run_cli(capsys, "macs", "--model", "fmnist_vit12")
    assert code == 0 and "GMACs" in out and len(out.splitlines()) == 14


def test_macs_of_a_model_without_adapter_is_its_total(capsys):
    code, out, _ = run_cli(capsys, "macs", "--model", "fmnist_cnn", "--json")
    payload = json.loads(out)
    assert code == 0 and payload["total"] == 1_963_776 and payload["attn"] is None
    code, out, _ = run_cli(capsys, "macs", "--model", "fmnist_cnn")
    assert "GMACs" in out and "no per-block breakdown" in out and "unsupported architecture" in out


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["plan", "--model", "fmnist_vit12", "--target-macs", "0"], "positive"),
        (["plan", "--model", "fmnist_vit12", "--target-macs", "-1"], "positive"),
        (["plan", "--model", "fmnist_vit12", "--target-macs", "1"], "not below"),
        (["plan", "--model", "fmnist_vit12", "--target-macs", "0.05", "--structure", "dcvit"], "floor"),
        (["plan", "--model", "fmnist_vit12", "--target-macs", "0.001"], "floor"),
        (["plan", "--model", "fmnist_vit12", "--target-macs", "0.3", "--structure", "mlp"], "floor"),
        (["plan", "--model", "fmnist_vit12", "--target-macs", "lots"], "number"),
        (["plan", "--model", "no_such_model", "--target-macs", "0.5"], "unknown model"),
        (["macs", "--model", "fmnist_cnn", "--input-size", "3", "32", "32"], "does not run on input size"),
        (["cascade", "--big", "fmnist_vit12", "--savers", "fmnist_cnn", "--delta", "0.7"], "risk in (0, 0.5]"),
        (["cascade", "--big", "fmnist_vit12", "--savers", "fmnist_cnn", "--max-acc-drop", "2"], "fraction in [0, 1)"),
    ],
)
def test_bad_input_one_line_error(capsys, argv, fragment):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


BAD_PLAN = ("plan", "--model", "fmnist_vit12", "--target-macs", "-1")


@pytest.mark.parametrize("where", ["before", "after"])
def test_traceback_flag_shows_the_full_error(capsys, monkeypatch, where):
    monkeypatch.delenv("DCVIT_TRACEBACK", raising=False)
    argv = ["--traceback", *BAD_PLAN] if where == "before" else [*BAD_PLAN, "--traceback"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.startswith("Traceback (most recent call last):") and "positive" in err
    assert len(err.strip().splitlines()) > 3


@pytest.mark.parametrize("value, full", [("1", True), ("0", False), ("", False)])
def test_dcvit_traceback_environment_variable(capsys, monkeypatch, value, full):
    monkeypatch.setenv("DCVIT_TRACEBACK", value)
    code, _, err = run_cli(capsys, *BAD_PLAN)
    assert code == 2 and "positive" in err
    assert ("Traceback" in err) == full and (len(err.strip().splitlines()) == 1) != full


def test_the_cli_silences_only_known_noise():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn(
            "Palette images with Transparency expressed in bytes should be converted", UserWarning, stacklevel=1
        )
        warnings.warn("a user-facing notice", UserWarning, stacklevel=1)
        warnings.warn("a deprecation in a plugin", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a user-facing notice", "a deprecation in a plugin"]


@pytest.mark.slow
def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "dcvit.cli", "plan", "--model", "resnet18", "--target-macs", "0.5"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unsupported" in proc.stderr


def test_bench_runs_and_reports_ratios(capsys):
    code, out, _ = run_cli(
        capsys, "bench", "--model", "fmnist_vit12", "--drop", "1", "--batch-sizes", "2", "--repeats", "2", "--json"
    )
    rows = json.loads(out)["rows"]
    assert code == 0 and [r["name"] for r in rows] == ["original", "drop1", "dcvit1", "mlp1"]
    assert all(abs(rows[1]["macs"] - r["macs"]) / rows[0]["macs"] < 0.01 for r in rows[2:])


def test_cascade_refuses_a_saver_with_other_classes(capsys, tmp_path):
    import timm

    import dcvit

    saver = dcvit.save(timm.create_model("fmnist_vit_tiny", num_classes=5), tmp_path / "five_classes")
    code, _, err = run_cli(capsys, "cascade", "--big", "fmnist_vit12", "--savers", str(saver))
    assert code == 2 and "predicts 5 classes; the big model predicts 10" in err
    assert len(err.strip().splitlines()) == 1


def test_macs_counts_a_model_without_adapter(capsys):
    """`dcvit macs` counts any model: a torchvision ResNet has no adapter, so it gets a total without blocks."""
    code, out, err = run_cli(capsys, "macs", "--model", "tv:resnet18", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["attn"] is None and abs(got["total"] - 1.819e9) < 0.01e9  # torchvision: 1.81 GFLOPS (multiply-adds)


def tiny_model(depth=2):
    return tiny_vit(depth)


def image_folder(root, classes=10, per_class=1):
    """A bare ImageFolder (serves train and test) of random 16 x 16 gray PNGs, one folder per class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / f"c{c:02d}" / f"{i}.png")
    return root


@pytest.fixture
def fast_throughput(monkeypatch):
    monkeypatch.setattr("dcvit.evaluation.throughput", lambda *args, **kwargs: 1.0)


# --- a dataset with more classes than the model -------------------------------------------------
def test_eval_refuses_a_dataset_with_more_classes(capsys, tmp_path, models, fast_throughput):
    data = f"imagefolder:{image_folder(tmp_path / 'twelve', classes=12)}"
    code, out, err = run_cli(capsys, "eval", "--model", models[0], "--data", data)
    one_line_error(code, err, "has 12 classes", "predicts 10")
    assert out == ""


def test_cascade_refuses_a_dataset_with_more_classes(capsys, tmp_path, models, monkeypatch):
    def recorded(*args, **kwargs):
        raise AssertionError("refused only after recording every model on both splits")

    monkeypatch.setattr("cascade.record", recorded)
    data = f"imagefolder:{image_folder(tmp_path / 'twelve', classes=12)}"
    code, _, err = run_cli(capsys, "cascade", "--big", models[0], "--savers", models[1], "--data", data,
                           "--calibration-size", "4")  # fmt: skip
    one_line_error(code, err, "has 12 classes", "predicts 10")


# --- unreadable images ------------------------------------------------------------------------
def _truncated_png(path):
    Image.fromarray(np.full((16, 16), 7, dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:40])


BAD_IMAGES = {
    "truncated.png": _truncated_png,
    "empty.png": lambda path: path.write_bytes(b""),
    "text.jpg": lambda path: path.write_text("not an image\n"),
}


def _folder_with_bad_image(root, kind):
    image_folder(root)
    bad = root / "c00" / kind
    BAD_IMAGES[kind](bad)
    (root / "c00" / "0.png").unlink()  # the bad file is the first image, so every command reaches it
    return f"imagefolder:{root}", bad


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_eval_names_an_unreadable_image(capsys, tmp_path, models, kind, fast_throughput):
    data, bad = _folder_with_bad_image(tmp_path / "images", kind)
    code, _, err = run_cli(capsys, "eval", "--model", models[0], "--data", data)
    one_line_error(code, err, "cannot read image", str(bad))


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_compress_names_an_unreadable_image(capsys, tmp_path, models, kind):
    data, bad = _folder_with_bad_image(tmp_path / "images", kind)
    code, _, err = run_cli(capsys, "compress", "--model", models[0], "--data", data, "--shots", "10",
                           "--calibration-size", "0", "--target-macs", "0.6", "--out", tmp_path / "out",
                           "--quiet")  # fmt: skip
    one_line_error(code, err, "cannot read image", str(bad))


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_cascade_names_an_unreadable_image(capsys, tmp_path, models, kind):
    data, bad = _folder_with_bad_image(tmp_path / "images", kind)
    code, _, err = run_cli(capsys, "cascade", "--big", models[0], "--savers", models[1], "--data", data,
                           "--calibration-size", "2", "--quiet")  # fmt: skip
    one_line_error(code, err, "cannot read image", str(bad))


# --- fashion-mnist:ROOT never downloads ---------------------------------------------------------
@pytest.mark.parametrize("command", ["eval", "compress"])
def test_fashion_mnist_root_without_files_neither_downloads_nor_creates(capsys, tmp_path, models, command):
    root = tmp_path / "fmnist"
    root.mkdir()
    extra = ["--target-macs", "0.6", "--out", tmp_path / "out"] if command == "compress" else []
    code, _, err = run_cli(capsys, command, "--model", models[0], "--data", f"fashion-mnist:{root}", *extra)
    one_line_error(code, err, str(root), "dataset-fashion-mnist", ".gz")
    assert list(root.iterdir()) == [] and not (tmp_path / "out").exists()


# --- output places, threads, seeds, meta models -------------------------------------------------
def _out_argv(command, models, out):
    data = "imagefolder:/nonexistent-never-read"  # the output check comes first, so data is never touched
    return {
        "compress": ["compress", "--model", models[0], "--target-macs", "0.5", "--out", out],
        "family": ["family", "--model", models[0], "--targets", "0.5", "--out", out],
        "synth": ["synth", "--model", models[0], "--num-images", "1", "--iterations", "1", "--out", out],
        "cascade": ["cascade", "--big", models[0], "--savers", models[1], "--data", data, "--out", out],
        "demo": ["demo", "--fast", "--out", out],
    }[command]


def _read_only(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the probe meet what a read-only folder answers

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    return folder / "run", "not writable"


def _full(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    return tmp_path / "run", "No space left"


def _a_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    return tmp_path / "file", "existing file"


def _under_a_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "run", "is a file"


@pytest.mark.parametrize("place", [_read_only, _full, _a_file, _under_a_file], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("command", ["compress", "family", "synth", "cascade", "demo"])
def test_unusable_out_is_refused_before_any_work(capsys, tmp_path, models, monkeypatch, no_slow_work, command, place):
    out, fragment = place(tmp_path, monkeypatch)
    code, _, err = run_cli(capsys, *_out_argv(command, models, out))
    one_line_error(code, err, "--out", fragment)
    assert not out.exists() or out.is_file()


@pytest.mark.parametrize("threads", ["-2", "0"])
def test_bench_refuses_non_positive_threads(capsys, models, threads):
    before = torch.get_num_threads()
    code, _, err = run_cli(capsys, "bench", "--model", models[0], "--threads", threads, "--drop", "1",
                           "--batch-sizes", "1", "--repeats", "1")  # fmt: skip
    one_line_error(code, err, "--threads", "positive")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("seed", [str(2**64), str(2**63), "-1", "ten"])
@pytest.mark.parametrize("command", ["compress", "family", "synth", "cascade", "demo"])
def test_seed_out_of_range_is_refused(capsys, tmp_path, models, no_slow_work, command, seed):
    code, _, err = run_cli(capsys, *_out_argv(command, models, tmp_path / "out"), "--seed", seed)
    one_line_error(code, err, "--seed", "2**63")


def test_largest_seed_compresses(capsys, tmp_path):
    """The largest accepted seed runs to the end: seeds derived from it (the paper's random MLP units, which
    need a middle block, hence depth 3) must stay in torch's range."""
    model = str(dcvit.save(tiny_model(depth=3), tmp_path / "model"))
    data = f"imagefolder:{image_folder(tmp_path / 'images')}"
    code, out, err = run_cli(capsys, "compress", "--model", model, "--data", data, "--shots", "10",
                             "--calibration-size", "0", "--target-macs", "0.7", "--structure", "dcvit",
                             "--epochs", "1", "--trial-epochs", "1", "--synth-iterations", "2", "--batch-size", "10",
                             "--out", tmp_path / "out", "--seed", str(2**63 - 1), "--quiet")  # fmt: skip
    assert code == 0 and err == "" and "target 0.7" in out


def test_count_macs_of_a_meta_model_is_a_one_line_value_error():
    with torch.device("meta"):
        model = tiny_model()
    with pytest.raises(ValueError, match="meta device") as caught:
        dcvit.count_macs(model)
    assert len(str(caught.value).splitlines()) == 1


# --- progress output ----------------------------------------------------------------------------
def _subcommands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_has_quiet(command):
    assert "--quiet" in _subcommands()[command]._option_string_actions


def test_redirected_progress_is_plain_lines_and_quiet_silences_it(capsys, tmp_path, models, fast_throughput):
    data = f"imagefolder:{image_folder(tmp_path / 'ten', per_class=2)}"
    argv = ["eval", "--model", models[0], "--data", data, "--batch-size", "2"]
    for _ in range(2):  # a second main() in the same process must not print every line twice
        code, out, err = run_cli(capsys, *argv)
        assert code == 0 and "top-1" in out
        assert "\r" not in err and "\x1b" not in err
        first, *lines = err.splitlines()
        assert first == "dcvit: evaluating on cpu, 1 process(es), mixed precision no"  # device, processes, precision
        assert lines and all(line.startswith("dcvit: evaluating: ") for line in lines)
        assert len(lines) == 10 and lines[-1] == "dcvit: evaluating: 10/10 (100%)"
    code, out, err = run_cli(capsys, *argv, "--quiet")
    assert code == 0 and "top-1" in out and err == ""


class _Terminal:
    def isatty(self):
        return True

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def test_progress_draws_a_bar_only_on_a_terminal_without_tqdm_disable(monkeypatch):
    from tqdm import tqdm

    from dcvit.progress import progress

    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    bar = progress(range(3), "x")
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not isinstance(progress(range(3), "x"), tqdm)
    assert progress(range(3), "x", enabled=False) == range(3)


def test_progress_logs_about_every_tenth(caplog):
    from dcvit.progress import progress

    with caplog.at_level(logging.INFO, logger="dcvit"):
        assert list(progress(iter(range(95)), "steps", total=95)) == list(range(95))
    messages = [r.getMessage() for r in caplog.records if r.name == "dcvit"]
    assert len(messages) == 10 and messages[0] == "steps: 10/95 (10%)" and messages[-1] == "steps: 95/95 (100%)"


def test_demo_status_lines_are_logged_not_printed(capsys, caplog):
    from dcvit.studies.demo import _log

    with caplog.at_level(logging.INFO, logger="dcvit"):
        _log("structure search")
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == ["structure search"]


# --- counts without bound: batch sizes, threads ---------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ("eval", "--batch-size", "10000000"),
        ("bench", "--batch-sizes", "1", "10000000"),
        ("bench", "--threads", "100000"),
    ],
    ids=["eval-batch", "bench-batch", "bench-threads"],
)
def test_huge_counts_are_refused_before_any_work(capsys, models, monkeypatch, argv):
    monkeypatch.setattr("dcvit.factory.resolve_model", lambda *a, **k: pytest.fail("started before refusing"))
    before = torch.get_num_threads()
    code, _, err = run_cli(capsys, argv[0], "--model", models[0], *argv[1:])
    one_line_error(code, err, argv[-1], "accepted a positive integer up to")
    assert torch.get_num_threads() == before


def test_eval_times_no_larger_a_batch_than_the_data(capsys, models, images, monkeypatch):
    timed = []
    monkeypatch.setattr("dcvit.evaluation.throughput", lambda model, size, batch: timed.append(batch) or 1.0)
    code, out, err = run_cli(capsys, "eval", "--model", models[0], "--data", images, "--batch-size", "4096", "--quiet")
    assert code == 0 and timed == [20] and "(batch 20)" in out, err


# --- names too long to be paths ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["macs", "eval", "bench", "synth"])
def test_a_5000_character_model_name_is_an_unknown_model(capsys, tmp_path, command):
    extra = ["--out", tmp_path / "out"] if command == "synth" else []
    code, _, err = run_cli(capsys, command, "--model", "x" * 5000, *extra)
    one_line_error(code, err, "unknown model 'xxx", "xxx...xxx", "timm model name")
    assert len(err) < 600 and list(tmp_path.iterdir()) == []
