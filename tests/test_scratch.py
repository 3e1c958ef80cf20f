"""Temporary folders of killed saves (cascade/scratch.py, used by dcvit.save and cascade.save): a leftover is
removed only when its owner file says a process of ours made it and that process is gone; folders of the
user next to the destination are never touched, whatever their names. Tiny models, temporary folders."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.models import small_vit
from torch import nn

import cascade
import dcvit
from cascade.scratch import OWNER, _identity

DCVIT_SUFFIX, CASCADE_SUFFIX = ".dcvit-save", ".cascade-tmp"


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has ended (a kill -9'd save looks the same to the next one)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def leftover(folder: Path, pid: int | None, **owner) -> Path:
    """A temporary folder as a save of `pid` left it (no owner file where pid is None)."""
    folder.mkdir()
    (folder / "new").mkdir()
    (folder / "new" / "half.tmp").write_bytes(b"\0")
    if pid is not None:
        (folder / OWNER).write_text(json.dumps({**_identity(pid), **owner}))
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return dcvit.save(small_vit(depth=2), tmp_path_factory.mktemp("saved") / "m")


# --- 1. dcvit.save never deletes the user's folders --------------------------------------------------
def test_save_keeps_user_folders_that_look_like_old_temporaries(saved, tmp_path):
    for name in (".m.20261207", ".m.old", ".m.k1ll3d_x"):  # a user's dated backup, a manual copy, ...
        shutil.copytree(saved, tmp_path / name)  # model files only: what older versions deleted
    dcvit.save(small_vit(depth=2), tmp_path / "m")
    dcvit.save(small_vit(depth=2), tmp_path / "m")  # the replacing path too
    assert entries(tmp_path) == [".m.20261207", ".m.k1ll3d_x", ".m.old", "m"]
    assert entries(tmp_path / ".m.20261207") == ["model.safetensors", "spec.json"]


def test_save_removes_only_temporaries_of_dead_saves(tmp_path, dead_pid):
    dead = leftover(tmp_path / f".m.abcd1234{DCVIT_SUFFIX}", dead_pid)
    live = leftover(tmp_path / f".m.live1234{DCVIT_SUFFIX}", os.getpid())
    no_owner = leftover(tmp_path / f".m.nown1234{DCVIT_SUFFIX}", None)  # not provably ours: kept
    remote = leftover(tmp_path / f".m.host1234{DCVIT_SUFFIX}", dead_pid, host=socket.gethostname() + "-other")
    reused = leftover(tmp_path / f".m.reus1234{DCVIT_SUFFIX}", os.getpid(), started="0")  # pid now another's
    other = leftover(tmp_path / f".n.abcd1234{DCVIT_SUFFIX}", dead_pid)  # another destination's
    dcvit.save(small_vit(depth=2), tmp_path / "m")
    assert not dead.exists() and not reused.exists()
    assert all(p.is_dir() for p in (live, no_owner, remote, other))


def test_save_in_progress_writes_an_owner_file_and_removes_its_folder(tmp_path, monkeypatch):
    seen = []
    real = cascade.scratch.install

    def spy(tmp, target):
        seen.append(json.loads((tmp / OWNER).read_text()))
        real(tmp, target)

    monkeypatch.setattr("dcvit.files.install", spy)
    dcvit.save(small_vit(depth=2), tmp_path / "m")
    assert seen == [_identity(os.getpid())] and entries(tmp_path) == ["m"]


def test_a_save_killed_between_the_renames_gets_the_previous_model_back(saved, tmp_path, dead_pid):
    stale = leftover(tmp_path / f".m.abcd1234{DCVIT_SUFFIX}", dead_pid)
    shutil.copytree(saved, stale / "old")  # the model that was at m, moved aside; m itself is gone
    dcvit.save(small_vit(depth=3), tmp_path / "m")
    assert entries(tmp_path) == ["m"] and len(dcvit.load(tmp_path / "m").blocks) == 3


def test_stale_owner_that_is_a_link_or_garbage_is_not_trusted(tmp_path, dead_pid):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(_identity(dead_pid)))
    linked = leftover(tmp_path / f".m.link1234{DCVIT_SUFFIX}", None)
    (linked / OWNER).symlink_to(target)
    garbage = leftover(tmp_path / f".m.garb1234{DCVIT_SUFFIX}", None)
    (garbage / OWNER).write_text("[1, 2")
    dcvit.save(small_vit(depth=2), tmp_path / "m")
    assert linked.is_dir() and garbage.is_dir()


# --- 2. cascade.save: its temporaries do not pile up --------------------------------------------------
def fake_save(module: nn.Module, folder: Path) -> None:
    folder.mkdir()
    (folder / "w.txt").write_text("member")


def two_members() -> cascade.Cascade:
    return cascade.Cascade([nn.Linear(4, 3), nn.Linear(4, 3)], [0.5], costs=[1.0, 4.0])


def test_cascade_save_removes_leftovers_of_killed_saves_only(tmp_path, dead_pid):
    killed = [leftover(tmp_path / f".c.kill000{i}{CASCADE_SUFFIX}", dead_pid) for i in range(3)]
    mine = tmp_path / f".c.mine0000{CASCADE_SUFFIX}"  # same pattern, no owner file: the user's
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    cascade.save(tmp_path / "c", two_members(), fake_save, preprocessing={"input_size": [1, 2, 2]})
    assert not any(p.exists() for p in killed)
    assert entries(tmp_path) == [mine.name, "c"] and (mine / "notes.txt").read_text() == "keep"


def test_cascade_save_leaves_nothing_behind_and_a_failed_one_neither(tmp_path):
    def broken(module, folder):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        cascade.save(tmp_path / "c", two_members(), broken, preprocessing={"input_size": [1, 2, 2]})
    assert entries(tmp_path) == []
    cascade.save(tmp_path / "c", two_members(), fake_save, preprocessing={"input_size": [1, 2, 2]})
    assert entries(tmp_path) == ["c"]
