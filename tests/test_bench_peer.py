"""tools/bench_peer.py: Torch-Pruning MLP width pruning to a MACs budget, recovered by Eq. 3 mimicking."""

import json

import pytest
import torch
from helpers.tools import load_tool
from torch.utils.data import TensorDataset

pytest.importorskip("torch_pruning")

import dcvit  # noqa: E402
from dcvit.arch import get_adapter  # noqa: E402
from dcvit.config import CompressConfig  # noqa: E402


@pytest.fixture(scope="module")
def peer():
    return load_tool("bench_peer")


def tiny():
    torch.manual_seed(0)
    return dcvit.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=3,
        num_heads=2,
        in_chans=1,
        num_classes=10,
    ).eval()


def test_prune_to_macs_reaches_the_budget_and_keeps_attention(peer):
    model, x = tiny(), torch.randn(2, 1, 16, 16)
    full = dcvit.count_macs(model)
    pruned, widths = peer.prune_to_macs(model, 0.6, x)
    macs = dcvit.count_macs(pruned)
    assert 0.6 * full * (1 - 0.005) <= macs <= 0.6 * full
    assert widths == peer.mlp_widths(pruned) and len(widths) == 3 and all(1 <= w < 128 for w in widths)
    assert peer.mlp_widths(model) == [128] * 3  # the input model is untouched
    assert pruned.embed_dim == 32 and pruned.pos_embed.shape[-1] == 32 and pruned.cls_token.shape[-1] == 32
    for block in pruned.blocks:
        assert block.attn.num_heads == 2 and block.attn.head_dim == 16
        assert block.attn.qkv.weight.shape == (96, 32) and block.attn.proj.weight.shape == (32, 32)
        assert block.mlp.fc2.out_features == 32 and block.mlp.fc2.in_features == block.mlp.fc1.out_features
    assert get_adapter(pruned).features(pruned, x).shape == (2, 17, 32)
    assert pruned(x).shape == (2, 10)


def test_units_removed_exactly_and_blocks_never_emptied(peer):
    model, x = tiny(), torch.randn(1, 1, 16, 16)
    assert sum(peer.mlp_widths(peer.prune_units(model, 100, x, iterative_steps=2))) == 384 - 100
    assert peer.mlp_widths(peer.prune_units(model, 384 - 3 * 4, x, min_width=4)) == [4, 4, 4]
    with pytest.raises(ValueError, match="below what MLP pruning reaches"):
        peer.prune_to_macs(model, 0.2, x)


def test_recovery_runs_on_the_pruned_model(peer):
    teacher, x = tiny(), torch.randn(16, 1, 16, 16)
    student, _ = peer.prune_to_macs(teacher, 0.75, x)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    data = TensorDataset(x, torch.zeros(16, dtype=torch.long))
    fit = peer.recover(student, teacher, data, CompressConfig(epochs=1, batch_size=8, progress=False), epochs=1, seed=0)
    assert len(fit.losses) == 1 and fit.final_loss == fit.final_loss
    after = student.state_dict()
    assert not torch.equal(before["blocks.0.mlp.fc1.weight"], after["blocks.0.mlp.fc1.weight"])  # all blocks train
    assert not torch.equal(before["blocks.2.mlp.fc2.weight"], after["blocks.2.mlp.fc2.weight"])
    assert torch.equal(before["head.weight"], after["head.weight"])  # the head stays frozen


def test_report_and_missing_dependency(peer, tmp_path, capsys, monkeypatch):
    rows = [
        {
            "cell": f"peer/t0.59/s100/seed{s}",
            "target": 0.59,
            "seed": s,
            "shots": 100,
            "top1": t,
            "macs_fraction": 0.589,
            "widths": [10, 20],
        }
        for s, t in ((2022, 0.8), (2021, 0.9))
    ]
    rows.append({"cell": "peer/t0.3/s100/seed2021", "target": 0.3, "seed": 2021, "shots": 100, "unreachable": "x"})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert peer.main(["report", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 0.59 | 58.9 | 85.00 ± 7.07 | 2 | 10 20 |" in out and "| 0.3 | — | unreachable" in out

    def missing():
        raise ImportError("no torch_pruning")

    monkeypatch.setattr(peer, "_tp", missing)
    assert peer.main(["run", "--out", str(tmp_path)]) == 2
    assert "pip install -e '.[bench]'" in capsys.readouterr().err
