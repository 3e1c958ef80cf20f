"""evaluate (top-1 / top-5 on a dataset): an empty loader is a one-line ValueError. eval_batches decodes a small
split once (the same batches as the loader, so the same results) and leaves a big one to the loader."""

import pytest
import torch
from helpers.models import tiny_vit
from torch.utils.data import Dataset

import dcvit
import dcvit.evaluation
from dcvit.evaluation import eval_batches, loader_for


class Counted(Dataset):
    """Seeded random images whose decoding is counted."""

    def __init__(self, n: int):
        self.images = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        self.decoded = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.decoded += 1
        return self.images[i] * 2, i % 10


def test_evaluate_on_an_empty_loader_is_a_value_error():
    with pytest.raises(ValueError, match="no images.*accepted: a loader"):
        dcvit.evaluate(tiny_vit(1), [], progress=False)


def test_a_small_split_is_decoded_once_into_the_loaders_batches():
    data = Counted(70)
    batches = eval_batches(data, batch_size=32, limit=50)
    decoded = data.decoded
    model = tiny_vit(1)
    first = dcvit.evaluate(model, batches, progress=False)
    second = dcvit.evaluate(model, batches, progress=False)
    assert data.decoded == decoded <= 51  # the batches and one look at the first image; evaluating decodes none
    expected = list(loader_for(data, 32, 50))
    assert [len(y) for _, y in batches] == [32, 18]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, expected))
    assert first == second == dcvit.evaluate(model, loader_for(data, 32, 50), progress=False)


def test_a_split_over_the_memory_budget_stays_a_loader(monkeypatch):
    monkeypatch.setattr(dcvit.evaluation, "IN_MEMORY_BYTES", 50 * 16 * 16 * 4 - 1)
    data = Counted(50)
    assert isinstance(eval_batches(data, batch_size=32), torch.utils.data.DataLoader)
    assert data.decoded <= 1
