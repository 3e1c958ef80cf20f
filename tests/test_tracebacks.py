"""Inputs and places that once ended in a traceback: each is a correct result or a one-line error naming the bad
value and what is accepted (CLI: exit 2), with nothing half-written (issue #23, "Tracebacks").

Tiny random-init models and temporary folders; a full disk is simulated by a writer that raises ENOSPC.
"""

import errno
import gzip
import os

import numpy as np
import pytest
import torch
from conftest import tiny_vit
from helpers.cli import one_line_error, run_cli
from PIL import Image

import dcvit


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return str(dcvit.save(tiny_vit(2), root / "big")), str(dcvit.save(tiny_vit(1), root / "saver"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A bare ImageFolder of 10 classes x 2 random 16 x 16 gray PNGs."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return f"imagefolder:{root}"


def full_disk_after(monkeypatch, writes: int) -> None:
    """Every atomic writer renames its finished temporary file into place: let `writes` renames pass, then
    answer ENOSPC as a full disk would (the temporary file is left for the writer to clean up)."""
    real, done = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if len(done) >= writes:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        done.append(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def temporaries(root) -> list:
    return [p for p in root.rglob("*") if p.name.startswith(".") and ".tmp" in p.name or "cascade-tmp" in p.name]


COMPRESS = ("compress", "--shots", "10", "--calibration-size", "0", "--target-macs", "0.7", "--structure", "drop",
            "--epochs", "1", "--synth-iterations", "2", "--batch-size", "10", "--quiet")  # fmt: skip
SYNTH = ("synth", "--num-images", "2", "--iterations", "1", "--quiet")


# --- output places: names too long, links left dangling, full disks ------------------------------------
@pytest.mark.parametrize("command", ["synth", "compress", "cascade"])  # demo: the same check_out
def test_a_300_character_out_is_one_line(capsys, tmp_path, models, monkeypatch, command):
    monkeypatch.setattr("dcvit.factory.resolve_model", lambda *a, **k: pytest.fail("started before refusing"))
    out = tmp_path / ("o" * 300)
    argv = {
        "synth": [*SYNTH, "--model", models[0]],
        "compress": [*COMPRESS, "--model", models[0]],
        "cascade": ["cascade", "--big", models[0], "--savers", models[1]],
    }[command]
    code, _, err = run_cli(capsys, *argv, "--out", out)
    one_line_error(code, err, "--out", "File name too long", "255")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writes", [0, 2])  # the set's tensors, or its grid after the set (2 files)
def test_synth_on_a_full_disk_leaves_no_folder(capsys, tmp_path, models, monkeypatch, writes):
    full_disk_after(monkeypatch, writes)
    code, _, err = run_cli(capsys, *SYNTH, "--model", models[0], "--out", tmp_path / "set")
    one_line_error(code, err, "No space left on device", "free some space")
    assert list(tmp_path.iterdir()) == []


def test_synth_out_left_dangling_during_the_work_is_one_line(capsys, tmp_path, models, monkeypatch):
    import synth

    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    real = synth.synthesize

    def synthesize(*args, **kwargs):
        target.rmdir()  # the link's target goes away while the set is made
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "synthesize", synthesize)
    code, _, err = run_cli(capsys, *SYNTH, "--model", models[0], "--out", link)
    one_line_error(code, err, "--out", "broken link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


@pytest.mark.parametrize("writes", [3])  # the cascade folder, after the report and curves
def test_cascade_on_a_full_disk_leaves_no_folder(capsys, tmp_path, models, images, monkeypatch, writes):
    full_disk_after(monkeypatch, writes)
    code, _, err = run_cli(capsys, "cascade", "--big", models[0], "--savers", models[1], "--data", images,
                           "--calibration-size", "10", "--out", tmp_path / "run", "--quiet")  # fmt: skip
    one_line_error(code, err, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_compress_and_resume_on_a_full_disk(capsys, tmp_path, models, images, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:  # the first write (settings.json) fails: no run is left to resume
        full_disk_after(m, 0)
        code, _, err = run_cli(capsys, *COMPRESS, "--model", models[0], "--data", images, "--out", out)
        one_line_error(code, err, "No space left on device")
        assert temporaries(tmp_path) == [] and not (out / "checkpoints").exists()
    assert run_cli(capsys, *COMPRESS, "--model", models[0], "--data", images, "--out", out)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    full_disk_after(monkeypatch, 0)  # resuming rewrites the result: the finished files stay as they were
    code, _, err = run_cli(capsys, *COMPRESS, "--model", models[0], "--data", images, "--out", out, "--resume")
    one_line_error(code, err, "No space left on device")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# --- Fashion-MNIST roots with bad idx files ------------------------------------------------------------
def idx(values: np.ndarray) -> bytes:
    header = bytes((0, 0, 8, values.ndim)) + np.array(values.shape, dtype=">i4").tobytes()
    return header + values.astype(np.uint8).tobytes()


def fmnist_root(root, images=None, labels=None, gz=False):
    """A root of the four idx files for 3 test and 3 train images; `images` / `labels` replace the bytes."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        for kind, data in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            good = rng.integers(0, 256, (3, 28, 28)) if kind.startswith("images") else np.array([0, 1, 9])
            raw = idx(good) if data is None else data
            name = f"{split}-{kind}" + (".gz" if gz else "")
            (root / name).write_bytes(gzip.compress(raw) if gz else raw)
    return root


def test_a_good_small_fashion_mnist_root_evaluates(capsys, tmp_path, models, monkeypatch):
    monkeypatch.setattr("dcvit.evaluation.throughput", lambda *args, **kwargs: 1.0)  # 2 s of timing
    root = fmnist_root(tmp_path / "fm", gz=True)
    code, out, err = run_cli(capsys, "eval", "--model", models[0], "--data", f"fashion-mnist:{root}", "--quiet")
    assert code == 0 and "(3 images)" in out, err


BAD_IDX = {
    "empty": (b"", None, "0 bytes"),
    "short": (b"\0\0", None, "2 bytes"),
    "truncated": (idx(np.zeros((3, 28, 28)))[:1000], None, "truncated"),
    "not-images": (idx(np.zeros((3, 28))), None, "not an idx file of 3-d"),
    "labels-short": (None, idx(np.zeros(2)), "do not match"),
    "labels-out-of-range": (None, idx(np.array([0, 1, 200])), "do not match"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_a_bad_fashion_mnist_file_is_named_in_one_line(capsys, tmp_path, models, case):
    images, labels, fragment = BAD_IDX[case]
    root = fmnist_root(tmp_path / "fm", images, labels)
    code, _, err = run_cli(capsys, "eval", "--model", models[0], "--data", f"fashion-mnist:{root}")
    one_line_error(code, err, str(root / "t10k-"), fragment)


def test_a_truncated_gz_fashion_mnist_file_is_named_in_one_line(capsys, tmp_path, models):
    root = fmnist_root(tmp_path / "fm", gz=True)
    raw = (root / "t10k-images-idx3-ubyte.gz").read_bytes()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    code, _, err = run_cli(capsys, "eval", "--model", models[0], "--data", f"fashion-mnist:{root}")
    one_line_error(code, err, str(root / "t10k-images-idx3-ubyte.gz"), "cannot be read")


# --- counts without bound: batch sizes, threads ---------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ("eval", "--batch-size", "10000000"),
        ("bench", "--batch-sizes", "1", "10000000"),
        ("bench", "--threads", "100000"),
    ],
    ids=["eval-batch", "bench-batch", "bench-threads"],
)
def test_huge_counts_are_refused_before_any_work(capsys, models, monkeypatch, argv):
    monkeypatch.setattr("dcvit.factory.resolve_model", lambda *a, **k: pytest.fail("started before refusing"))
    before = torch.get_num_threads()
    code, _, err = run_cli(capsys, argv[0], "--model", models[0], *argv[1:])
    one_line_error(code, err, argv[-1], "accepted a positive integer up to")
    assert torch.get_num_threads() == before


def test_eval_times_no_larger_a_batch_than_the_data(capsys, models, images, monkeypatch):
    timed = []
    monkeypatch.setattr("dcvit.evaluation.throughput", lambda model, size, batch: timed.append(batch) or 1.0)
    code, out, err = run_cli(capsys, "eval", "--model", models[0], "--data", images, "--batch-size", "4096", "--quiet")
    assert code == 0 and timed == [20] and "(batch 20)" in out, err


# --- names too long to be paths ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["macs", "eval", "bench", "synth"])
def test_a_5000_character_model_name_is_an_unknown_model(capsys, tmp_path, command):
    extra = ["--out", tmp_path / "out"] if command == "synth" else []
    code, _, err = run_cli(capsys, command, "--model", "x" * 5000, *extra)
    one_line_error(code, err, "unknown model 'xxx", "xxx...xxx", "timm model name")
    assert len(err) < 600 and list(tmp_path.iterdir()) == []


# --- run folders that dcvit did not write ----------------------------------------------------------------
@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["fresh", "resume"])
@pytest.mark.parametrize("case", ["settings-a-folder", "checkpoints-a-file"])
def test_a_run_folder_of_the_wrong_shape_is_one_line(capsys, tmp_path, models, images, case, resume):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".dcvit-compress").touch()  # an earlier compress's folder, as far as the marker says
    if case == "settings-a-folder":
        (out / "checkpoints" / "settings.json").mkdir(parents=True)
    else:
        (out / "checkpoints").write_text("x")
    before = sorted(out.rglob("*"))
    code, _, err = run_cli(capsys, *COMPRESS, "--model", models[0], "--data", images, "--out", out, *resume)
    one_line_error(code, err, "checkpoints", "accepted: a new folder, or a run folder written by dcvit")
    assert sorted(out.rglob("*")) == before


# --- API --------------------------------------------------------------------------------------------------
def test_saving_a_meta_model_is_refused_and_writes_nothing(tmp_path):
    with torch.device("meta"):
        model = tiny_vit(1)
    with pytest.raises(ValueError, match="meta device.*accepted: a model with real weights"):
        dcvit.save(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_saving_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file is not a folder"):
        dcvit.save(tiny_vit(1), tmp_path / "file" / "sub" / "m")
    assert (tmp_path / "file").read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_evaluate_on_an_empty_loader_is_a_value_error():
    with pytest.raises(ValueError, match="no images.*accepted: a loader"):
        dcvit.evaluate(tiny_vit(1), [], progress=False)


def test_predict_staged_on_an_empty_batch_is_empty():
    import cascade

    casc = cascade.Cascade([tiny_vit(1), tiny_vit(2)], [0.5], [1.0, 2.0]).eval()
    logits, stats = cascade.predict_staged(casc, torch.zeros(0, 1, 16, 16))
    assert logits.shape == (0, 10) and stats.exit_counts == (0, 0) and stats.n == 0 and stats.avg_cost == 0.0


def test_calibrate_5_stages_x_2000_samples_stays_bounded():
    """The product of 5 - 1 grids of 102 values was 108 M tuples (tens of GB); it is coarsened to at most
    MAX_CANDIDATES (0.8 GB peak, under 2 s); 12 models cannot be searched even at 2 quantiles per stage."""
    import cascade
    from cascade._search import MAX_CANDIDATES, stage_grid_size

    assert [stage_grid_size(n, 100) for n in (2, 3, 4, 5, 6, 11)] == [100, 100, 100, 36, 16, 2]
    assert all((stage_grid_size(n, 100) + 2) ** (n - 1) <= MAX_CANDIDATES for n in range(4, 12))
    g = torch.Generator().manual_seed(0)
    probs = [torch.softmax(torch.randn(2000, 10, generator=g) * 3, 1) for _ in range(5)]
    labels = torch.randint(0, 10, (2000,), generator=g)
    found = cascade.calibrate(probs, labels, [1, 2, 3, 4, 5], max_acc_drop=0.05)
    assert len(found.thresholds) == 4 and found.meets_tolerance
    with pytest.raises(ValueError, match="12 models.*accepted: at most 11 models"):
        cascade.calibrate([probs[0]] * 12, labels, list(range(1, 13)))


def test_os_error_line_names_the_file_shortened_and_what_works():
    from dcvit.storage import os_error_line

    line = os_error_line(OSError(errno.ENAMETOOLONG, "File name too long", "/x/" + "y" * 1000))
    assert line.startswith("File name too long (/x/yyy") and "..." in line and "255 bytes" in line
    assert len(line) < 250 and "\n" not in line
    line = os_error_line(PermissionError(errno.EACCES, "Permission denied", "/a\nb"))
    assert line == "Permission denied (/a b): choose a path you may read and write"
