"""imagefolder: class folders are matched to the model's classes by name where the model records names
(Fashion-MNIST's shipped models do), by number for numbered folders, else in sorted order; one log line says
which folder is which class index (issue #23: the same images scored 33.7% instead of 89.7%)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.models import tiny_vit
from PIL import Image

import dcvit
from dcvit.data import FMNIST_CLASSES, load_dataset
from dcvit.evaluation import check_classes


def folder(root, names, per_class=2):
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def named(model, names=FMNIST_CLASSES):
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": tuple(names)}
    return model


def by_folder(data):
    return {p.split("/")[-2]: t for p, t in data.samples}


def test_shipped_models_record_their_class_names():
    for name in ("fmnist_vit12", "fmnist_vit_tiny", "fmnist_cnn"):
        assert dcvit.create_model(name).pretrained_cfg["label_names"] == FMNIST_CLASSES


def test_folders_are_matched_to_the_models_class_names(tmp_path):
    data = load_dataset(f"imagefolder:{folder(tmp_path, ['Ankle_boot', 'bag', 'T-shirt_top'])}")
    line = check_classes(named(tiny_vit()), data, "D")
    assert by_folder(data) == {"Ankle_boot": 9, "bag": 8, "T-shirt_top": 0} and data.targets == [9, 9, 0, 0, 8, 8]
    assert line == "class folders matched by name: Ankle_boot -> 9, T-shirt_top -> 0, bag -> 8"
    assert check_classes(named(tiny_vit()), data, "D") == line  # once: a second check changes nothing


def test_a_folder_named_after_no_class_is_one_line(tmp_path):
    data = load_dataset(f"imagefolder:{folder(tmp_path, ['Bag', 'Boots'])}")
    with pytest.raises(ValueError, match=r"^D: class folder 'Boots' is none of the model's classes \('T-shirt/top'"):
        check_classes(named(tiny_vit()), data, "D")


def test_numbered_folders_are_those_classes(tmp_path):
    data = load_dataset(f"imagefolder:{folder(tmp_path, ['3', '1'])}")
    assert check_classes(named(tiny_vit()), data, "D") == "class folders matched by number: 1 -> 1, 3 -> 3"
    assert by_folder(data) == {"1": 1, "3": 3}
    with pytest.raises(ValueError, match="class folder '12' is class 12, but the model predicts 10"):
        check_classes(tiny_vit(), load_dataset(f"imagefolder:{folder(tmp_path / 'n', ['0', '12'])}"), "D")


def test_without_names_the_sorted_order_is_said(tmp_path):
    data = load_dataset(f"imagefolder:{folder(tmp_path, ['b', 'a'])}")
    line = check_classes(tiny_vit(), data, "D")
    assert line == "class folders matched in sorted order (the model records no class names): a -> 0, b -> 1"
    assert by_folder(data) == {"a": 0, "b": 1}
    canonical = torch.utils.data.TensorDataset(torch.zeros(2, 1, 16, 16))
    canonical.targets = [0, 1]  # a dataset with its own labels (Fashion-MNIST, CIFAR) keeps them
    assert check_classes(tiny_vit(), canonical, "D") is None


def test_eval_scores_named_folders_by_the_models_classes(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("dcvit.evaluation.throughput", lambda *args, **kwargs: 1.0)
    model = named(tiny_vit(depth=1))
    with torch.no_grad():  # always class 9, Ankle boot
        model.head.weight.zero_(), model.head.bias.fill_(-10.0), model.head.bias[9].fill_(10.0)
    path = dcvit.save(model, tmp_path / "m")  # the names travel in the model file
    data = folder(tmp_path / "d", ["Ankle_boot", "T-shirt_top"])  # sorted: Ankle_boot would be class 0
    code, out, err = run_cli(capsys, "eval", "--model", path, "--data", f"imagefolder:{data}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["top1"] == 0.5 and result["class_folders"] == {"Ankle_boot": 9, "T-shirt_top": 0}
    code, out, err = run_cli(capsys, "eval", "--model", path, "--data", f"imagefolder:{data}")
    assert code == 0 and "top-1 50.00%" in out
    assert out.strip().splitlines()[-1] == "class folders matched by name: Ankle_boot -> 9, T-shirt_top -> 0"


def test_a_model_file_with_bad_class_names_is_refused(tmp_path):
    path = dcvit.save(named(tiny_vit(depth=1)), tmp_path / "m")
    spec = json.loads((path / "spec.json").read_text())
    spec["data_config"]["label_names"] = [1, 2]
    (path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="'label_names' must be a list of at most"):
        dcvit.load(path)
