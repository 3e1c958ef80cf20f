"""Checkpoints of a compression run: one folder per finished candidate or progressive step.

A step counts as done only once its meta.json exists, and that file is written last (atomically), so a run
killed at any moment resumes from the last finished step and redoes at most the one it was in. The folders'
names are spelled here only (the `*_key` methods): a resumed run, and the demo reading a finished one, find
them by these names, so a change to one would orphan every existing run's checkpoints.

Under `accelerate launch` the main process creates the folder and does the checkpointed work first; the
others join afterwards and read its checkpoints (`Workspace.shared`, `main_first`, `main_only`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from .files import load, save
from .outdir import refuse_existing_run
from .storage import read_json_object, write_json

METRIC_SET = "metric_set"  # the synthetic metric set's folder in the run folder (Engine._metric_set)
STEP_FILES = {"model", "meta.json"}  # what Workspace.save writes per candidate or step

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
T = TypeVar("T")


class Workspace:
    def __init__(self, root: Path | None, settings: dict[str, Any], resume: bool = False, is_main: bool = True):
        self.accelerator = None  # set by `shared`; None: this process alone
        self.temporary = root is None
        # A folder this run made and finished no step in is removed again on failure (see cleanup).
        self.created = root is not None and is_main and not Path(root).exists()
        self.finished = False
        self.root = Path(tempfile.mkdtemp(prefix="dcvit-")) if root is None else Path(root)
        settings_file = self.root / "settings.json"
        _check_layout(self.root, settings_file)
        refuse_existing_run(self.root, resume, begun=("settings.json",), finished=(), option="folder")
        if settings_file.is_file():
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
    def shared(cls, root: Path | None, settings: dict[str, Any], resume: bool, accelerator) -> Workspace:
        """The run's folder on every process of `accelerator`: the main process creates (or checks) it first;
        the others join it afterwards. A multi-process run needs a folder all of them see."""
        if accelerator.num_processes > 1 and root is None:
            raise ValueError("a multi-process run needs a shared workdir (--out) for its candidates")
        workspace = cls(root, settings, resume) if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        workspace = workspace or cls(root, settings, resume=True, is_main=False)
        workspace.accelerator = accelerator
        return workspace

    def main_first(self, work: Callable[[], T]) -> T:
        """`work` on the main process, then, once it is done, on the others: work that checkpoints its steps
        here thus runs once, and the others only read the main process's checkpoints."""
        acc = self.accelerator
        if acc is None or acc.num_processes == 1:
            return work()
        if acc.is_main_process:
            result = work()
        acc.wait_for_everyone()
        if not acc.is_main_process:
            result = work()
        return result

    def main_only(self, work: Callable[[], object]) -> None:
        """`work` on the main process only; the others wait until it is done (then read what it wrote)."""
        if self.accelerator is None or self.accelerator.is_main_process:
            work()
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # --- checkpoint names --------------------------------------------------------------------------------
    @staticmethod
    def trial_key(structure: str, plan, block: int) -> str:
        """A block-wise trial of the paper's structure or the baseline: `block` edited as `plan` says."""
        return f"trial-{structure}-b{block}-h{plan.mlp_hidden}-a{int(plan.remove_attention)}"

    @staticmethod
    def step_key(structure: str, plan, blocks: Sequence[int], progressive: bool) -> str:
        """A progressive step (`blocks` compressed, in order), or the top-k / baseline's one step."""
        mode = "prog" if progressive else "topk"
        return f"{mode}-{structure}-h{plan.mlp_hidden}-a{int(plan.remove_attention)}-" + "-".join(map(str, blocks))

    @staticmethod
    def search_trial_key(structure: str, block: int, attention: bool, units: int, heads: int | None) -> str:
        """A structure search's trial of one edit of the teacher (shared by a family's targets)."""
        key = f"{structure}-trial-b{block}-a{int(attention)}-u{units}"
        return key + (f"-h{heads}" if heads is not None else "")

    @staticmethod
    def search_step_seed(structure: str, macs_target: int, index: int) -> str:
        """The name a structure search's step `index` draws its fine-tune seed from (dcvit.engine.derived_seed):
        its key before the key held the steps and candidates, kept so every member made since stays the same."""
        return f"{structure}-{macs_target}-step{index}"

    @staticmethod
    def search_step_key(structure: str, macs_target: int, index: int, steps: int, candidates: Sequence[int]) -> str:
        """A structure search's step `index` of `steps` towards `macs_target` over the `candidates` blocks (a
        checksum): two plans of one family that differ in any of them never share a step."""
        seed = Workspace.search_step_seed(structure, macs_target, index)
        return f"{seed}of{steps}-c{_checksum(','.join(map(str, candidates)))}"

    @staticmethod
    def final_seed(structure: str, macs: int, epochs: int) -> str:
        """The name the final recovery draws its fine-tune seed from: its key before the key held the plan."""
        return f"final-{structure}-{macs}-e{epochs}"

    @staticmethod
    def final_key(structure: str, macs: int, epochs: int, plan: dict) -> str:
        """The final recovery (dcvit.driver.final_recovery) of a `structure` result of `macs` MACs made by the
        plan with the fields `plan` (a checksum): plans of one family whose results reach the same MACs (other
        candidate blocks, built by hand) never share it."""
        fields = json.dumps(plan, sort_keys=True, default=str)
        return f"{Workspace.final_seed(structure, macs, epochs)}-p{_checksum(fields)}"

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


def _checksum(text: str) -> str:
    """A short stable checksum for a checkpoint name (crc32, 8 hex digits): names stay readable, and two
    plans that differ get different names."""
    return f"{zlib.crc32(text.encode()):08x}"


def _ours(entry: Path) -> bool:
    """A folder this package wrote into a run folder: a candidate or step (model + meta.json), or the synthetic
    metric set (synth's files). Anything else (a user's file, a folder holding more) is not."""
    if entry.is_symlink() or not entry.is_dir():
        return False
    names = {p.name for p in entry.iterdir()}
    if entry.name == METRIC_SET:
        import synth.synthetic_set as made

        return bool(names) and names <= {made.META_FILE, made.TENSORS_FILE}
    return "model" in names and names <= STEP_FILES and (entry / "model").is_dir()


def remove_checkpoints(root: str | Path) -> int:
    """Delete a finished run's checkpoints in `root` (what `dcvit compress --clean` does after success): its
    settings.json, candidate and step folders, and the synthetic metric set. Only what a run writes goes; any
    other file stays, and so does `root` unless it ends empty. Returns how many entries were removed."""
    root = Path(root)
    settings = root / "settings.json"
    if not settings.is_file() or settings.is_symlink():  # not a run folder: nothing here is ours to delete
        return 0
    removed = 0
    for entry in sorted(root.iterdir()):
        if _ours(entry):
            shutil.rmtree(entry)
            removed += 1
    settings.unlink()
    if not any(root.iterdir()):
        root.rmdir()
    return removed + 1
