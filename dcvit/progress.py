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


def duration(seconds: float) -> str:
    """A time span as a person reads it: 42s, 3m05s, 1h02m."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class RunClock:
    """A whole run's elapsed time and an estimate of what is left, logged after each unit of work is done.

    The units are fine-tuning epochs, which dominate a compression run: the plan adds them (plan), the run takes
    out those it will not spend (skip: a checkpoint has them, another process does them) and counts those it
    spent (advance). What is left is the remaining units at the rate measured since planning, so the overhead
    between fine-tunes (scoring, surgery) is in the rate too. A run whose work is unknown logs the elapsed time."""

    def __init__(self, start: float, enabled: bool = True):
        self.start, self.enabled = start, enabled
        self.planned: int | None = 0
        self.done = 0
        self.since: float | None = None

    def plan(self, units: int | None) -> None:
        """Add planned units; None: this work cannot be told in advance (no estimate from now on)."""
        self.planned = None if units is None or self.planned is None else self.planned + units
        if self.since is None:
            self.since = time.perf_counter()

    def skip(self, units: int) -> None:
        if self.planned is not None:
            self.planned = max(self.planned - units, self.done)

    def advance(self, units: int) -> None:
        self.done += units
        if self.enabled:
            logger.info(self.line())

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def line(self) -> str:
        """`run: 40% of the fine-tuning done, 1m05s elapsed, about 1m38s left`."""
        elapsed = f"{duration(self.elapsed())} elapsed"
        if not self.planned or self.since is None or not self.done:
            return f"run: {elapsed}"
        if self.done >= self.planned:
            return f"run: all planned fine-tuning done, {elapsed}"
        share = self.done / self.planned
        left = (time.perf_counter() - self.since) / self.done * max(self.planned - self.done, 0)
        return f"run: {100 * share:.0f}% of the fine-tuning done, {elapsed}, about {duration(left)} left"


class _FirstLine(logging.Filter):
    """Holds a command's first line (device, processes, precision) until the command logs anything else, so that
    a bad input refused before any work stays a one-line error; a command that logs nothing else gets it at its
    end (release). Inert while nothing is held."""

    def __init__(self) -> None:
        super().__init__()
        self.held: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        line, self.held = self.held, None
        if line is not None:
            logger.info(line)  # passes this filter with nothing held, before the record that released it
        return True


_first_line = _FirstLine()


def hold_first_line(line: str) -> None:
    """Log `line` just before the next line of the "dcvit" logger (or at release_first_line)."""
    if _first_line not in logger.filters:
        logger.addFilter(_first_line)
    _first_line.held = line


def release_first_line(emit: bool) -> None:
    """The command ended: log a line still held if it succeeded (emit), drop it if it failed."""
    line, _first_line.held = _first_line.held, None
    if emit and line is not None:
        logger.info(line)


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
