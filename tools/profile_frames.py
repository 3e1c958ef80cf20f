#!/usr/bin/env python
"""Seconds spent inside named functions, from a py-spy raw profile (BENCHMARKS.md, "Cost at scale"):

    py-spy record -r 20 -f raw -o demo.prof -- .venv/bin/python -m dcvit demo --out /tmp/demo
    python tools/profile_frames.py demo.prof --rate 20 record_split Tensor.backward Adapter.features

A function's seconds are inclusive: every sample whose stack holds a frame of that name (a recursive frame counts
once), over the sampling rate. A name matches a frame's function name exactly (`Tensor.backward`,
`record_split`); `A/B` counts the samples holding both, A above B (e.g. `record_split/_BaseDataLoaderIter.__next__`:
decoding inside the records). `--leaves N` also prints the N functions with the most samples at the top of the stack
(the time spent in their own code: for a torch program, how much is kernels and how much is Python around them).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def _functions(stack: str) -> list[str]:
    """The function names of a raw line's stack, outermost first ("fn (file.py:12)" -> "fn")."""
    return [frame.split(" (")[0] for frame in stack.split(";")]


def seconds(lines, names: list[str], rate: float) -> tuple[float, dict[str, float]]:
    """(total seconds, {name: inclusive seconds}) of py-spy raw lines `stack count`."""
    total, found = 0, dict.fromkeys(names, 0)
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        functions, n = _functions(stack), int(count)
        total += n
        for name in names:
            outer, _, inner = name.partition("/")
            if outer in functions and (not inner or inner in functions[functions.index(outer) :]):
                found[name] += n
    return total / rate, {name: n / rate for name, n in found.items()}


def leaves(lines, rate: float) -> Counter:
    """{function name: seconds with it as the innermost frame} of py-spy raw lines."""
    found: Counter = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack:
            found[_functions(stack)[-1]] += int(count) / rate
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", type=Path, help="a py-spy `record -f raw` output")
    p.add_argument("names", nargs="*", help="function names (or OUTER/INNER pairs)")
    p.add_argument("--rate", type=float, default=20.0, help="py-spy's samples per second (-r; default 20)")
    p.add_argument("--leaves", type=int, default=0, metavar="N", help="also the N functions with most own time")
    args = p.parse_args()
    if not args.names and not args.leaves:
        p.error("give function names, --leaves N, or both")
    lines = args.profile.read_text().splitlines()
    total, found = seconds(lines, args.names, args.rate)
    print(f"{total:.1f} sampled seconds")
    for name, s in found.items():
        print(f"{s:8.1f}  {name}")
    for name, s in leaves(lines, args.rate).most_common(args.leaves):
        print(f"{s:8.1f}  {name} (own)")


if __name__ == "__main__":
    main()
