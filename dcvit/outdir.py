"""Output folders: one rule for every command that writes (--out of compress, family, synth, cascade, demo).

A command writes into a new folder, an empty one, or one an earlier run of the same command made (it holds the
marker file `.dcvit-COMMAND`, which `dcvit demo` has always written), never into a folder holding anything
else: it would replace the user's files of the same names (grid.png, report.md, ...). Nor does it write into an
input folder or around one (`--data imagefolder:data --out data` would mix its files into the data).

`check_out` refuses a bad --out in one line before any slow work and creates nothing; `claim_out` makes the
folder and its marker just before the first file is written, checking again (the folder may have changed).
`refuse_existing_run` is the rule of compression runs (the CLI's, the recipes' and dcvit.compress's
checkpoints folder): a folder holding a run, begun or finished, is written again only with --resume.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .storage import os_error_line, short_path


def marker(command: str) -> str:
    return f".dcvit-{command}"


def check_out(text: str, command: str, inputs: Iterable[Path] = (), option: str = "--out") -> Path:
    """`text` as an output folder for `command`, or a one-line ValueError naming it and what is accepted."""
    if not str(text).strip():  # Path('') is the current folder
        raise ValueError(f"{option} is empty; accepted: a folder path ({_accepted(command)})")
    out = Path(text)
    try:
        _check_place(out, option)
        for folder in inputs:
            _check_apart(out, folder, option)
        _check_ours(out, command, option)
        _check_writable(out, option)
    except OSError as err:  # a name too long (ENAMETOOLONG), a loop of links, ...
        raise ValueError(f"{option} {short_path(out)}: {os_error_line(err)}") from None
    return out


def claim_out(out: Path, command: str, option: str = "--out") -> Path:
    """Create `out` (if needed) and mark it as `command`'s, right before the command writes into it; the
    place is checked again, since it may have changed during the command's work (a link left dangling)."""
    try:
        _check_place(out, option)
        out.mkdir(parents=True, exist_ok=True)
        _check_ours(out, command, option)
        (out / marker(command)).touch()
    except OSError as err:
        raise ValueError(f"{option} {short_path(out)}: {os_error_line(err)}") from None
    return out


@contextmanager
def writing_out(out: Path, command: str, option: str = "--out") -> Iterator[Path]:
    """claim_out, and if writing fails (a full disk), remove the folder again when this call created it, so a
    failed command leaves no folder of partial results behind (each file is written atomically anyway)."""
    created = not os.path.lexists(out)
    claim_out(out, command, option)
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


# What marks a folder as holding a compression run: its checkpoints (a run begun), and a finished run's outputs
# (one target's result.json and model, or a family's target-*/).
BEGUN = ("checkpoints/settings.json",)
FINISHED = ("result.json", "model", "target-*/result.json", "target-*/model")


def refuse_existing_run(
    out: Path, resume: bool, begun: Iterable[str] = BEGUN, finished: Iterable[str] = FINISHED, option: str = "--out"
) -> None:
    """Unless `resume`, a one-line ValueError when `out` holds a run: a file or folder matching a pattern
    (relative to `out`) of `finished`, or a file matching one of `begun` (a settings.json of another shape is
    the run folder's own error: dcvit.workspace). Checked before any slow work; nothing is read or written."""
    if resume:
        return
    for kind, patterns, counts in (("a finished run", finished, Path.exists), ("a run", begun, Path.is_file)):
        found = next((p for pattern in patterns for p in sorted(Path(out).glob(pattern)) if counts(p)), None)
        if found is not None:
            raise ValueError(
                f"{short_path(out)} already holds {kind} ({found.relative_to(out)}); pass --resume (resume=True in "
                f"Python) to continue it, or choose another {option}"
            )


def input_paths(data: str | None = None, models: Iterable[str] = ()) -> list[Path]:
    """The folders and files a command reads: the path of a dataset spec (KIND:PATH), and the models given
    as paths (a timm name such as fmnist_vit12 is not one, unless a file of that name is here)."""
    paths = []
    if data:
        _, sep, path = str(data).partition(":")
        if sep and path:
            paths.append(Path(path))
    return paths + [Path(m) for m in models if m and os.path.lexists(m)]


def _accepted(command: str) -> str:
    return f"a new or empty folder, or one an earlier `dcvit {command}` wrote"


def _check_place(out: Path, option: str) -> None:
    if out.is_symlink() and not out.exists():
        raise ValueError(f"{option} {short_path(out)} is a broken link; accepted: a folder path")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is an existing file, not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {out} cannot be created: {parent} is a file")


def _check_apart(out: Path, folder: Path, option: str) -> None:
    """Neither inside the other: writing into an input (or into a folder holding one) could replace it."""
    a, b = out.resolve(), folder.resolve()
    if a == b or b in a.parents or a in b.parents:
        raise ValueError(
            f"{option} {out} overlaps the input {folder}; accepted: a folder outside every input (--data, --model)"
        )


def _check_ours(out: Path, command: str, option: str) -> None:
    try:
        if not out.is_dir() or _is_marker(out / marker(command)) or not any(out.iterdir()):
            return
    except OSError as err:  # a folder we may not list
        raise ValueError(f"{option} {out} is not readable ({err.strerror or err})") from None
    raise ValueError(
        f"{option} {out} already holds files that `dcvit {command}` did not write; accepted: {_accepted(command)}"
    )


def _is_marker(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _check_writable(out: Path, option: str) -> None:
    """Probe by writing a byte to a temporary file in `out`, or in its nearest existing parent when it does
    not exist yet (so a refused run creates nothing)."""
    probe_in = out
    while not probe_in.exists():
        probe_in = probe_in.parent
    try:
        with tempfile.TemporaryFile(dir=probe_in, prefix=".dcvit-probe-") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())  # a full disk may accept the write and refuse it only here
    except OSError as err:
        raise ValueError(f"{option} {out} is not writable ({err.strerror or err})") from None
