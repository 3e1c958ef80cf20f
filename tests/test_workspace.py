"""dcvit.workspace: a run folder's files (settings.json, each step's meta.json, the metric set's meta.json) are
read back on --resume; a damaged one is a one-line error naming the file, never a traceback."""

from __future__ import annotations

import json

import pytest
import torch

import synth
from dcvit.workspace import Workspace

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
