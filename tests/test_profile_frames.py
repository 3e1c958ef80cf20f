"""tools/profile_frames.py: inclusive seconds per function from py-spy raw lines, OUTER/INNER pairs, own time."""

from helpers.tools import load_tool


def _tool():
    return load_tool("profile_frames")


def test_seconds_are_inclusive_and_pairs_need_the_inner_frame_below():
    lines = [
        "main (a.py:1);record (b.py:2);next (c.py:3) 40",
        "main (a.py:1);record (b.py:2);forward (d.py:4);forward (d.py:9) 20",  # recursion counts once
        "main (a.py:1);next (c.py:3);record (b.py:5) 10",  # next above record: not record/next
        "\n",
    ]
    total, found = _tool().seconds(lines, ["main", "record", "forward", "record/next", "nothing"], rate=10)
    assert total == 7.0
    assert found == {"main": 7.0, "record": 7.0, "forward": 2.0, "record/next": 4.0, "nothing": 0.0}


def test_own_time_counts_the_innermost_frame_only():
    lines = ["main (a.py:1);record (b.py:2);next (c.py:3) 40", "main (a.py:1);record (b.py:2) 10", "\n"]
    assert _tool().leaves(lines, rate=10) == {"next": 4.0, "record": 1.0}
