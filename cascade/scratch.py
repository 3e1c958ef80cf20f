"""Temporary folders for atomic folder writes (cascade.save here, dcvit.save in dcvit.files).

A save writes into `.NAME.XXXXXXXX<suffix>` next to NAME (sub-folder `new`) and renames it into place; the
folder it replaces goes to `old` inside the temporary folder, removed with it. A save killed with SIGKILL
cannot clean up, so each temporary folder holds an owner file naming its process (host, pid, start time):
a later save removes a leftover only when that file says it is ours and its process is gone. Nothing else
next to NAME is ever touched, whatever its name or content: it may be the user's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OWNER = ".owner.json"  # inside a temporary folder: {"host", "pid", "started"} of the process that made it
NEW, OLD = "new", "old"


@contextmanager
def scratch_folder(target: Path, suffix: str) -> Iterator[Path]:
    """A temporary folder next to `target` with our owner file, removed when the block ends (success or not)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    try:
        (tmp / OWNER).write_text(json.dumps(_identity(os.getpid())))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install(tmp: Path, target: Path) -> None:
    """Rename tmp/new onto `target`; what was at `target` goes to tmp/old (removed with tmp)."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp / NEW, target)
        return
    os.replace(target, tmp / OLD)
    try:
        os.replace(tmp / NEW, target)
    except OSError:
        os.replace(tmp / OLD, target)  # put the previous folder back rather than lose it with tmp
        raise


def remove_stale(target: Path, suffix: str) -> None:
    """Remove the temporary folders that killed saves of `target` left: ours by name and owner file, and
    their process gone. A save killed between the two renames of `install` left the previous folder in
    tmp/old and nothing at `target`: that folder is moved back first."""
    name = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}" + re.escape(suffix))
    for entry in target.parent.iterdir():
        if name.fullmatch(entry.name) and _abandoned(entry):
            _recover(entry, target)
            shutil.rmtree(entry, ignore_errors=True)


def _recover(tmp: Path, target: Path) -> None:
    old = tmp / OLD
    if old.is_dir() and not old.is_symlink() and not (target.exists() or target.is_symlink()):
        try:
            os.replace(old, target)
        except OSError:  # another save recovered it meanwhile
            pass


def _abandoned(folder: Path) -> bool:
    """Whether `folder` is a real folder whose owner file names a process of this host that has ended."""
    owner = folder / OWNER
    try:
        if folder.is_symlink() or not folder.is_dir() or not stat.S_ISREG(owner.lstat().st_mode):
            return False
        record = json.loads(owner.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("host") != socket.gethostname():
        return False  # a process of another host (shared file system) cannot be checked from here
    pid = record.get("pid")
    return type(pid) is int and pid > 0 and not _alive(pid, record.get("started"))


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    # the pid may since have been given to another process: then its start time differs
    now = _identity(pid)["started"]
    return started is None or now is None or now == started


def _identity(pid: int) -> dict:
    return {"host": socket.gethostname(), "pid": pid, "started": _start_time(pid)}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc); None where it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) onwards
    return fields[19] if len(fields) > 19 else None  # field 22, starttime
