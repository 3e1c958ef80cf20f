"""tools/bench_scale.py: its phase timers reach the functions each phase runs in, and its slopes and projection
are what the rows say (the 224-px cells themselves are the benchmark's)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tools import load_tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    return load_tool("bench_scale")


# In a process of its own: instrument() replaces module attributes for the rest of the process.
TIMED_COMPRESS = f"""
import json, sys, tempfile
sys.path[:0] = [{str(ROOT / "tests")!r}, {str(ROOT / "tools")!r}]
import bench_scale, dcvit
from helpers.models import tiny_data, tiny_vit
phases = bench_scale.Phases()
bench_scale.instrument(phases)
config = dcvit.CompressConfig(structure=sys.argv[1], epochs=1, trial_epochs=1, batch_size=8, synth_images=4,
                              synth_iterations=3, search_steps=2, progress=False)
with tempfile.TemporaryDirectory() as work:
    dcvit.compress(tiny_vit(depth=4), 0.6, tiny_data(), config, workdir=work + "/c", metric_cache=False)
phases.close()
print(json.dumps({{"seconds": phases.seconds, "work": phases.work}}))
"""


@pytest.mark.parametrize("structure", ["auto", "dcvit"])
def test_every_phase_of_a_compression_is_timed(structure):
    done = subprocess.run(
        [sys.executable, "-c", TIMED_COMPRESS, structure], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    timed = json.loads(done.stdout.strip().splitlines()[-1])
    assert timed["work"]["synthesis"] == 4 * 3  # images x iterations
    assert timed["work"]["trials"] > 0 and timed["work"]["fine-tuning"] > 0
    phases = ["synthesis", "trials", "fine-tuning", "saving", "macs"] + (
        ["edit scoring"] if structure == "auto" else []
    )
    assert all(timed["seconds"][p] > 0 for p in phases), timed["seconds"]


def _row(macs, shots, fraction=0.75, cpu=None):
    seconds = dict.fromkeys(("synthesis", "edit scoring", "trials", "fine-tuning", "saving", "macs", "other"), 1.0)
    return {
        "model": f"m{macs}",
        "fraction": fraction,
        "shots": shots,
        "macs_teacher": macs,
        "cpu_seconds": {**seconds, **(cpu or {})},
        "total_cpu_seconds": sum({**seconds, **(cpu or {})}.values()),
    }


def test_slopes_recover_known_power_laws(tool):
    # trials grow as MACs^1 x shots^0.5; synthesis as MACs^1 and not with shots
    rows = [_row(m, s, cpu={"trials": m * s**0.5, "synthesis": 3.0 * m}) for m in (1e9, 4e9, 16e9) for s in (16, 64)]
    by_macs, by_shots = tool.slopes(rows, "trials")
    assert by_macs == pytest.approx(1.0) and by_shots == pytest.approx(0.5)
    by_macs, by_shots = tool.slopes(rows, "synthesis")
    assert by_macs == pytest.approx(1.0) and by_shots == pytest.approx(0.0, abs=1e-12)
    assert tool.slopes([_row(1e9, 16)], "trials") == (None, None)  # one point: no slope
