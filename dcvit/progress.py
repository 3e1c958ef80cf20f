"""Progress for long loops: a tqdm bar on a terminal, plain log lines anywhere else.

tqdm redraws its bar with carriage returns and cursor escapes; in a redirected log (CI, nohup, `2> run.log`)
those pile up into kilobytes of noise. So a bar is drawn only when stderr is a terminal and TQDM_DISABLE is not
set; otherwise the loop logs a plain line (logger "dcvit", INFO) about every 10% or every LOG_SECONDS, which
the CLI prints as `dcvit: ...` and silences with --quiet. `bar` is the same for loops that count in steps of
their own (synthesis iterations).

The "dcvit" logger gets no handler at import (a library must not configure logging). `log_to_stderr()` gives API
users the CLI's lines; while a long API call runs with progress on and nobody configured logging (no handler on the
"dcvit" logger or its ancestors, a NullHandler counting as configured), `api_logging` lends it one for that call.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

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


class Bar:
    """A counter drawn as log lines (the redirected-stderr twin of a tqdm bar): update(n), set_postfix(...)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.done, self.postfix = total, desc, 0, ""
        self.last_time, self.last_tenth = time.monotonic(), 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now, tenth = time.monotonic(), 10 * self.done // max(self.total, 1)
        if tenth > self.last_tenth or now - self.last_time >= LOG_SECONDS:
            pct = 100 * self.done // max(self.total, 1)
            logger.info(f"{self.desc}: {self.done}/{self.total} ({pct}%){self.postfix}")
            self.last_time, self.last_tenth = now, tenth

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "".join(f" {k}={v}" for k, v in values.items())

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(total: int, desc: str) -> Any:
    """A progress counter for `total` steps: a tqdm bar on a terminal, else a Bar of log lines."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    return Bar(total, desc)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (not the one at setup), so
    redirections made later, such as test captures, are followed."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _stderr_handler() -> logging.Handler:
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("dcvit: %(message)s"))
    return handler


def log_to_stderr(level: int = logging.INFO) -> None:
    """`dcvit: ...` lines on stderr from the "dcvit" logger at `level` (INFO: progress and status lines). Calling
    it again replaces the handler instead of adding a second one."""
    for handler in [h for h in logger.handlers if isinstance(h, _CurrentStderr)]:
        logger.removeHandler(handler)
    logger.addHandler(_stderr_handler())
    logger.setLevel(level)


@contextmanager
def api_logging(enabled: bool) -> Iterator[None]:
    """For one long API call with progress on: INFO lines on stderr if nobody configured logging, so a script
    does not sit silent for minutes; the logger is given back as it was."""
    if not enabled or logger.hasHandlers():
        yield
        return
    level, handler = logger.level, _stderr_handler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
