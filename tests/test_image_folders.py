"""imagefolder:PATH against hostile trees (dcvit/imagefolder.py): a link to a parent folder, a FIFO, links out of
the data root, a file as the root, a decompression bomb. Each returns promptly: images are read, entries that
are not regular files inside the root are left out, and what cannot be used is one line naming it."""

from __future__ import annotations

import os
import signal
import struct
import zlib

import numpy as np
import pytest
from helpers.cli import one_line_error, run_cli
from helpers.models import tiny_vit
from PIL import Image

import dcvit
from dcvit.data import load_dataset
from dcvit.imagefolder import UnreadableImageError, load_image


@pytest.fixture(autouse=True)
def no_hang():
    """A regression here would hang forever: fail after 20 s instead."""

    def hung(*args):
        raise TimeoutError("the image folder reader hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(dcvit.save(tiny_vit(depth=2), tmp_path_factory.mktemp("models") / "m"))


@pytest.fixture
def fast_throughput(monkeypatch):
    monkeypatch.setattr("dcvit.evaluation.throughput", lambda *args, **kwargs: 1.0)


def png(path, value=7):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(path)


def tree(root):
    """Two classes of two 16 x 16 gray PNGs, one in a nested folder."""
    for c in ("a", "b"):
        png(root / c / "0.png")
        png(root / c / "deep" / "1.png")
    return root


def test_same_images_and_order_as_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    root = tree(tmp_path / "d")
    png(root / "a" / "Z.PNG")
    (root / "a" / "notes.txt").write_text("not an image")
    ours, theirs = load_dataset(f"imagefolder:{root}"), ImageFolder(str(root))
    assert ours.samples == theirs.samples and ours.classes == theirs.classes and ours.targets == theirs.targets
    assert ours[0][0].mode == "RGB" and ours[0][1] == 0


def test_a_link_to_the_parent_folder_is_not_followed(capsys, tmp_path, model, fast_throughput):
    root = tree(tmp_path / "d")
    (root / "a" / "up").symlink_to("..")
    (root / "loop").symlink_to(root)  # a linked class folder is left out too
    assert len(load_dataset(f"imagefolder:{root}")) == 4
    code, out, err = run_cli(capsys, "eval", "--model", model, "--data", f"imagefolder:{root}", "--quiet")
    assert code == 0 and "(4 images)" in out, err


def test_a_fifo_is_left_out_and_never_opened(capsys, tmp_path, model, fast_throughput):
    root = tree(tmp_path / "d")
    os.mkfifo(root / "a" / "pipe.png")
    assert [p for p, _ in load_dataset(f"imagefolder:{root}").samples if "pipe" in p] == []
    code, out, err = run_cli(capsys, "eval", "--model", model, "--data", f"imagefolder:{root}")
    assert code == 0 and "(4 images)" in out and "left out 1 entries" in err, err
    with pytest.raises(UnreadableImageError, match="pipe.png: not a regular file"):
        load_image(str(root / "a" / "pipe.png"))  # what the loader does if one appears after the scan


def test_links_to_files_count_only_inside_the_data_root(tmp_path):
    root = tree(tmp_path / "d")
    png(tmp_path / "outside.png")
    (root / "a" / "in.png").symlink_to(root / "b" / "0.png")
    (root / "a" / "out.png").symlink_to(tmp_path / "outside.png")
    (root / "a" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    names = sorted(os.path.basename(p) for p, t in load_dataset(f"imagefolder:{root}").samples if t == 0)
    assert names == ["0.png", "1.png", "in.png"]


def test_a_file_as_the_data_root_is_one_line(capsys, tmp_path, model):
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    code, _, err = run_cli(capsys, "eval", "--model", model, "--data", f"imagefolder:{tmp_path / 'passwd'}")
    one_line_error(code, err, str(tmp_path / "passwd"), "is not a folder", "imagefolder:PATH takes a folder")


def test_a_class_folder_with_nothing_usable_is_one_line(capsys, tmp_path, model):
    root = tree(tmp_path / "d")
    (root / "c").mkdir()
    os.mkfifo(root / "c" / "pipe.png")
    code, _, err = run_cli(capsys, "eval", "--model", model, "--data", f"imagefolder:{root}")
    one_line_error(code, err, "class folder c has no regular image files")


def bomb_png(path, side=20000):
    """Only the header of a side x side gray PNG: PIL refuses it by its size before decoding anything."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_one_line_naming_it(capsys, tmp_path, model, fast_throughput):
    root = tree(tmp_path / "d")
    bomb = root / "a" / "0.png"  # the first image, so eval reaches it
    bomb_png(bomb)
    code, _, err = run_cli(capsys, "eval", "--model", model, "--data", f"imagefolder:{root}")
    one_line_error(code, err, "cannot read image", str(bomb), "decompression bomb")
