import pytest
import torch
from conftest import small_vit
from PIL import Image

import dcvit
from dcvit.data import (
    calibration_indices,
    eval_transform,
    few_shot_indices,
    few_shot_subset,
    load_dataset,
    targets_of,
    train_transform,
    unlabeled_subset,
)


def test_fashion_mnist_is_real_and_complete():
    train, test = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", train=False)
    assert (len(train), len(test)) == (60000, 10000)
    image, label = test[0]
    assert image.size == (28, 28) and image.mode == "L" and label == 9  # the first test image is an ankle boot
    assert torch.bincount(targets_of(train)).tolist() == [6000] * 10


def test_transforms_follow_the_model_data_config():
    gray = dcvit.create_model("fmnist_vit12")
    rgb = small_vit(img=32)
    image = load_dataset("fashion-mnist", train=False)[0][0]
    assert eval_transform(gray)(image).shape == (1, 28, 28)
    assert eval_transform(rgb)(image).shape == (3, 32, 32)  # gray data resized and converted for an RGB model
    torch.manual_seed(0)
    assert train_transform(gray)(image).shape == (1, 28, 28)


def test_few_shot_sampling_is_seeded_distinct_and_reference_shaped():
    targets = load_dataset("fashion-mnist").targets
    a, b, c = (few_shot_indices(targets, 100, seed=s) for s in (2021, 2021, 2022))
    assert a == b != c and len(set(a)) == 100
    per_class = torch.bincount(targets[few_shot_indices(targets, 1000, seed=0)])
    assert per_class.tolist() == [100] * 10  # from 1000 shots on: the same number per class


def test_calibration_split_is_disjoint_from_shots():
    subset = few_shot_subset("fashion-mnist", 500, seed=3, calibration_size=5000)
    calib = set(calibration_indices(60000, 5000, seed=3))
    assert not calib & set(subset.indices) and len(calib) == 5000


def test_refinement_images_avoid_the_shots_and_the_calibration_split():
    shots = set(few_shot_subset("fashion-mnist", 100, seed=3, calibration_size=5000).indices)
    calib = set(calibration_indices(60000, 5000, seed=3))
    extra = unlabeled_subset("fashion-mnist", 2000, seed=3, calibration_size=5000, shots=100).indices
    assert len(set(extra)) == 2000 and not set(extra) & (shots | calib)
    assert extra == unlabeled_subset("fashion-mnist", 2000, seed=3, calibration_size=5000, shots=100).indices


@pytest.mark.parametrize(
    "spec,error",
    [
        ("mnist", ValueError),
        ("imagefolder", ValueError),
        ("imagefolder:/no/such/dir", FileNotFoundError),
        ("cifar10:/tmp", FileNotFoundError),
    ],
)
def test_bad_specs(spec, error):
    with pytest.raises(error):
        load_dataset(spec)


def test_imagefolder_empty_and_too_many_shots(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    for cls in ("a", "b"):
        (tmp_path / "ok" / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "ok" / "train" / cls / f"{i}.png")
    assert len(few_shot_subset(f"imagefolder:{tmp_path / 'ok'}", 6)) == 6
    with pytest.raises(ValueError, match="between 1 and 6"):
        few_shot_subset(f"imagefolder:{tmp_path / 'ok'}", 7)
    with pytest.raises(FileNotFoundError, match="no val"):
        load_dataset(f"imagefolder:{tmp_path / 'ok'}", train=False)
