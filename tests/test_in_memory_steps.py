"""Progressive and search steps go on with the model in memory (no reload of the checkpoint just written);
a run killed in its last step and resumed from the checkpoints still ends with exactly the same weights."""

import pytest
import torch
from helpers.models import tiny_data, tiny_vit

import dcvit
from dcvit import CompressConfig
from dcvit.engine import Engine
from dcvit.workspace import Workspace

CONFIG = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5, search_steps=3, progress=False
)


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("structure", ["auto", "dcvit"])
def test_a_run_killed_in_its_last_step_resumes_to_the_same_weights(tmp_path, monkeypatch, structure):
    model, config, loads = tiny_vit(depth=6), CONFIG.replace(structure=structure), []
    real_tune, real_load = Engine.fine_tune, Workspace.load
    monkeypatch.setattr(Workspace, "load", lambda self, key: loads.append(key) or real_load(self, key))
    calls = []
    monkeypatch.setattr(Engine, "fine_tune", lambda *a, **k: calls.append(1) or real_tune(*a, **k))
    whole = dcvit.compress(model, 0.5, tiny_data(), config, workdir=tmp_path / "whole")
    # uninterrupted, no step's checkpoint is read back (DC-ViT reads its best trial's, where step 1 starts)
    assert len(whole.history) >= 3 and all("trial" in key for key in loads) and len(loads) <= 1

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == total:  # the last step's fine-tune
            raise KeyboardInterrupt
        return real_tune(*args, **kwargs)

    total, calls[:] = len(calls), []
    monkeypatch.setattr(Engine, "fine_tune", dying)
    with pytest.raises(KeyboardInterrupt):
        dcvit.compress(model, 0.5, tiny_data(), config, workdir=tmp_path / "killed")
    monkeypatch.setattr(Engine, "fine_tune", real_tune)
    loads.clear()
    resumed = dcvit.compress(model, 0.5, tiny_data(), config, workdir=tmp_path / "killed", resume=True)
    assert any("trial" not in key for key in loads)  # the steps before the kill were read back
    assert resumed.blocks == whole.blocks and _same(resumed.model, whole.model)
    assert next(whole.model.parameters()).requires_grad and not whole.model.training  # as dcvit.load gives it
