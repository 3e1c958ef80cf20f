"""Few-shot data as users hold it: a flat folder of unlabeled images (`folder:PATH`, or `imagefolder:PATH` without
class sub-folders), and tensors or lists of images passed to `dcvit.compress`."""

import numpy as np
import pytest
import torch
from helpers.models import tiny_vit
from PIL import Image

import dcvit
from dcvit.cli import main
from dcvit.config import CompressConfig
from dcvit.data import as_shots, few_shot_subset, load_dataset

SMOKE = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=4, synth_iterations=2, search_steps=1, progress=False
)


@pytest.fixture
def flat(tmp_path):
    """Twelve gray 16-pixel PNGs and JPEGs directly in a folder, plus a note that is not an image."""
    rng = np.random.default_rng(0)
    for i in range(12):
        suffix = "png" if i % 2 else "jpg"
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / f"img{i}.{suffix}")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


@pytest.mark.parametrize("kind", ["folder", "imagefolder"])
def test_a_flat_folder_gives_unlabeled_shots(flat, kind):
    train = load_dataset(f"{kind}:{flat}", train=True)
    assert len(train) == 12 and train.classes == ("unlabeled",)
    shots = few_shot_subset(f"{kind}:{flat}", 5, calibration_size=None)  # too small to hold out a split
    assert len(shots) == 5 and isinstance(shots[0][0], Image.Image)
    assert len(set(shots.indices)) == 5


def test_a_flat_folder_is_no_test_split(flat):
    with pytest.raises(ValueError, match="unlabeled images, for shots only"):
        load_dataset(f"folder:{flat}", train=False)


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no regular image files"):
        load_dataset(f"folder:{tmp_path}", train=True)


def test_tensors_and_lists_become_datasets():
    images = torch.randn(3, 1, 16, 16)
    for data in (images, list(images)):
        dataset = as_shots(data)
        assert len(dataset) == 3 and torch.equal(dataset[1][0], images[1])
    with pytest.raises(ValueError, match="N x C x H x W"):
        as_shots(torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="one shape"):
        as_shots([torch.randn(1, 16, 16), torch.randn(1, 8, 8)])
    pairs = [(images[0], 3)]
    assert as_shots(pairs) is pairs  # (image, label) pairs are a dataset already


def test_compress_takes_a_tensor_of_shots():
    result = dcvit.compress(tiny_vit(depth=3), 0.8, torch.randn(12, 1, 16, 16), SMOKE)
    assert result.model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_cli_compress_on_a_flat_folder(flat, tmp_path_factory, capsys):
    model = dcvit.save(tiny_vit(depth=3), tmp_path_factory.mktemp("m") / "m")
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["compress", "--model", model, "--data", f"folder:{flat}", "--shots", "8", "--target-macs", "0.8"]
    argv += ["--out", out, "--epochs", "1", "--trial-epochs", "1", "--synth-iterations", "2", "--quiet"]
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    assert dcvit.load(out / "model")(torch.randn(1, 1, 16, 16)).shape == (1, 10)
