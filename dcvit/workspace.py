"""Checkpoints of a compression run: one folder per finished candidate or progressive step.

A step counts as done only once its meta.json exists, and that file is written last (atomically), so a run
killed at any moment resumes from the last finished step and redoes at most the one it was in.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from torch import nn

from .files import load, read_json, save, write_json


class Workspace:
    def __init__(self, root: Optional[Path], settings: dict[str, Any], resume: bool = False, is_main: bool = True):
        self.temporary = root is None
        self.root = Path(tempfile.mkdtemp(prefix="dcvit-")) if root is None else Path(root)
        settings_file = self.root / "settings.json"
        if settings_file.is_file():
            if not resume:
                raise ValueError(f"{self.root} already holds a run; pass resume=True (--resume) to continue it, "
                                 f"or choose another folder")
            saved = read_json(settings_file)
            if saved != settings:
                changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
                raise ValueError(f"cannot resume {self.root}: settings differ from the saved run ({', '.join(changed)})")
        elif is_main:
            write_json(settings_file, settings)

    @classmethod
    def existing(cls, root: Path) -> "Workspace":
        """A finished or running run's folder, to read its steps and candidates by name."""
        settings_file = Path(root) / "settings.json"
        if not settings_file.is_file():
            raise FileNotFoundError(f"{root} holds no compression run (no settings.json)")
        return cls(Path(root), read_json(settings_file), resume=True)

    def has(self, key: str) -> bool:
        return (self.root / key / "meta.json").is_file()

    def save(self, key: str, model: nn.Module, meta: dict[str, Any]) -> None:
        save(model, self.root / key / "model")
        write_json(self.root / key / "meta.json", meta)  # last: marks the step as done

    def meta(self, key: str) -> dict[str, Any]:
        return read_json(self.root / key / "meta.json")

    def load(self, key: str) -> nn.Module:
        return load(self.root / key / "model")

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
