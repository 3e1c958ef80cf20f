"""Cascades that ship: a folder with one sub-folder per member plus cascade.json (docs/method.md §9).

    CASCADE/
      cascade.json            thresholds, per-member name / kind / MACs / folder, preprocessing, info
      stage0-fmnist_cnn/      written by the caller's save_member (dcvit: dcvit.save), read by load_member
      stage1-fmnist_vit12/

The members' own format is the caller's (this package depends on torch only), so `save` takes a
save_member(module, folder) function and `load` a load_member(folder) -> module one; dcvit passes its
pickle-free model files (dcvit.cascade_files). Without one, `load` reads program files (cascade.programs:
torch.export, TorchScript, ONNX) and dcvit's model files, with the reader dcvit declares as an entry point. The folder is written atomically: everything goes into a
temporary folder next to the destination, which is renamed into place only when complete, so an error
never leaves half a cascade (a cascade already there is kept until the new one is whole). A save killed
outright leaves its temporary folder; the next save of that path removes it (cascade.scratch says how it
knows the folder is a dead save's and never the user's).
cascade.json is untrusted on load: every field is checked and a bad one fails in one line naming it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .errors import CascadeFileError
from .programs import load_member as load_program_or_dcvit_member
from .routing import Cascade
from .scratch import NEW, install, remove_stale, scratch_folder
from .validate import KEYS, preprocessing_problem

# Version 2 added "committee"; a version-1 file has none (every flag false) and still loads. A reader that
# knows only version 1 refuses a version-2 file instead of silently dropping its committee exit.
FORMAT, VERSION, SPEC = "cascade", 2, "cascade.json"
READABLE_VERSIONS = (1, 2)
KINDS = ("teacher", "compressed", "companion")
ROUTING_RULE = (
    "confidence = max softmax of the member's logits in float32; a sample leaves at the first member i with "
    "confidence >= thresholds[i]; the last member answers every sample that reaches it; a member whose "
    "committee flag is true answers with the mean of the softmax of every member run so far on that sample "
    "(its confidence is that mean's max)"
)
# What a member needs as input; the keys of timm's data config (input_size (C, H, W), normalisation, resize).
PREPROCESSING_KEYS = KEYS
SAVE_SUFFIX = ".cascade-tmp"  # the temporary folder of a save in progress: .NAME.XXXXXXXX.cascade-tmp
_FOLDER = re.compile(r"stage\d{1,3}-[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Member:
    name: str  # how the member was given, e.g. a timm name or a model folder
    kind: str  # one of KINDS: the teacher (big model), a compressed copy of it, or another companion
    macs: float  # MACs per sample
    folder: str  # sub-folder of the cascade folder


@dataclass(frozen=True)
class CascadeSpec:
    """cascade.json, checked. preprocessing: what every member expects as input (input_size, mean, ...);
    info: free-form JSON the writer added (e.g. how the thresholds were calibrated)."""

    thresholds: tuple[float, ...]
    members: tuple[Member, ...]
    preprocessing: dict[str, Any]
    info: dict[str, Any]
    committee: tuple[bool, ...] = ()  # one flag per member (cascade.routing.Committee); () reads as all false
    exit_fractions: tuple[float, ...] | None = None  # where samples left, as measured (on data named in info)

    @property
    def costs(self) -> tuple[float, ...]:
        return tuple(m.macs for m in self.members)

    @property
    def expected_macs(self) -> float | None:
        """MACs per sample at the recorded exit fractions (a member runs on every sample not answered before
        it), or None when the folder records none."""
        if self.exit_fractions is None:
            return None
        left, total = 1.0, 0.0
        for member, answered in zip(self.members, self.exit_fractions):
            total += left * member.macs
            left -= answered
        return total


def save(
    path: str | os.PathLike,
    model: Cascade,
    save_member: Callable[[nn.Module, Path], object],
    *,
    preprocessing: Mapping[str, Any],
    names: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    info: Mapping[str, Any] | None = None,
    exit_fractions: Sequence[float] | None = None,
) -> Path:
    """Write `model` (a Cascade with costs) to folder `path`; returns the path.

    save_member(module, folder) must create `folder` and write one member there. preprocessing: the input
    the members expect (keys of PREPROCESSING_KEYS; input_size (C, H, W) required). names: one per member
    (default member0, ...); kinds: one of KINDS per member (default: companions, then the teacher last).
    exit_fractions: optional, the fraction of samples each member answered on some data (say which in
    info); they give the cascade's expected MACs per sample (CascadeSpec.expected_macs).
    A folder already at `path` is replaced only if it is empty or a cascade folder.
    """
    if not isinstance(model, Cascade):
        raise ValueError(f"cascade.save takes a cascade.Cascade, got {type(model).__name__}")
    if model.costs is None:
        raise ValueError("the cascade has no costs: build it with costs=[MACs per sample of each member] to save it")
    n = len(model.models)
    names = [f"member{i}" for i in range(n)] if names is None else list(names)
    kinds = ["companion"] * (n - 1) + ["teacher"] if kinds is None else list(kinds)
    if len(names) != n or len(kinds) != n:
        raise ValueError(f"give one name and one kind per member ({n}), got {len(names)} and {len(kinds)}")
    members = [
        Member(name, kind, macs, f"stage{i}-{_slug(name)}")
        for i, (name, kind, macs) in enumerate(zip(names, kinds, model.costs))
    ]
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "routing": ROUTING_RULE,
        "thresholds": list(model.thresholds),
        "committee": list(model.committee),
        "members": [asdict(m) for m in members],
        "preprocessing": _jsonable(dict(preprocessing)),
        "info": _jsonable(dict(info or {})),
    }
    if exit_fractions is not None:
        spec["exit_fractions"] = [float(f) for f in exit_fractions]
    parse_spec(spec, "cascade to save")  # what load would refuse is refused before writing anything
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path, SAVE_SUFFIX)
    with scratch_folder(path, SAVE_SUFFIX) as tmp:
        new = tmp / NEW
        new.mkdir()  # made with the umask's permissions, unlike mkdtemp's 0700
        for member, module in zip(members, model.models):
            save_member(module, new / member.folder)
            if not (new / member.folder).is_dir():
                raise ValueError(f"save_member wrote no folder for member {member.name!r} ({member.folder})")
        (new / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
        install(tmp, path)
    return path


def load(path: str | os.PathLike, load_member: Callable[[Path], nn.Module] | None = None) -> Cascade:
    """The Cascade saved in folder `path`, members read by load_member(folder), in eval mode. Its `spec`
    attribute holds the checked cascade.json (CascadeSpec: names, kinds, MACs, preprocessing, info).
    The default load_member (cascade.programs.load_member) reads exported programs (`dcvit export`) with torch
    alone, and dcvit's model files with the reader dcvit declares (dcvit.load_cascade also checks their MACs)."""
    path = Path(path)
    spec = read_spec(path)
    load_member = load_member or load_program_or_dcvit_member
    models = []
    for m in spec.members:
        folder = path / m.folder
        if not folder.is_dir():
            raise CascadeFileError(f"{path / SPEC}: member {m.name!r} has no folder {m.folder} in {path}")
        module = load_member(folder)
        if not isinstance(module, nn.Module):
            raise CascadeFileError(f"load_member returned {type(module).__name__} for {folder}, not a torch module")
        models.append(module.eval())
    model = Cascade(models, spec.thresholds, spec.costs, spec.committee or None)
    model.spec = spec
    return model


def is_cascade_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding a cascade.json (valid or not: load says what is wrong)."""
    try:
        return (Path(path) / SPEC).is_file()
    except OSError:  # a name too long to be a path (ENAMETOOLONG) names no folder
        return False


def read_spec(path: str | os.PathLike) -> CascadeSpec:
    """cascade.json of the cascade folder `path`, checked field by field (the file may come from anyone)."""
    file = Path(path) / SPEC
    if not file.is_file():
        raise CascadeFileError(f"{path} is not a cascade folder (no {SPEC}); write one with cascade.save")
    try:
        raw = json.loads(file.read_text())
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, or absurdly deep nesting
        raise CascadeFileError(f"{file} is not valid JSON ({err})") from None
    return parse_spec(raw, str(file))


def parse_spec(raw: Any, where: str) -> CascadeSpec:
    """A CascadeSpec from decoded JSON, or a one-line CascadeFileError starting with `where`."""

    def fail(message: str) -> CascadeFileError:
        return CascadeFileError(f"{where}: {message}")

    if not isinstance(raw, dict):
        raise fail(f"must hold a JSON object, not {_kind(raw)}")
    version = raw.get("version")
    if raw.get("format") != FORMAT or type(version) is not int or version not in READABLE_VERSIONS:
        raise fail(
            f"not a cascade file (format {_short(raw.get('format'))}, version {_short(version)}; "
            f"accepted: format {FORMAT!r}, version {' or '.join(map(str, READABLE_VERSIONS))})"
        )
    for key, kind in (("members", list), ("thresholds", list), ("preprocessing", dict), ("info", dict)):
        if key not in raw:
            raise fail(f"field '{key}' is missing")
        if not isinstance(raw[key], kind):
            raise fail(f"field '{key}' must be {_kind(kind())}, not {_kind(raw[key])}")
    members = tuple(_member(m, i, fail) for i, m in enumerate(raw["members"]))
    if not members:
        raise fail("field 'members' is empty; a cascade needs at least one member")
    folders = [m.folder for m in members]
    if len(set(folders)) != len(folders):
        raise fail(f"members share a folder ({', '.join(sorted({f for f in folders if folders.count(f) > 1}))})")
    if len(raw["thresholds"]) != len(members) - 1:
        raise fail(
            f"{len(members)} members need {len(members) - 1} thresholds (the last member always answers), "
            f"got {len(raw['thresholds'])}"
        )
    thresholds = tuple(_threshold(t, i, fail) for i, t in enumerate(raw["thresholds"]))
    committee = _committee(raw, len(members), version, fail)
    fractions = _exit_fractions(raw.get("exit_fractions"), len(members), fail)
    preprocessing = _preprocessing(raw["preprocessing"], fail)
    return CascadeSpec(thresholds, members, preprocessing, raw["info"], committee, fractions)


def check_replaceable(path: str | os.PathLike) -> None:
    """Saving replaces a cascade folder or an empty folder; anything else at `path` is the user's."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink() and (not any(path.iterdir()) or is_cascade_dir(path)):
        return
    raise ValueError(
        f"refusing to write a cascade to {path}: it exists and is not a cascade folder; "
        f"choose another path or remove it"
    )


# --- checks of single fields -------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # json's true/false are bools, not numbers


def _member(raw: Any, i: int, fail) -> Member:
    if not isinstance(raw, dict):
        raise fail(f"members[{i}] must be an object, not {_kind(raw)}")
    checks = {
        "name": (lambda v: isinstance(v, str) and 0 < len(v) <= 1000, "a non-empty string"),
        "kind": (lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
        "macs": (lambda v: _number(v) and v >= 0, "a number >= 0 (MACs per sample)"),
        "folder": (
            lambda v: isinstance(v, str) and _FOLDER.fullmatch(v) is not None,
            "stageI-NAME (a plain folder name)",
        ),
    }
    for key, (test, what) in checks.items():
        if key not in raw:
            raise fail(f"members[{i}]: field '{key}' is missing")
        if not test(raw[key]):
            raise fail(f"members[{i}]: field '{key}' must be {what}, not {_short(raw[key])}")
    return Member(raw["name"], raw["kind"], float(raw["macs"]), raw["folder"])


def _threshold(value: Any, i: int, fail) -> float:
    if not _number(value) or not 0 <= value <= 1:
        raise fail(f"thresholds[{i}] must be a number in [0, 1], not {_short(value)}")
    return float(value)


def _committee(raw: dict, n: int, version: int, fail) -> tuple[bool, ...]:
    if version == 1:
        if "committee" in raw:
            raise fail("field 'committee' needs version 2; a version-1 cascade has no committee exit")
        return (False,) * n
    flags = raw.get("committee")
    if not (isinstance(flags, list) and len(flags) == n and all(type(f) is bool for f in flags)):
        raise fail(f"field 'committee' must be {n} true/false values (one per member), not {_short(flags)}")
    if flags and flags[0]:
        raise fail("committee[0] must be false: nothing runs before the first member")
    return tuple(flags)


def _exit_fractions(value: Any, n: int, fail) -> tuple[float, ...] | None:
    """Optional: n numbers in [0, 1] that sum to 1 (every sample leaves at exactly one member)."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == n and all(_number(f) and 0 <= f <= 1 for f in value)):
        raise fail(f"field 'exit_fractions' must be {n} numbers in [0, 1] (one per member), not {_short(value)}")
    if abs(sum(value) - 1) > 1e-6:
        raise fail(f"field 'exit_fractions' must sum to 1 (every sample leaves at one member), not {sum(value):.6g}")
    return tuple(float(f) for f in value)


def _preprocessing(raw: dict, fail) -> dict[str, Any]:
    """The shared rules (cascade.validate); the members' own sizes are checked where they are loaded."""
    problem = preprocessing_problem(raw)
    if problem:
        raise fail(f"preprocessing {problem}")
    return dict(raw)


# --- helpers -------------------------------------------------------------------------------------------
def _slug(name: str) -> str:
    """A plain folder name from a member name such as 'runs/vit75' or 'fmnist_cnn'."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).name or str(name)).strip("._") or "member"
    return slug[:64]


def _jsonable(obj: dict) -> dict:
    """obj with tuples as lists, refused in one line if it is not plain JSON (numbers, strings, lists, ...)."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"cascade.save: preprocessing and info must be plain JSON values ({err})") from None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number", float: "a number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."
