"""Every Python example in the README runs as printed (in a temporary working directory), and its training
commands are the recorded ones."""

import argparse
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README example {index}", "exec"), {"__name__": "readme"})


# --- the README's training commands are the recorded ones ------------------------------------------------
class _Parsed(Exception):
    pass


def _train_teacher_args(argv: list[str], monkeypatch) -> dict:
    """tools/train_teacher.py's own parser on argv (main() stops right after parsing)."""
    spec = importlib.util.spec_from_file_location("train_teacher", ROOT / "tools" / "train_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args
    seen = {}

    def parse(self, args=None, namespace=None):
        seen["args"] = vars(real(self, args, namespace))
        raise _Parsed

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse)
        m.setattr(sys, "argv", ["train_teacher.py", *argv])
        with pytest.raises(_Parsed):
            module.main()
    return seen["args"]


def _readme_training_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The embedded default", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_training_commands_reproduce_the_recorded_arguments(monkeypatch):
    lines = _readme_training_lines()
    runs = []  # (line index, parsed args) of each train_teacher command
    for i, line in enumerate(lines):
        words = shlex.split(line)
        if len(words) > 1 and words[1] == "tools/train_teacher.py":
            runs.append((i, _train_teacher_args(words[2:], monkeypatch)))
    weights = ROOT / "dcvit" / "models" / "weights"

    def producer(record: str) -> int:
        """Index of the last README command whose arguments equal those recorded in `record`."""
        recorded = json.loads((weights / record).read_text())["args"]
        matches = [i for i, args in runs if all(args.get(k) == v for k, v in recorded.items())]
        assert matches, f"no README command reproduces {record}: {recorded}"
        return matches[-1]

    for record in ("fmnist_vit_tiny.json", "fmnist_cnn.json"):
        producer(record)
    # The last fmnist_cnn command is the shipped one (it would otherwise overwrite the shipped CNN).
    assert producer("fmnist_cnn.json") == max(i for i, a in runs if a["model"] == "fmnist_cnn")
    # The teacher: phase 1, its record kept as .phase1.json, then phase 2 from the shipped phase-1 weights.
    phase1, phase2 = producer("fmnist_vit12.phase1.json"), producer("fmnist_vit12.json")
    keep = next(i for i, line in enumerate(lines) if "fmnist_vit12.phase1.json" in line and line.startswith("mv "))
    assert phase1 < keep < phase2
    # Phase 2 distils from a CNN that exists by then.
    assert any(a["model"] == "fmnist_cnn" and i < phase2 for i, a in runs)
