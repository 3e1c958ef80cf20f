"""Progress for long loops: a tqdm bar on a terminal, plain log lines anywhere else.

tqdm redraws its bar with carriage returns and cursor escapes; in a redirected log (CI, nohup, `2> run.log`)
those pile up into kilobytes of noise. So a bar is drawn only when stderr is a terminal and TQDM_DISABLE is not
set; otherwise the loop logs a plain line (logger "dcvit", INFO) about every 10% or every LOG_SECONDS, which
the CLI prints as `dcvit: ...` and silences with --quiet.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator

logger = logging.getLogger("dcvit")

LOG_SECONDS = 30.0  # a line at least this often when the total is unknown or steps are slow


def _tqdm_disabled() -> bool:
    # tqdm reads TQDM_DISABLE itself only in some versions; "0"/"false" mean "not disabled" as in tqdm.
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def interactive() -> bool:
    """True when a live bar is wanted: stderr is a terminal and TQDM_DISABLE is not set."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced or closed
        tty = False
    return tty and not _tqdm_disabled()


def progress(iterable: Iterable, desc: str, enabled: bool = True, total: int | None = None) -> Iterable:
    """`iterable` with progress: a tqdm bar on a terminal, else log lines; nothing when not enabled."""
    if not enabled:
        return iterable
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False)
    return _logged(iterable, desc, total)


def _logged(iterable: Iterable, desc: str, total: int | None) -> Iterator:
    """Yield the items, logging `desc: done/total (pct%)` at each 10% step or every LOG_SECONDS."""
    last_time, last_tenth, done = time.monotonic(), 0, 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        tenth = 10 * done // total if total else 0
        if tenth > last_tenth or now - last_time >= LOG_SECONDS:
            logger.info(f"{desc}: {done}/{total} ({100 * done // total}%)" if total else f"{desc}: {done} done")
            last_time, last_tenth = now, tenth
