import json
import subprocess
import sys
import warnings

import pytest
from helpers.cli import run_cli

from dcvit.cli import silence_known_noise


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
