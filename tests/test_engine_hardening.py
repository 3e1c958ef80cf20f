"""Accelerate used in full (prepared optimizer, clipping, precision from the environment), custom models'
input size, the model-following synth jitter, file modes under a umask, and the README's training commands."""

import argparse
import importlib.util
import json
import math
import os
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_data, tiny_vit
from PIL import Image
from torch import nn

import dcvit
import synth
from dcvit.accel import is_main_process
from dcvit.arch import Adapter, MlpParts, register_adapter
from dcvit.config import CompressConfig
from dcvit.driver import compress
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


# --- 1. Accelerate ------------------------------------------------------------------------------------------
def test_config_precision_defaults_to_the_environment():
    assert CompressConfig().mixed_precision is None
    assert CompressConfig(mixed_precision="bf16").mixed_precision == "bf16"
    with pytest.raises(ValueError, match="mixed_precision"):
        CompressConfig(mixed_precision="fp32")


BF16_RUN = """
import math, torch
torch.set_num_threads(1)
from accelerate.state import AcceleratorState
from conftest import tiny_data, tiny_vit
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


# --- 2. the README's custom architecture --------------------------------------------------------------------
class MyBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MyViT(nn.Module):
    def __init__(self, depth=6, dim=32):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.layers = nn.Sequential(*[MyBlock(dim) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def tokens(self, x):
        return self.norm(self.layers(self.embed(x).flatten(2).transpose(1, 2)))

    def forward(self, x):
        return self.head(self.tokens(x).mean(1))


@register_adapter
class MyViTAdapter(Adapter):
    name = "my-vit"
    attention_names = ("norm1", "attn")  # what Eq. 1 counts as a block's attention
    mlp_name = "mlp"

    @classmethod
    def matches(cls, model):
        return isinstance(model, MyViT)

    def block_containers(self, model):
        return [(model.layers, i) for i in range(len(model.layers))]

    def block_paths(self, model):
        return [f"layers.{i}" for i in range(len(model.layers))]

    def mlp_parts(self, block):
        return MlpParts(block.norm2, block.mlp, nn.Identity(), nn.Identity())

    def features(self, model, x):
        return model.tokens(x)  # tokens after the final norm, before the head

    def tail_modules(self, model):
        return [model.norm, model.head]

    def input_size(self, model):
        return (3, 32, 32)

    def base_spec(self, model):
        return {"depth": len(model.layers)}  # enough to rebuild it offline

    @staticmethod
    def build(spec):
        return MyViT(depth=spec["depth"])


def _my_vit():
    torch.manual_seed(0)
    return MyViT().eval()


def test_readme_custom_vit_compresses_with_tensor_shots():
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    result = compress(_my_vit(), 0.7, data, FAST)
    assert result.macs <= result.plan.macs_target
    assert result.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_readme_custom_vit_compresses_with_pil_shots_in_the_adapters_input_space():
    gen = np.random.default_rng(0)
    data = [(Image.fromarray(gen.integers(0, 256, (40, 40, 3), dtype=np.uint8)), 0) for _ in range(8)]
    engine = Engine(_my_vit(), data, FAST)
    assert engine.images.fixed.shape == (8, 3, 32, 32)
    assert engine.metric_images.shape == (8, 3, 32, 32)  # the synthetic set at the adapter's input size
    # and in the few-shot images' normalisation (timm's default config for a model that has none)
    assert engine.metric_set.mean == pytest.approx((0.485, 0.456, 0.406))
    result = compress(_my_vit(), 0.7, data, FAST)
    assert result.macs <= result.plan.macs_target


# --- 3. synth jitter follows the model ----------------------------------------------------------------------
def _vit(img, patch, chans=1):
    torch.manual_seed(0)
    return dcvit.create_model(
        "vit_tiny_patch16_224",
        img_size=img,
        patch_size=patch,
        embed_dim=16,
        depth=1,
        num_heads=2,
        in_chans=chans,
        num_classes=10,
    ).eval()


class TorchvisionStyle(nn.Module):
    """Exposes `patch_size` as torchvision's VisionTransformer does."""

    patch_size = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 8, 8)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


QUICK = dict(iterations=2, warmup=1, progress=False)


@pytest.mark.parametrize(
    "model, size, expected",
    [
        (_vit(16, 4), None, 2 / 16),  # half a patch (2 px) is under 30/224 of 16 px
        (_vit(28, 7), None, 3 / 28),  # patch 7: 3 px, never more than half a patch (30/224 would round to 4)
        (_vit(64, 32), None, 30 / 224),  # half a patch is over the reference: the reference
        (TorchvisionStyle(), (3, 32, 32), 4 / 32),
        (
            nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)),
            (1, 12, 12),
            30 / 224,
        ),
    ],
    ids=["vit16-p4", "vit28-p7", "vit64-p32", "torchvision", "cnn"],
)
def test_synth_default_jitter_is_at_most_half_a_patch(model, size, expected):
    made = synth.synthesize(model, 2, image_size=size, **QUICK)
    assert made.config["jitter"] == pytest.approx(expected)
    assert synth.synthesize(model, 2, image_size=size, jitter=0.0, **QUICK).config["jitter"] == 0.0


def test_engine_jitter_default_stays_the_measured_one_and_none_follows_the_model():
    assert CompressConfig().synth_jitter == 1 / 28
    with pytest.raises(ValueError, match="synth_jitter"):
        CompressConfig(synth_jitter="wide")
    engine = Engine(tiny_vit(), tiny_data(), FAST.replace(synth_jitter=None))
    assert engine.metric_set.config["jitter"] == pytest.approx(2 / 16)  # tiny_vit: patch 4 at 16 px


# --- 4. files keep the umask's permissions ------------------------------------------------------------------
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_synth_files_and_grid_follow_the_umask(tmp_path, umask_022):
    made = synth.synthesize(_vit(16, 4), 3, **QUICK)
    made.save(tmp_path / "set")
    made.save(tmp_path / "set")  # replacing too
    made.save_grid(tmp_path / "set" / "grid.png")
    assert {p.name: _mode(p) for p in (tmp_path / "set").iterdir()} == {
        "tensors.safetensors": 0o644,
        "meta.json": 0o644,
        "grid.png": 0o644,
    }


def test_cascade_curves_png_follows_the_umask(tmp_path, umask_022):
    import cascade

    probs = [torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]]), torch.tensor([[0.8, 0.2], [0.1, 0.9], [0.6, 0.4]])]
    curve = cascade.sweep(probs, torch.tensor([0, 1, 1]), [1.0, 10.0])
    path = cascade.plot_curves({"little": curve}, 2 / 3, 10.0, tmp_path / "curves.png")
    assert _mode(path) == 0o644


def test_study_plots_follow_the_umask(tmp_path, umask_022):
    from dcvit.studies import plots

    a = plots.accuracy_vs_macs({"dcvit": [(1e6, 0.8), (2e6, 0.9)]}, (3e6, 0.92), tmp_path / "acc.png")
    b = plots.metric_vs_error(
        [0.1, 0.2, 0.3], [0.1, 0.2, 0.25], [1.0, 0.5, 0.7], [0, 1, 2], tmp_path / "m.png", 1.0, 0.5
    )
    assert _mode(a) == _mode(b) == 0o644


# --- 5. the README's training commands are the recorded ones ------------------------------------------------
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


def test_declared_dependencies_are_imported():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = {line.split(">")[0].split("=")[0].strip() for line in project["dependencies"]}
    sources = "\n".join(
        p.read_text() for d in ("dcvit", "synth", "cascade") for p in (ROOT / d).rglob("*.py") if p.is_file()
    )
    used = "import einops" in sources or "from einops" in sources
    assert ("einops" in requires) == used
