"""Arguments checked where they are given, in one line naming the argument, the value and what is accepted
(issue #23, unclear errors): CompressConfig's fields, plan's, few_shot_subset's, and the CLI's flags."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from helpers.cli import one_line_error, run_cli
from helpers.models import tiny_vit
from PIL import Image

import dcvit
from dcvit import CompressConfig
from dcvit.data import calibration_indices, few_shot_indices


@pytest.mark.parametrize(
    "field,value,accepted",
    [
        ("epochs", 1.5, "an integer between 1"),
        ("epochs", math.inf, "an integer between 1"),
        ("epochs", True, "an integer between 1"),
        ("trial_epochs", 0, "or None"),
        ("batch_size", "64", "an integer between 1"),
        ("lr", "0.1", "a finite number > 0"),
        ("lr", math.inf, "a finite number > 0"),
        ("lr", math.nan, "a finite number > 0"),
        ("weight_decay", -1e-4, "a finite number >= 0"),
        ("loss_warmup", 2, "from 0 to 1"),
        ("clip_grad", 0, "> 0"),
        ("augment", "yes", "True or False"),
        ("synth_images", 0, "an integer between 1"),
        ("synth_iterations", 2.0, "an integer between 1"),
        ("synth_jitter", 1, "[0, 1) or None"),
        ("candidate_blocks", [1, 1], "distinct block indices"),
        ("candidate_blocks", [1.5], "distinct block indices"),
        ("search_steps", 0, "or None"),
        ("extra_blocks", -1, "an integer between 0"),
        ("seed", 2**70, "from 0 to 2**63 - 1"),
        ("seed", -1, "from 0 to 2**63 - 1"),
        ("mixed_precision", "fp32", "one of"),
        ("unit_choice", ["random"], "one of"),
    ],
)
def test_every_field_is_checked_at_construction(field, value, accepted):
    with pytest.raises(ValueError) as err:
        CompressConfig(**{field: value})
    message = str(err.value)
    assert message.startswith(f"CompressConfig.{field} must be ") and accepted in message, message
    assert f"got {value!r}"[:20] in message and "\n" not in message


def test_numpy_numbers_are_accepted_as_plain_ones():
    config = CompressConfig(epochs=np.int64(3), lr=np.float32(0.5), seed=np.uint32(7), candidate_blocks=[np.int8(1)])
    assert type(config.epochs) is int and type(config.lr) is float and config.candidate_blocks == (1,)
    json.dumps(config.as_dict())  # settings.json stays JSON
    assert config.replace(epochs=4).epochs == 4


def test_plan_refuses_fractional_blocks_before_counting_macs():
    model = tiny_vit()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^blocks must be an integer >= 1 or None; got 2\.5$"):
        dcvit.plan(model, 0.8, blocks=2.5)
    assert time.perf_counter() - start < 0.1
    with pytest.raises(ValueError, match=r"^blocks must be an integer between 1 and 3 \(the candidate blocks\)"):
        dcvit.plan(model, 0.8, blocks=7)
    with pytest.raises(ValueError, match="candidate blocks must be"):
        dcvit.plan(model, 0.8, candidate_blocks=[1.0, 2.0])
    assert dcvit.plan(model, 0.8, blocks=np.int64(2)).n_blocks == 2


def test_shots_and_sizes_take_numpy_integers():
    targets = [0, 1] * 10
    assert len(few_shot_indices(targets, np.int64(10))) == 10
    with pytest.raises(
        ValueError, match=r"^shots must be an integer between 1 and 20 \(the images available\); got 2\.5"
    ):
        few_shot_indices(targets, 2.5)
    assert len(calibration_indices(12, np.int32(5), seed=np.int64(3))) == 5
    with pytest.raises(ValueError, match=r"^calibration_size must be an integer between 1 and 11 .*; got 20$"):
        calibration_indices(12, 20)


@pytest.fixture
def folder(tmp_path):
    for c in ("a", "b"):
        for i in range(6):
            (tmp_path / "data" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16), 10 * i, dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    return tmp_path / "data"


def test_few_shot_subset_takes_numpy_integers_and_names_bad_ones(folder):
    assert len(dcvit.few_shot_subset(f"imagefolder:{folder}", np.int64(10))) == 10
    with pytest.raises(ValueError, match=r"^seed must be an integer from 0 to 2\*\*63 - 1; got 2\.0$"):
        dcvit.few_shot_subset(f"imagefolder:{folder}", 10, seed=2.0)
    with pytest.raises(ValueError, match=r"^calibration_size must be an integer >= 0 or None; got -1$"):
        dcvit.few_shot_subset(f"imagefolder:{folder}", 10, calibration_size=-1)


def test_cli_names_its_flag_for_a_refused_calibration_size(capsys, tmp_path, folder):
    model = dcvit.save(tiny_vit(depth=3), tmp_path / "m")
    argv = ["compress", "--model", model, "--data", f"imagefolder:{folder}", "--target-macs", "0.9"]
    code, _, err = run_cli(capsys, *argv, "--shots", "4", "--calibration-size", "20", "--out", tmp_path / "o")
    one_line_error(code, err, "--calibration-size must be an integer between 1 and 11", "got 20")
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_huge_seed_naming_it(capsys, tmp_path, folder):
    code, _, err = run_cli(
        capsys, "compress", "--model", "x", "--data", folder, "--seed", str(2**70), "--out", tmp_path
    )
    one_line_error(code, err, "--seed", "2**63 - 1")


def test_cli_names_the_flag_of_a_refused_setting(capsys, tmp_path, folder):
    argv = ["compress", "--model", "never-loaded", "--data", folder, "--target-macs", "0.9", "--out", tmp_path / "o"]
    code, _, err = run_cli(capsys, *argv, "--lr", "inf")
    one_line_error(code, err, "--lr must be a finite number > 0; got inf")
    assert not (tmp_path / "o").exists()


def test_cli_offers_no_none_it_cannot_take(capsys, tmp_path, folder):
    # the Python field takes None ("as --batch-size"); on the command line that is leaving the flag out
    model = dcvit.save(tiny_vit(depth=3), tmp_path / "m")
    argv = ["compress", "--model", model, "--data", f"imagefolder:{folder}", "--target-macs", "0.9"]
    code, _, err = run_cli(capsys, *argv, "--shots", "4", "--final-batch-size", "0", "--out", tmp_path / "o")
    one_line_error(code, err, "--final-batch-size must be an integer between 1 and", "got 0")
    assert "None" not in err
    api = r"^CompressConfig.final_batch_size must be an integer between 1 and \d+ or None; got 0$"
    with pytest.raises(ValueError, match=api):  # the API keeps it: None is a value there
        CompressConfig(final_batch_size=0)
