"""The house rules: synth/ and cascade/ depend on torch only, dcvit's modules import each other without
circles, the package face stays light (the public names are imported on first use), and the sdist carries what
the README links to."""

import ast
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCH_ONLY = {"torch", "numpy", "safetensors", "tqdm", "PIL", "matplotlib", "scipy"}


# Imported inside a function, only for the files that need them: cascade.programs reads dcvit's model files with
# dcvit and ONNX programs with onnxruntime (a cascade folder of exported pt2 / TorchScript programs needs neither).
OPTIONAL = {"cascade": {"dcvit", "onnxruntime"}, "synth": set()}


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Top-level names of every module a file imports (relative imports resolved to 'dcvit' etc.); with
    top_level_only, the imports outside functions (what importing the file imports)."""
    tree = ast.parse(path.read_text())
    lazy = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    names = set()
    for node in ast.walk(tree):
        if top_level_only and id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["synth", "cascade"])
def test_synth_and_cascade_depend_on_torch_only(package):
    allowed = TORCH_ONLY | set(sys.stdlib_module_names) | {package}
    for path in (ROOT / package).glob("*.py"):
        outside = {n.split(".")[0] for n in imports(path, top_level_only=True)} - allowed
        assert not outside, f"{path.name} imports {sorted(outside)}"
        outside = {n.split(".")[0] for n in imports(path)} - allowed - OPTIONAL[package]
        assert not outside, f"{path.name} imports {sorted(outside)}, even in a function"


def module_graph() -> dict[str, set[str]]:
    """dcvit module -> the dcvit modules it imports (relative imports resolved against its package)."""
    graph = {}
    for path in (ROOT / "dcvit").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = parts[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join((*base, *(node.module.split(".") if node.module else ())))
                # `from . import x` names submodules
                edges |= {f"{target}.{a.name}" for a in node.names} if not node.module else {target}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dcvit"):
                edges.add(node.module)
        graph[module] = edges
    return {m: {e for e in edges if e in graph and e != m} for m, edges in graph.items()}


def test_dcvit_modules_import_each_other_without_circles():
    graph = module_graph()
    state = {}

    def visit(module, trail):
        if state.get(module) == "open":
            raise AssertionError("import circle: " + " -> ".join(trail[trail.index(module) :] + [module]))
        if state.get(module) == "done":
            return
        state[module] = "open"
        for target in sorted(graph[module]):
            if target != "dcvit":  # the package face imports lazily (see the next test)
                visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_structures_are_found_through_the_registry_only():
    """The generic code imports the registry, never a structure module; a structure module imports the code
    below it (planning, surgery, the search) but not the config or the run's entry points, which look it up:
    the registry imports it on the first lookup, which may come while those are loading."""
    graph = module_graph()
    structures = {m for m in graph if m.startswith("dcvit.structures.")}
    for module, targets in graph.items():
        if not module.startswith("dcvit.structures"):
            assert not targets & structures, f"{module} imports {sorted(targets & structures)}"
    above = ("dcvit.config", "dcvit.driver", "dcvit.engine", "dcvit.mimic", "dcvit.cli")
    code = (
        f"import sys; import {', '.join(sorted(structures))}; "
        f"loaded = [m for m in {above!r} if m in sys.modules]; assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_dcvit_is_light_and_exposes_the_main_job():
    code = (
        "import sys, dcvit; heavy = [m for m in ('dcvit.driver', 'dcvit.engine', 'accelerate', 'fvcore') "
        "if m in sys.modules]; assert not heavy, heavy; "
        "dcvit.compress; dcvit.compress_family; dcvit.CompressConfig; import dcvit.planning; dcvit.planning.Plan"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_typed_face_imports_every_public_name():
    """dcvit/__init__.py imports each name of its lazy table under TYPE_CHECKING, so type checkers see them."""
    tree = ast.parse((ROOT / "dcvit" / "__init__.py").read_text())
    table = next(
        n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_EXPORTS"
    )
    exports = {k.value: v.value for k, v in zip(table.keys, table.values)}
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    typed = {a.name: node.module for node in guarded.body for a in node.names}
    assert typed == exports


def _manifest_covers(path: str, rules: list[list[str]]) -> bool:
    """Whether `path` (relative, with /) is in the sdist: a package module, or matched by MANIFEST.in's include /
    recursive-include rules."""
    if path.endswith(".py") and path.split("/", 1)[0] in ("dcvit", "synth", "cascade"):
        return True
    for command, *args in rules:
        if command == "include" and path in args:
            return True
        if command == "recursive-include" and path.startswith(args[0].rstrip("/") + "/"):
            if any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in args[1:]):
                return True
    return False


def test_the_sdist_carries_every_file_the_readme_links_to():
    """An index page renders README.md from the sdist: a linked file or image missing from it is a broken link
    (docs/frontier.png was). Packages' modules are added by setuptools; everything else must be in MANIFEST.in."""
    rules = [line.split() for line in (ROOT / "MANIFEST.in").read_text().splitlines() if line.split()]
    rules = [r for r in rules if not r[0].startswith("#")]
    assert {r[0] for r in rules} <= {"include", "recursive-include"}, "a rule this check cannot read"
    for doc in ("README.md", "BENCHMARKS.md"):
        assert _manifest_covers(doc, rules)
        links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / doc).read_text())
        local = {link.split("#")[0] for link in links if "://" not in link and not link.startswith("#")}
        assert "docs/frontier.png" in local or doc != "README.md"
        for path in sorted(local):
            assert (ROOT / path).exists(), f"{doc} links to {path}, which does not exist"
            assert _manifest_covers(path, rules), f"{doc} links to {path}, which the sdist leaves out (MANIFEST.in)"


def test_declared_dependencies_are_imported():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = {line.split(">")[0].split("=")[0].strip() for line in project["dependencies"]}
    sources = "\n".join(
        p.read_text() for d in ("dcvit", "synth", "cascade") for p in (ROOT / d).rglob("*.py") if p.is_file()
    )
    used = "import einops" in sources or "from einops" in sources
    assert ("einops" in requires) == used
