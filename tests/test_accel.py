"""Accelerate used in full (dcvit/accel.py and its users): the prepared optimizer, Accelerate's clipping, the
precision from the environment and fixed per process, recorded in the run's settings."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.models import tiny_data, tiny_vit

import dcvit
from dcvit.accel import is_main_process
from dcvit.config import CompressConfig
from dcvit.engine import Engine

ROOT = Path(__file__).resolve().parents[1]


TESTS = Path(__file__).resolve().parent


FAST = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False
)


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter: Accelerate's per-process state starts unset there."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env = {**inherited, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- Accelerate ------------------------------------------------------------------------------------------
def test_config_precision_defaults_to_the_environment():
    assert CompressConfig().mixed_precision is None
    assert CompressConfig(mixed_precision="bf16").mixed_precision == "bf16"
    with pytest.raises(ValueError, match="mixed_precision"):
        CompressConfig(mixed_precision="fp32")


BF16_RUN = """
import math, torch
torch.set_num_threads(1)
from accelerate.state import AcceleratorState
from helpers.models import tiny_data, tiny_vit
from dcvit.config import CompressConfig
from dcvit.driver import compress

AcceleratorState._reset_state = None  # the engine must never reset Accelerate's state by hand
config = CompressConfig(epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5,
                        structure="dcvit", progress=False, mixed_precision={precision!r})
model = tiny_vit()
dtypes = set()
# copied into every student; synthesis and scoring run in float32, the fine-tunes under bf16 autocast
model.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: dtypes.add(str(o.dtype)))
result = compress(model, 0.7, tiny_data(), config)
finite = all(bool(torch.isfinite(v).all()) for v in result.model.state_dict().values())
print("RESULT", AcceleratorState().mixed_precision, "torch.bfloat16" in dtypes, finite, result.macs <= result.plan.macs_target)
try:
    compress(tiny_vit(), 0.7, tiny_data(), config.replace(mixed_precision="no"))
    print("SECOND ran")
except ValueError as err:
    print("SECOND", err)
"""


def _result_line(proc) -> list[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("RESULT", "SECOND"))]
    return lines


def test_bf16_on_cpu_compresses_to_finite_weights_and_precision_is_fixed_per_process():
    result, second = _result_line(run_python(BF16_RUN.format(precision="bf16")))
    assert result == "RESULT bf16 True True True"  # autocast really ran in bf16
    # A second run asking for another precision in the same process gets a clear error, not a hidden reset.
    assert second.startswith("SECOND") and "already runs Accelerate with mixed precision 'bf16'" in second


def test_default_precision_follows_accelerate_launch_environment():
    # `accelerate launch --mixed_precision bf16` exports ACCELERATE_MIXED_PRECISION=bf16 to the script.
    result, _ = _result_line(run_python(BF16_RUN.format(precision=None), env={"ACCELERATE_MIXED_PRECISION": "bf16"}))
    assert result == "RESULT bf16 True True True"


def test_fine_tune_steps_through_the_prepared_optimizer_and_accelerate_clipping(monkeypatch):
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    calls = {"prepare": [], "clip": 0}
    real_prepare, real_clip = Accelerator.prepare, Accelerator.clip_grad_norm_

    def prepare(self, *args, **kwargs):
        out = real_prepare(self, *args, **kwargs)
        calls["prepare"].append(out)
        return out

    def clip(self, parameters, max_norm, norm_type=2):
        calls["clip"] += 1
        return real_clip(self, parameters, max_norm, norm_type)

    monkeypatch.setattr(Accelerator, "prepare", prepare)
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip)
    model = tiny_vit()
    engine = Engine(model, tiny_data(), FAST)
    plan = dcvit.plan(model, 0.85)
    fit = engine.fine_tune(engine.build(model, plan, [1]), [1], 2, "t")
    assert math.isfinite(fit.final_loss)
    # The optimizer went through Accelerate (an fp16 loss scaler unscales before clipping and skips overflowed
    # steps there), and clipping is Accelerate's: 2 epochs x 2 batches of 8.
    assert any(isinstance(o, AcceleratedOptimizer) for o in calls["prepare"])
    assert calls["clip"] == 4


def test_the_workspace_records_the_precision_in_force():
    engine = Engine(tiny_vit(), tiny_data(), FAST)
    settings = engine._settings(engine.teacher, 16, None)
    assert settings["config"]["mixed_precision"] == engine.accelerator.mixed_precision == "no"
    assert is_main_process()
