"""Checkpoints of a compression run: one folder per finished candidate or progressive step.

A step counts as done only once its meta.json exists, and that file is written last (atomically), so a run
killed at any moment resumes from the last finished step and redoes at most the one it was in.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from .files import load, save
from .storage import read_json_object, write_json

# settings.json's "format" (Engine writes it): bumped whenever what the settings fingerprint changes, so a folder
# of an older format is never resumed.
FORMAT = 2


def _differences(saved: dict, settings: dict) -> list[str]:
    """The keys whose values differ, one level into nested dicts (config.lr rather than config)."""
    names = []
    for k in sorted(set(saved) | set(settings)):
        a, b = saved.get(k), settings.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            names += [f"{k}.{sub}" for sub in _differences(a, b)]
        elif a != b:
            names.append(k)
    return names


def _check_layout(root: Path, settings_file: Path) -> None:
    """A run folder whose checkpoints folder is a file, or whose settings.json is not a file, is nothing this
    package wrote: say so in one line rather than fail on the first write."""
    accepted = "accepted: a new folder, or a run folder written by dcvit (a checkpoints folder holding settings.json)"
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} should be the run's checkpoints folder but is a file; {accepted}")
    if settings_file.exists() and not settings_file.is_file():
        raise ValueError(f"{settings_file} is not a file (a folder?); {accepted}")


_UNREADABLE_RUN = "this run cannot be resumed: start a new one in another folder"


class Workspace:
    def __init__(self, root: Path | None, settings: dict[str, Any], resume: bool = False, is_main: bool = True):
        self.temporary = root is None
        # A folder this run made and finished no step in is removed again on failure (see cleanup).
        self.created = root is not None and is_main and not Path(root).exists()
        self.finished = False
        self.root = Path(tempfile.mkdtemp(prefix="dcvit-")) if root is None else Path(root)
        settings_file = self.root / "settings.json"
        _check_layout(self.root, settings_file)
        if settings_file.is_file():
            if not resume:
                raise ValueError(
                    f"{self.root} already holds a run; pass resume=True (--resume) to continue it, "
                    f"or choose another folder"
                )
            saved = read_json_object(settings_file, _UNREADABLE_RUN)
            if saved != settings:
                changed = _differences(saved, settings)
                raise ValueError(
                    f"cannot resume {self.root}: settings differ from the saved run ({', '.join(changed)})"
                )
        elif is_main:
            try:
                write_json(settings_file, settings)
            except BaseException:  # a full disk: leave no empty run folder behind
                self.cleanup()
                raise

    @classmethod
    def existing(cls, root: Path) -> Workspace:
        """A finished or running run's folder, to read its steps and candidates by name."""
        settings_file = Path(root) / "settings.json"
        if not settings_file.is_file():
            raise FileNotFoundError(f"{root} holds no compression run (no settings.json)")
        return cls(Path(root), read_json_object(settings_file, _UNREADABLE_RUN), resume=True)

    def has(self, key: str) -> bool:
        return (self.root / key / "meta.json").is_file()

    def save(self, key: str, model: nn.Module, meta: dict[str, Any]) -> None:
        save(model, self.root / key / "model")
        write_json(self.root / key / "meta.json", meta)  # last: marks the step as done
        self.finished = True

    def meta(self, key: str) -> dict[str, Any]:
        remedy = f"delete the folder {self.root / key} to redo that step, or start a new run"
        return read_json_object(self.root / key / "meta.json", remedy)

    def load(self, key: str) -> nn.Module:
        return load(self.root / key / "model")

    def cleanup(self) -> None:
        """Called when the run ends, finished or failed. A folder this run created but finished no step in
        holds nothing worth resuming; left behind, its settings.json would refuse a corrected rerun."""
        if self.temporary or (self.created and not self.finished):
            shutil.rmtree(self.root, ignore_errors=True)
