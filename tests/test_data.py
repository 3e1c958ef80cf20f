import gzip

import numpy as np
import pytest
import torch
from helpers.cli import one_line_error, run_cli
from helpers.models import small_vit
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


# --- Fashion-MNIST roots with bad idx files ------------------------------------------------------------
def idx(values: np.ndarray) -> bytes:
    header = bytes((0, 0, 8, values.ndim)) + np.array(values.shape, dtype=">i4").tobytes()
    return header + values.astype(np.uint8).tobytes()


def fmnist_root(root, images=None, labels=None, gz=False):
    """A root of the four idx files for 3 test and 3 train images; `images` / `labels` replace the bytes."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        for kind, data in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            good = rng.integers(0, 256, (3, 28, 28)) if kind.startswith("images") else np.array([0, 1, 9])
            raw = idx(good) if data is None else data
            name = f"{split}-{kind}" + (".gz" if gz else "")
            (root / name).write_bytes(gzip.compress(raw) if gz else raw)
    return root


def test_a_good_small_fashion_mnist_root_evaluates(capsys, tmp_path, models, monkeypatch):
    monkeypatch.setattr("dcvit.evaluation.throughput", lambda *args, **kwargs: 1.0)  # 2 s of timing
    root = fmnist_root(tmp_path / "fm", gz=True)
    code, out, err = run_cli(capsys, "eval", "--model", models[0], "--data", f"fashion-mnist:{root}", "--quiet")
    assert code == 0 and "(3 images)" in out, err


BAD_IDX = {
    "empty": (b"", None, "0 bytes"),
    "short": (b"\0\0", None, "2 bytes"),
    "truncated": (idx(np.zeros((3, 28, 28)))[:1000], None, "truncated"),
    "not-images": (idx(np.zeros((3, 28))), None, "not an idx file of 3-d"),
    "labels-short": (None, idx(np.zeros(2)), "do not match"),
    "labels-out-of-range": (None, idx(np.array([0, 1, 200])), "do not match"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_a_bad_fashion_mnist_file_is_named_in_one_line(capsys, tmp_path, models, case):
    images, labels, fragment = BAD_IDX[case]
    root = fmnist_root(tmp_path / "fm", images, labels)
    code, _, err = run_cli(capsys, "eval", "--model", models[0], "--data", f"fashion-mnist:{root}")
    one_line_error(code, err, str(root / "t10k-"), fragment)


def test_a_truncated_gz_fashion_mnist_file_is_named_in_one_line(capsys, tmp_path, models):
    root = fmnist_root(tmp_path / "fm", gz=True)
    raw = (root / "t10k-images-idx3-ubyte.gz").read_bytes()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    code, _, err = run_cli(capsys, "eval", "--model", models[0], "--data", f"fashion-mnist:{root}")
    one_line_error(code, err, str(root / "t10k-images-idx3-ubyte.gz"), "cannot be read")
