"""README's architecture coverage table is what tools/coverage.py measures, family by family: every supported
family plans within 1% of 75%, compresses, saves and loads exactly, drops blocks, scripts and exports; parallel
blocks are refused in one line."""

import functools

import pytest
from helpers.tools import load_tool

coverage = load_tool("coverage", module="coverage_tool")  # not the coverage package


@functools.cache
def measured(name: str) -> dict[str, str]:
    """tools/coverage.py's row for the family `name`, measured once per process (in any test order)."""
    return coverage.check_family(next(f for f in coverage.FAMILIES if f.name == name))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script's deprecation notice
@pytest.mark.parametrize("family", coverage.FAMILIES, ids=lambda f: f.name)
def test_family_passes_every_check(family):
    row = measured(family.name)
    if "parallel" in family.name:
        assert set(row.values()) == {"refused in one line"}
    else:
        assert row["plan 75%"].startswith("yes") and all(row[c] == "yes" for c in coverage.COLUMNS[1:]), row


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_readme_table_is_the_measured_one():
    readme = coverage.readme_table(coverage.README.read_text())
    rows = {f.name: measured(f.name) for f in coverage.FAMILIES}
    assert readme == coverage.table(rows), "README's table is stale: run python tools/coverage.py --write"
