"""The recipes/ scripts: real runs as subprocesses (from recipes/ and copied alone into an empty folder) on a
tiny saved ViT and a generated ImageFolder with tiny sizes, plus one-line errors for bad input (in-process,
loaded from their files: recipes/ is not a package)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import dcvit
from dcvit import scripts

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
NAMES = ("vit_imagenet", "dense_family", "saver_for_cascade")
# Tiny sizes overriding the preset: each run takes seconds on one CPU thread.
TINY = [
    "--shots",
    "8",
    "--epochs",
    "1",
    "--trial-epochs",
    "1",
    "--batch-size",
    "8",
    "--synth-images",
    "4",
    "--synth-iterations",
    "2",
    "--search-steps",
    "1",
]


def tiny_vit(depth: int = 4, img_size: int = 32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return dcvit.create_model(
        "vit_tiny_patch16_224", img_size=img_size, patch_size=8, embed_dim=48, depth=depth, num_heads=3, num_classes=4
    ).eval()


def image_folder(root: Path, splits=(("train", 12), ("val", 4)), classes: int = 4, size: int = 32) -> Path:
    """ROOT/{train,val}/class_k/*.png with random RGB images."""
    rng = np.random.default_rng(0)
    for split, per_class in splits:
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Absolute paths: the tiny big model, a smaller saver, a saver of another input size, the image folders."""
    root = tmp_path_factory.mktemp("recipe-files")
    return {
        "model": str(dcvit.save(tiny_vit(), root / "tiny")),
        "extra": str(dcvit.save(tiny_vit(depth=2, seed=1), root / "extra")),
        "wrong_size": str(dcvit.save(tiny_vit(depth=2, img_size=64), root / "wrong-size")),
        "images": str(image_folder(root / "images")),
        "train_only": str(image_folder(root / "train-only", splits=(("train", 12),))),
    }


def run_script(script: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # one thread; never a download
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def alone(tmp_path: Path, name: str) -> Path:
    """The recipe copied into an empty folder, as a user would take it."""
    folder = tmp_path / f"alone-{name}"
    folder.mkdir()
    shutil.copy(RECIPES / f"{name}.py", folder)
    return folder


def assert_one_line_error(err: str, code: int, prog: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}.py: error: ") and fragment in lines[0], err


def check_model_dir(folder: Path, summary: dict) -> None:
    """A dcvit.load-able model whose MACs are what result.json says and no more than its target, and the
    per-block structure and description of the result."""
    model = dcvit.load(folder / "model")
    macs = dcvit.count_macs(model)
    assert macs == summary["macs"] and macs <= summary["target"] * summary["macs_original"]
    written = json.loads((folder / "result.json").read_text())
    assert written["macs"] == macs and written["describe"].startswith(f"{macs / 1e6:.2f}M MACs")
    assert [s["block"] for s in written["structure"]] == list(range(4))
    assert any(s["edit"] != "kept" for s in written["structure"])


@pytest.mark.slow
def test_vit_imagenet_copied_alone(tmp_path, files):
    cwd = alone(tmp_path, "vit_imagenet")
    args = [
        "--model",
        files["model"],
        "--data",
        f"imagefolder:{files['images']}",
        "--out",
        "out",
        "--target-macs",
        "0.7",
        *TINY,
    ]
    proc = run_script(cwd / "vit_imagenet.py", args, cwd)
    assert proc.returncode == 0, proc.stderr
    assert "plan: structure search" in proc.stdout and "structure 'auto'" in proc.stdout and "MACs" in proc.stdout
    summary = json.loads((cwd / "out" / "result.json").read_text())
    assert summary["target"] == 0.7 and summary["config"]["structure"] == "auto" and summary["structure_kind"] == "auto"
    check_model_dir(cwd / "out", summary)
    # A finished run is refused without --resume, and --resume reproduces it from the checkpoints.
    proc = run_script(cwd / "vit_imagenet.py", args, cwd)
    assert_one_line_error(proc.stderr, proc.returncode, "vit_imagenet", "--resume")
    proc = run_script(cwd / "vit_imagenet.py", [*args, "--resume"], cwd)
    assert proc.returncode == 0, proc.stderr
    again = json.loads((cwd / "out" / "result.json").read_text())
    assert (again["macs"], again["structure"]) == (summary["macs"], summary["structure"])


@pytest.mark.slow
@pytest.mark.parametrize("structure,targets,where", [("auto", None, "alone"), ("drop", ["0.9", "0.6"], "recipes")])
def test_dense_family(tmp_path, files, structure, targets, where):
    cwd = alone(tmp_path, "dense_family") if where == "alone" else tmp_path
    script, out = (cwd if where == "alone" else RECIPES) / "dense_family.py", cwd / "family"
    args = ["--model", files["model"], "--data", files["images"], "--out", "family", "--structure", structure, *TINY]
    clean = ["--clean"] if structure == "drop" else []  # after success: the checkpoints go, the models stay
    proc = run_script(script, args + clean + (["--targets", *targets] if targets else []), cwd)
    assert proc.returncode == 0, proc.stderr
    assert "| target | MACs | of original | edited blocks |" in proc.stdout
    assert (out / "checkpoints").exists() != bool(clean) and ("--clean: removed" in proc.stdout) == bool(clean)
    family = json.loads((out / "family.json").read_text())
    assert [s["target"] for s in family["family"]] == [float(t) for t in targets or (0.9, 0.83, 0.75, 0.67)]
    macs = [s["macs"] for s in family["family"]]
    assert macs == sorted(macs, reverse=True) and family["config"]["structure"] == structure
    for s in family["family"]:
        check_model_dir(out / f"target-{s['target']:g}", s)
        if structure == "drop":
            assert {b["edit"] for b in s["structure"]} <= {"kept", "dropped"}


@pytest.mark.slow
def test_saver_for_cascade_copied_alone(tmp_path, files):
    cwd = alone(tmp_path, "saver_for_cascade")
    proc = run_script(
        cwd / "saver_for_cascade.py",
        [
            "--big",
            files["model"],
            "--data",
            files["images"],
            "--out",
            "out",
            "--structure",
            "dcvit",
            "--targets",
            "0.75",
            "0.67",
            "--extra-savers",
            files["extra"],
            "--calibration-size",
            "8",
            "--speed-images",
            "16",
            "--refine-images",
            "16",
            "--refine-epochs",
            "1",
            *TINY,
        ],
        cwd,
    )
    assert proc.returncode == 0, proc.stderr
    out = cwd / "out"
    assert "refined on 16 more unlabeled images" in proc.stdout
    refined = {t: dcvit.load(out / f"target-{t}-refined") for t in ("0.75", "0.67")}
    assert all(
        dcvit.count_macs(m) == dcvit.count_macs(dcvit.load(out / f"target-{t}" / "model")) for t, m in refined.items()
    )
    study = json.loads((out / "study.json").read_text())
    members = {"dcvit-0.75", "dcvit-0.67", "dcvit-0.75-refined", "dcvit-0.67-refined", files["extra"]}
    assert study["saver"] in members and {r["saver"] for r in study["ranking"]} == members
    assert f"Chosen saver: {study['saver']}" in proc.stdout and "fewer MACs per image" in proc.stdout
    report = (out / "report.md").read_text()
    assert "Chosen saver" in report and "dcvit-0.67" in report and files["extra"] in report
    assert (out / "curves.png").stat().st_size > 0
    for t in ("0.75", "0.67"):
        summary = json.loads((out / f"target-{t}" / "result.json").read_text())
        assert summary["structure_kind"] == "dcvit"
        check_model_dir(out / f"target-{t}", summary)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,bad",
    [
        ("vit_imagenet", ["--target-macs", "1.0"]),
        ("dense_family", ["--targets", "0.9", "1"]),
        ("saver_for_cascade", ["--targets", "0"]),
    ],
)
def test_command_line_error(tmp_path, name, bad):
    """Started as a script, a bad target exits 2 with one line on stderr and writes nothing."""
    proc = run_script(RECIPES / f"{name}.py", ["--data", "x", "--out", "unused", *bad], tmp_path)
    assert_one_line_error(proc.stderr, proc.returncode, name, "--target")
    assert not any(tmp_path.iterdir())


# --- in-process: bad input, --help, the config --------------------------------------------------------
def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline(monkeypatch):
    """In-process runs must never ask timm for pretrained weights (no network here: a download would hang)."""
    create = timm.create_model

    def guarded(*args, pretrained=False, **kwargs):
        assert not pretrained, "a recipe test requested pretrained weights"
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", guarded)


def fail(name: str, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as excinfo:
        load_recipe(name).main(argv)
    err = capsys.readouterr().err
    assert_one_line_error(err, excinfo.value.code, name, "")
    return err


BAD = [  # (recipe, argv, fragment); {model}, {images}, ... name the `files` fixture's paths
    ("vit_imagenet", ["--target-macs", "0"], "--target-macs"),
    ("vit_imagenet", ["--target-macs", "2"], "floor"),  # 2 MACs: below what dropping every block reaches
    ("vit_imagenet", ["--structure", "dcvit", "--target-macs", "0.2"], "floor"),
    ("vit_imagenet", ["--structure", "best"], "--structure"),
    ("vit_imagenet", ["--epochs", "0"], "--epochs"),
    ("vit_imagenet", ["--synth-images", "many"], "--synth-images"),
    ("vit_imagenet", ["--shots", "1000"], "shots"),
    ("vit_imagenet", ["--model", "no_such_model"], "unknown model"),
    ("vit_imagenet", ["--model", "/no/such/model"], "unknown model"),
    ("vit_imagenet", ["--data", "/no/such/imagenet"], "does not exist"),
    ("dense_family", ["--targets", "0.9", "0"], "--targets"),
    ("dense_family", ["--targets", "0.9", "0.90"], "duplicates"),
    ("dense_family", ["--data", "/no/such/imagenet"], "does not exist"),
    ("saver_for_cascade", ["--structure", "dcvit", "--targets", "0.3"], "floor"),
    ("saver_for_cascade", ["--extra-savers", "no_such_model"], "unknown model"),
    ("saver_for_cascade", ["--extra-savers", "{wrong_size}"], "does not accept"),
    ("saver_for_cascade", ["--extra-savers", "{extra}", "{extra}"], "distinct"),
    ("saver_for_cascade", ["--max-acc-drop", "2"], "--max-acc-drop"),
    ("saver_for_cascade", ["--refine-images", "-1"], "--refine-images"),
    ("saver_for_cascade", ["--calibration-size", "8", "--refine-images", "100"], "--refine-images"),
    ("saver_for_cascade", ["--delta", "0.7"], "--delta"),
    ("saver_for_cascade", ["--data", "{train_only}"], "val/"),
    ("saver_for_cascade", ["--data", "/no/such/imagenet"], "does not exist"),
]


@pytest.mark.parametrize("name,argv,fragment", BAD)
def test_bad_input(tmp_path, capsys, offline, files, name, argv, fragment):
    argv = [a.format(**files) for a in argv]
    model = "--big" if name == "saver_for_cascade" else "--model"
    defaults = {model: files["model"], "--data": files["images"]}
    argv += [a for k, v in defaults.items() if k not in argv for a in (k, v)]
    err = fail(name, [*TINY, *argv, "--out", str(tmp_path / "bad")], capsys)  # argv's sizes win over TINY's
    assert fragment in err
    assert not (tmp_path / "bad").exists()


def test_only_the_main_process_writes(tmp_path, files, offline, monkeypatch):
    """Under `accelerate launch` the other processes return after the shared checkpointed work, as the CLI's do."""
    monkeypatch.setattr(scripts, "is_main_process", lambda: False)
    args = ["--model", files["model"], "--data", files["images"], "--out", str(tmp_path / "out"), *TINY]
    assert load_recipe("vit_imagenet").main([*args, "--target-macs", "0.7"]) == {}
    assert (tmp_path / "out" / "checkpoints" / "settings.json").is_file()
    assert not (tmp_path / "out" / "result.json").exists() and not (tmp_path / "out" / "model").exists()


@pytest.mark.parametrize("name", NAMES)
def test_data_is_required(capsys, name):
    assert "--data" in fail(name, ["--out", "unused"], capsys)


@pytest.mark.parametrize("name", NAMES)
def test_help_shows_an_example(capsys, name):
    with pytest.raises(SystemExit) as excinfo:
        load_recipe(name).main(["--help"])
    text = capsys.readouterr().out
    assert excinfo.value.code == 0 and f"python recipes/{name}.py" in text
    assert "--structure" in text and "--search-steps" in text and "--smoke" not in text


@pytest.mark.parametrize("name", NAMES)
def test_structure_and_sizes(name):
    """auto by default with the preset's sizes; --structure drop applies BLOCK_DROP; sizes override the preset."""
    recipe = load_recipe(name)
    parse = lambda *a: scripts.config_from_args(recipe.build_parser().parse_args(["--data", "x", "--out", "y", *a]))
    assert parse().replace(progress=True) == dcvit.CompressConfig.paper()
    assert parse().structure == "auto"
    quick = parse("--preset", "quick", "--structure", "drop", "--epochs", "3", "--seed", "5")
    assert quick == dcvit.CompressConfig.paper(
        epochs=3, trial_epochs=20, synth_iterations=200, seed=5, progress=quick.progress
    ).replace(**dcvit.BLOCK_DROP)
    assert parse("--structure", "mlp", "--search-steps", "2").replace(progress=True) == dcvit.CompressConfig.paper(
        structure="mlp", search_steps=2
    )


def test_recipes_use_the_public_api_only():
    """One file each: no sibling helpers, no dcvit internals (only the package face and the studies)."""
    assert sorted(p.name for p in RECIPES.iterdir() if p.name != "__pycache__") == sorted(f"{n}.py" for n in NAMES)
    for name in NAMES:
        text = (RECIPES / f"{name}.py").read_text()
        imports = [line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))]
        assert {m for m in imports if m.split(".")[0] == "dcvit"} <= {
            "dcvit",
            "dcvit.studies.companions",
            "dcvit.studies.report",
        }, name
        assert "sys.path" not in text and "dcvit.cli" not in text
