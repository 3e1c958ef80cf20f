"""Argument checks of the Python API (CompressConfig, plan, few_shot_subset): one-line ValueErrors that name
the argument, the bad value and what is accepted, raised where the value is given, not where it is used.

Integers are any `numbers.Integral` but bool (numpy integers included), numbers any `numbers.Real` but bool;
strings are never numbers. Each refusal is an ArgumentError, a ValueError that also names the argument, so
the CLI can name its own flag instead (`calibration_size` -> --calibration-size, dcvit.cli.main).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

SEED_LIMIT = 2**63  # torch takes seeds below 2**64; derived seeds add offsets (10_007 + seed): keep a margin


class ArgumentError(ValueError):
    """A refused argument: the message begins with `what` (e.g. "CompressConfig.seed"); `argument` is its name
    ("seed")."""

    def __init__(self, what: str, message: str):
        super().__init__(message)
        self.what = what
        self.argument = what.rsplit(".", 1)[-1]


def _refuse(what: str, accepted: str, value: Any) -> ArgumentError:
    return ArgumentError(what, f"{what} must be {accepted}; got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def integer(what: str, value: Any, lo: int | None = None, hi: int | None = None, note: str = "") -> int:
    """`value` as an int within [lo, hi] (either bound optional); `note` follows the range in the message."""
    if lo is not None and hi is not None:
        accepted = f"an integer between {lo} and {hi}"
    elif lo is not None:
        accepted = f"an integer >= {lo}"
    else:
        accepted = "an integer"
    if not is_integer(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _refuse(what, accepted + note, value)
    return int(value)


def optional_integer(what: str, value: Any, lo: int | None = None, hi: int | None = None) -> int | None:
    if value is None:
        return None
    try:
        return integer(what, value, lo, hi)
    except ArgumentError as err:
        raise ArgumentError(what, str(err).replace("; got", " or None; got", 1)) from None


def number(what: str, value: Any, accepted: str, test) -> float:
    """`value` as a float that passes `test` (NaN never does); `accepted` says what passes, in words."""
    if not isinstance(value, Real) or isinstance(value, bool) or math.isnan(value) or not test(float(value)):
        raise _refuse(what, accepted, value)
    return float(value)


def flag(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _refuse(what, "True or False", value)
    return value


def choice(what: str, value: Any, options: Iterable[Any]) -> Any:
    options = tuple(options)
    if not isinstance(value, (str, type(None))) or value not in options:
        raise _refuse(what, f"one of {options}", value)
    return value


def seed(what: str, value: Any) -> int:
    if not is_integer(value) or not 0 <= value < SEED_LIMIT:
        raise _refuse(what, "an integer from 0 to 2**63 - 1", value)
    return int(value)


def seed_text(text: str) -> int:
    """argparse type of --seed: an integer from 0 to 2**63 - 1 (argparse names the flag in its message)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: an integer from 0 to 2**63 - 1")
    return value
