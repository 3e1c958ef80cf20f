"""Adapter plugins: a custom architecture's adapter lives in the user's module, and works from `dcvit --import
MODULE`, from an installed package's `dcvit.adapters` entry point (loaded on the first failed lookup), and
`dcvit.load` of its file without the plugin says in one line what to import. The fresh-process tests run the
plugin from a temporary folder on PYTHONPATH, as a user would; the README's custom architecture compresses."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import small_vit
from PIL import Image
from torch import nn

import dcvit
from dcvit import arch
from dcvit.arch import Adapter, MlpParts, register_adapter
from dcvit.cli import main
from dcvit.config import CompressConfig
from dcvit.driver import compress
from dcvit.engine import Engine
from dcvit.storage import ModelFileError

FAST = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False
)

PLUGIN = "dcvit_test_plugin"
ADAPTER = "test-plugin-vit"
SOURCE = textwrap.dedent(
    f'''
    """A tiny ViT and its dcvit adapter: what a user's plugin module holds."""
    from torch import nn

    from dcvit.arch import Adapter, MlpParts, register_adapter


    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, 2, batch_first=True)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.norm2(x))


    class TinyViT(nn.Module):
        def __init__(self, depth=3, dim=16):
            super().__init__()
            self.embed = nn.Conv2d(3, dim, 8, 8)
            self.layers = nn.Sequential(*[Block(dim) for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 5)

        def tokens(self, x):
            return self.norm(self.layers(self.embed(x).flatten(2).transpose(1, 2)))

        def forward(self, x):
            return self.head(self.tokens(x).mean(1))


    @register_adapter
    class TinyViTAdapter(Adapter):
        name = "{ADAPTER}"

        @classmethod
        def matches(cls, model):
            return isinstance(model, TinyViT)

        def block_containers(self, model):
            return [(model.layers, i) for i in range(len(model.layers))]

        def block_paths(self, model):
            return [f"layers.{{i}}" for i in range(len(model.layers))]

        def mlp_parts(self, block):
            return MlpParts(block.norm2, block.mlp, nn.Identity(), nn.Identity())

        def features(self, model, x):
            return model.tokens(x)

        def tail_modules(self, model):
            return [model.norm, model.head]

        def input_size(self, model):
            return (3, 16, 16)

        def base_spec(self, model):
            return {{"depth": len(model.layers)}}

        @staticmethod
        def build(spec):
            return TinyViT(depth=spec["depth"])
    '''
)


def write_plugin(folder: Path, name: str = PLUGIN, entry_point: bool = False) -> Path:
    """The plugin module in `folder`; with `entry_point`, also the metadata an installed package declaring it
    in its setup.cfg (`dcvit.adapters = tiny = MODULE`) would have, so importlib.metadata finds it there."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(SOURCE)
    if entry_point:
        info = folder / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[{arch.PLUGIN_GROUP}]\ntiny = {name}\n")
    return folder


def run_python(args: list[str], pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def registry(monkeypatch):
    """This process's adapter registry, restored after the test (plugins imported here register into a copy)."""
    monkeypatch.setattr(arch, "_ADAPTERS", list(arch._ADAPTERS))
    monkeypatch.setattr(arch, "_SOURCES", dict(arch._SOURCES))
    monkeypatch.setattr(arch, "_plugins_loaded", False)
    yield
    for name in [m for m in sys.modules if m.startswith(PLUGIN)]:
        del sys.modules[name]


def unregister(monkeypatch):
    """Forget the plugin's adapter and module, as a fresh process would not know them."""
    monkeypatch.setattr(arch, "_ADAPTERS", [a for a in arch._ADAPTERS if a.name != ADAPTER])
    monkeypatch.setattr(arch, "_SOURCES", {k: v for k, v in arch._SOURCES.items() if k != ADAPTER})
    monkeypatch.setattr(arch, "_plugins_loaded", False)
    for name in [m for m in sys.modules if m.startswith(PLUGIN)]:
        del sys.modules[name]


@pytest.fixture
def saved(tmp_path, monkeypatch, registry):
    """A model file of the plugin's TinyViT, one block compressed, written with the plugin imported here."""
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path / "plugins")))
    plugin = __import__(PLUGIN)
    torch.manual_seed(0)
    model = plugin.TinyViT().eval()
    small = dcvit.apply_plan(model, dcvit.plan(model, 0.8), [1])
    dcvit.save(small, tmp_path / "model")
    unregister(monkeypatch)
    return tmp_path / "model"


# --- in this process ----------------------------------------------------------------------------
def test_load_without_the_plugin_says_what_to_import(saved):
    with pytest.raises(ModelFileError) as info:
        dcvit.load(saved)
    message = str(info.value)
    assert "\n" not in message and ADAPTER in message and "--import" in message and "import the plugin" in message


def test_cli_without_the_plugin_is_one_line(saved, capsys):
    assert main(["macs", "--model", str(saved)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--import MODULE" in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_import_option(saved, capsys, where):
    argv = ["macs", "--model", str(saved), "--json"]
    argv = ["--import", PLUGIN, *argv] if where == "before" else [*argv, "--import", PLUGIN]
    assert main(argv) == 0, capsys.readouterr().err
    assert '"total"' in capsys.readouterr().out
    assert ADAPTER in arch._SOURCES


def test_cli_import_of_a_missing_or_broken_module_is_one_line(tmp_path, monkeypatch, capsys, registry):
    (tmp_path / f"{PLUGIN}_broken.py").write_text("raise RuntimeError('plugin bug\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module, fragment in ((f"{PLUGIN}_missing", "PYTHONPATH"), (f"{PLUGIN}_broken", "RuntimeError: plugin bug")):
        assert main(["--import", module, "macs", "--model", "fmnist_vit12"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err and module in err, err


def test_entry_point_is_loaded_on_the_first_failed_lookup(saved, monkeypatch):
    found = []

    def entry_points(group):
        found.append(group)
        point = importlib.metadata.EntryPoint(name="tiny", value=PLUGIN, group=group)
        broken = importlib.metadata.EntryPoint(name="broken", value=f"{PLUGIN}_not_there", group=group)
        return [broken, point] if group == arch.PLUGIN_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    dcvit.get_adapter(small_vit(depth=1))  # lookups that succeed never scan
    assert found == []
    loaded = dcvit.load(saved)  # the broken plugin is skipped with a warning, the good one registers
    assert found == [arch.PLUGIN_GROUP] and type(loaded).__name__ == "TinyViT"
    assert loaded(torch.randn(2, 3, 16, 16)).shape == (2, 5)


# --- fresh processes, the plugin on PYTHONPATH --------------------------------------------------
@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory):
    """A model file written by a fresh process that imported the plugin (PYTHONPATH holds only the plugin)."""
    root = tmp_path_factory.mktemp("plugin")
    plugins = write_plugin(root / "plugins")
    script = (
        f"import torch, dcvit, {PLUGIN} as p; torch.manual_seed(0); m = p.TinyViT().eval(); "
        f"dcvit.save(dcvit.drop_blocks(m, [0]), {str(root / 'model')!r})"
    )
    proc = run_python(["-c", script], plugins, root)
    assert proc.returncode == 0, proc.stderr
    return root / "model"


@pytest.mark.slow
def test_fresh_process_cli_import_option(plugin_file, tmp_path):
    plugins = write_plugin(tmp_path / "plugins")
    without = run_python(["-m", "dcvit", "macs", "--model", str(plugin_file)], plugins, tmp_path)
    assert without.returncode == 2 and without.stderr.count("\n") == 1 and "--import" in without.stderr
    proc = run_python(["-m", "dcvit", "--import", PLUGIN, "macs", "--model", str(plugin_file)], plugins, tmp_path)
    assert proc.returncode == 0 and "GMACs" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_fresh_process_entry_point(plugin_file, tmp_path):
    plugins = write_plugin(tmp_path / "plugins", entry_point=True)
    script = (
        f"import torch, dcvit; m = dcvit.load({str(plugin_file)!r}); "
        "print(type(m).__name__, tuple(m(torch.randn(2, 3, 16, 16)).shape))"
    )
    proc = run_python(["-c", script], plugins, tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["TinyViT", "(2,", "5)"], proc.stderr
    cli = run_python(["-m", "dcvit", "macs", "--model", str(plugin_file)], plugins, tmp_path)
    assert cli.returncode == 0 and "GMACs" in cli.stdout, cli.stderr


# --- the README's custom architecture --------------------------------------------------------------------
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
