"""Zero-shot scoring stacks a block's edits on the batch axis; every score must equal the one of the edit's own
forward pass, exactly (images are independent), on each family the search runs on."""

import pytest
import torch
from test_arch_hf_families import build
from test_structure import _families

import dcvit.search
from dcvit import CompressConfig, plan_for
from dcvit.arch import runnable
from dcvit.engine import Engine
from dcvit.macs import macs_profile
from dcvit.search import Search

CONFIG = CompressConfig(synth_images=6, synth_iterations=2, prune_heads=True, progress=False, structure="auto")


@pytest.mark.parametrize("family", ["timm ViT", "torchvision ViT", "timm Swin", "hf vit", "hf swin"])
def test_stacked_scores_equal_one_pass_per_edit(family, monkeypatch):
    model = runnable(build(family[3:])) if family.startswith("hf ") else _families()[family]
    size = macs_profile(model).input_size
    shots = torch.utils.data.TensorDataset(torch.randn(4, *size), torch.zeros(4, dtype=torch.long))
    engine = Engine(model, shots, CONFIG, metric_cache=False)
    calls, forward = [], dcvit.search.Stacked.forward
    monkeypatch.setattr(
        dcvit.search.Stacked, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k)
    )
    try:
        search = Search(engine, plan_for(model, 0.6, CONFIG))
        current = engine.teacher
        profile, importance = macs_profile(current, size), search.importance(current)
        stacked = search.zero_shot(current, profile, importance)
        monkeypatch.setattr(dcvit.search, "STACKED_ELEMENTS", 1)  # one edit per forward pass
        single = search.zero_shot(current, profile, importance)
    finally:
        engine.workspace.cleanup()
    assert bool(calls) != (family == "hf swin")  # its adapter wraps the blocks it sets: one edit at a time
    assert len(stacked) > len({e.block for e in stacked})  # blocks with several edits were stacked
    assert [e.score for e in stacked] == [e.score for e in single]
    assert [(e.block, e.attention, e.units, e.heads) for e in stacked] == [
        (e.block, e.attention, e.units, e.heads) for e in single
    ]
