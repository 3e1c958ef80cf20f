"""Loading a script of tools/ (not a package) as a module, for the tests of the benchmarks and tools."""

import importlib.util
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str, module: str | None = None):
    """tools/NAME.py as the module `module` (default NAME; choose another where NAME is an installed package's,
    e.g. coverage). It is registered in sys.modules, where a tool's dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(module or name, TOOLS / f"{name}.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded
