"""dcvit.workspace: checkpoint names (existing runs are resumed by them) and the main-process-then-others order."""

from types import SimpleNamespace

import pytest

from dcvit.workspace import Workspace


def test_checkpoint_names_are_those_of_existing_runs():
    """Spelled as runs made before this module owned them: a change would orphan their checkpoints."""
    plan = SimpleNamespace(mlp_hidden=103, remove_attention=True)
    dropped = SimpleNamespace(mlp_hidden=0, remove_attention=True)
    assert Workspace.trial_key("dcvit", plan, 2) == "trial-dcvit-b2-h103-a1"
    assert Workspace.step_key("dcvit", plan, [2, 1, 3], progressive=True) == "prog-dcvit-h103-a1-2-1-3"
    assert Workspace.step_key("drop", dropped, [1, 2], progressive=False) == "topk-drop-h0-a1-1-2"
    assert Workspace.search_trial_key("auto", 3, False, 0, None) == "auto-trial-b3-a0-u0"
    assert Workspace.search_trial_key("auto", 2, True, 128, 1) == "auto-trial-b2-a1-u128-h1"
    assert Workspace.search_step_key("mlp", 705235, 1) == "mlp-705235-step1"


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
