"""Tests for synth/ (docs/method.md §4, Eq. 4-5): shapes, defaults, determinism, files, errors, and
that the objective really pulls images towards their target labels. All CPU and fast."""

from __future__ import annotations

import copy
import json
import math
import stat
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import synth
from synth.deepinversion import cosine_lr
from synth.regularizers import l2_prior, total_variation

FAST = dict(iterations=3, warmup=1, progress=False)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # The test machine is shared with a training job: with 2 threads per process
    # the tiny ops here run ~50x slower from oversubscription.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_cnn(in_chans: int = 1, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Global-pooled CNN: accepts any image size."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    ).eval()


def fixed_size_cnn(side: int = 28) -> nn.Module:
    """Flatten + Linear head: only accepts side x side, 1-channel images."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * side * side, 10)).eval()


def tiny_vit(in_chans: int = 1, img_size: int = 32, patch_size: int = 8) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        in_chans=in_chans,
    ).eval()


@pytest.fixture(scope="module")
def trained_cnn() -> nn.Module:
    """A CNN trained for ~2 s to tell apart 10 smooth, mirror-symmetric random templates.

    Trained with the same roll/flip augmentation the synthesiser uses, so its
    classes are reachable under jitter + flip (a purely random CNN often has
    classes that no flip-robust image can reach, which would test the model,
    not the method).
    """
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    t = F.interpolate(torch.rand(10, 1, 7, 7, generator=g), size=(28, 28), mode="bilinear", align_corners=False)
    t = (t + t.flip(3)) / 2
    lo, hi = t.amin((1, 2, 3), keepdim=True), t.amax((1, 2, 3), keepdim=True)
    templates = (t - lo) / (hi - lo)
    model = tiny_cnn(1, 10, seed=3).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        y = torch.randint(0, 10, (64,), generator=g)
        x = templates[y] + 0.1 * torch.randn(64, 1, 28, 28, generator=g)
        dy, dx = torch.randint(-4, 5, (2,), generator=g).tolist()
        x = torch.roll(x, (dy, dx), (2, 3))
        if float(torch.rand((), generator=g)) < 0.5:
            x = x.flip(3)
        loss = F.cross_entropy(model((x - 0.5) / 0.5), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.pretrained_cfg = {"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,)}
    return model.eval()


# ----------------------------------------------------------------- shapes / defaults
@pytest.mark.parametrize(
    "make, chans, side",
    [
        (lambda: tiny_cnn(1), 1, 28),
        (lambda: tiny_cnn(3), 3, 32),
        (lambda: tiny_vit(1, 28, patch_size=7), 1, 28),
        (lambda: tiny_vit(3, 32), 3, 32),
    ],
    ids=["cnn-1x28", "cnn-3x32", "vit-1x28", "vit-3x32"],
)
def test_shapes(make, chans, side):
    model = make()
    s = synth.synthesize(model, 6, image_size=(chans, side, side), **FAST)
    assert len(s) == 6
    assert s.images.shape == (6, chans, side, side) and s.images.dtype == torch.float32
    assert s.labels.dtype == torch.long and s.labels.shape == (6,)
    assert len(set(s.labels.tolist())) == 6 and 0 <= int(s.labels.min()) and int(s.labels.max()) < 10
    assert s.losses.shape == (6,) and torch.isfinite(s.losses).all() and math.isfinite(s.total_loss)
    assert len(s.mean) == len(s.std) == chans
    with torch.no_grad():
        assert model(s.images).shape == (6, 10)


def test_timm_vit_defaults_follow_the_model_not_its_stale_cfg():
    # timm reports input_size (3, 224, 224) for this 1-channel 32 px model.
    model = tiny_vit(1, 32)
    s = synth.synthesize(model, 2, **FAST)
    assert s.images.shape == (2, 1, 32, 32)
    assert s.mean == (0.5,) and s.std == (0.5,)


def test_defaults_from_pretrained_cfg():
    model = tiny_cnn(3)
    model.pretrained_cfg = {"input_size": (3, 20, 24), "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    s = synth.synthesize(model, 3, **FAST)
    assert s.images.shape == (3, 3, 20, 24)
    assert s.mean == pytest.approx((0.1, 0.2, 0.3)) and s.std == pytest.approx((0.4, 0.5, 0.6))
    assert s.config["image_size"] == [3, 20, 24] and s.config["num_classes"] == 10


def test_int_image_size_takes_channels_from_model():
    s = synth.synthesize(tiny_cnn(3), 2, image_size=16, **FAST)
    assert s.images.shape == (2, 3, 16, 16) and s.mean == (0.0,) * 3 and s.std == (1.0,) * 3


def test_model_left_as_it_was():
    model = tiny_cnn(1).train()
    model[0].eval()  # mixed modes must survive too
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    synth.synthesize(model, 3, image_size=28, **FAST)
    assert model.training and not model[0].training and model[2].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())  # global RNG untouched


# ------------------------------------------------------------------------ labels
def test_labels_balanced_when_more_images_than_classes():
    s = synth.synthesize(tiny_cnn(1), 25, image_size=8, **FAST)
    counts = torch.bincount(s.labels, minlength=10)
    assert counts.min() == 2 and counts.max() == 3


def test_explicit_labels_and_batching():
    labels = [3, 3, 1, 0, 9, 9, 9]
    s = synth.synthesize(tiny_cnn(1), 7, image_size=8, labels=labels, batch_size=3, **FAST)
    assert s.labels.tolist() == labels and s.images.shape == (7, 1, 8, 8) and s.losses.shape == (7,)
    unbatched = synth.synthesize(tiny_cnn(1), 7, image_size=8, **FAST)
    chunked = synth.synthesize(tiny_cnn(1), 7, image_size=8, batch_size=3, **FAST)
    assert torch.equal(unbatched.labels, chunked.labels)


# -------------------------------------------------------------- determinism / range
def test_same_seed_same_images_other_seed_differs():
    model = tiny_cnn(1)
    a = synth.synthesize(model, 4, image_size=12, seed=7, iterations=5, warmup=1, progress=False)
    b = synth.synthesize(model, 4, image_size=12, seed=7, iterations=5, warmup=1, progress=False)
    c = synth.synthesize(model, 4, image_size=12, seed=8, iterations=5, warmup=1, progress=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_pixels_in_valid_range():
    mean, std = (0.2, 0.4, 0.6), (0.3, 0.2, 0.1)
    s = synth.synthesize(tiny_cnn(3), 4, image_size=16, mean=mean, std=std, lr=1.0, **FAST)
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    low, high = (0 - m) / sd, (1 - m) / sd
    assert (s.images >= low - 1e-6).all() and (s.images <= high + 1e-6).all()
    assert ((s.images - low).abs() < 1e-6).any()  # clamping was active
    pixels = s.to_pixels()
    assert pixels.min() >= 0 and pixels.max() <= 1
    torch.testing.assert_close(pixels, s.images * sd + m)


# ------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    s = synth.synthesize(tiny_cnn(3), 5, image_size=10, mean=(0.5, 0.4, 0.3), std=0.25, **FAST)
    out = s.save(tmp_path / "set")
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tensors.safetensors"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == 5 and meta["config"]["seed"] == 0
    for loaded in (synth.SyntheticSet.load(out), synth.load(str(out))):
        assert torch.equal(loaded.images, s.images) and torch.equal(loaded.labels, s.labels)
        assert torch.equal(loaded.losses, s.losses)
        assert loaded.mean == s.mean and loaded.std == s.std
        assert loaded.total_loss == s.total_loss and loaded.config == s.config
    s.save(out)  # overwriting an existing set works
    with pytest.raises(FileNotFoundError):
        synth.load(tmp_path / "missing")


@pytest.mark.parametrize("chans, side, mode", [(1, 28, "L"), (3, 32, "RGB")])
def test_save_grid_png(tmp_path, chans, side, mode):

    s = synth.synthesize(tiny_cnn(chans), 12, image_size=side, **FAST)
    path = s.save_grid(tmp_path / "grid.png", nrow=5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp files left
    with Image.open(path) as image:
        image.load()
        tile = side * math.ceil(84 / side)  # tiny images are upsampled to >= 84 px
        assert image.mode == mode
        assert image.size == (5 * (tile + 2) + 2, 3 * (tile + 2) + 2)


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_images=0),
        dict(num_images=-2),
        dict(num_images=2.5),
        dict(num_images=True),
        dict(iterations=0),
        dict(lr=-0.1),
        dict(tv=-1.0),
        dict(l2=-1e-5),
        dict(jitter=1.0),
        dict(jitter=-0.1),
        dict(tv_exponent=0.0),
        dict(batch_size=0),
        dict(labels=[0, 1]),
        dict(labels=[0, 1, 10]),
        dict(labels=[0, -1, 2]),
        dict(labels=[0.5, 1, 2]),
        dict(image_size=32),
        dict(image_size=(3, 28, 28)),
        dict(image_size="28"),
        dict(image_size=(0, 28)),
        dict(mean=(0.1, 0.2)),
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_bad_input_raises_value_error(kwargs):
    args = dict(num_images=3, image_size=28, **FAST)
    args.update(kwargs)
    num_images = args.pop("num_images")
    with pytest.raises(ValueError) as info:
        synth.synthesize(fixed_size_cnn(28), num_images, **args)
    assert "\n" not in str(info.value)


def test_wrong_size_for_vit_names_the_size():
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        synth.synthesize(tiny_vit(1, 32), 2, image_size=28, **FAST)


def test_model_without_config_needs_image_size():
    with pytest.raises(ValueError, match="image_size"):
        synth.synthesize(tiny_cnn(1), 2, **FAST)


# --------------------------------------------------------------- building blocks
def test_regularizers_match_definitions():
    x = torch.randn(2, 3, 5, 6)
    diffs = [
        x[..., :, 1:] - x[..., :, :-1],
        x[..., 1:, :] - x[..., :-1, :],
        x[..., 1:, 1:] - x[..., :-1, :-1],
        x[..., 1:, :-1] - x[..., :-1, 1:],
    ]
    expected = sum(d.pow(2).sum().sqrt() ** 0.6 for d in diffs)
    torch.testing.assert_close(total_variation(x, 0.6), expected)
    torch.testing.assert_close(l2_prior(x), (x[0].norm() + x[1].norm()) / 2)
    flat = torch.ones(1, 1, 4, 4, requires_grad=True)
    total_variation(flat, 0.6).backward()  # flat image: no NaN gradient
    assert torch.isfinite(flat.grad).all()


def test_cosine_lr_schedule():
    lrs = [cosine_lr(i, 100, 0.25, 10) for i in range(100)]
    assert lrs[0] == pytest.approx(0.025) and lrs[9] == pytest.approx(0.25) and lrs[10] == pytest.approx(0.25)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3


def test_progress_bar_runs_on_a_terminal_only(capsys, monkeypatch):
    synth.synthesize(tiny_cnn(1), 2, image_size=8, iterations=12, warmup=1, progress=True)
    assert capsys.readouterr().err == ""  # redirected: a bar's carriage returns would pile up in the log
    monkeypatch.setattr("synth.deepinversion._stderr_is_terminal", lambda: True)
    synth.synthesize(tiny_cnn(1), 2, image_size=8, iterations=12, warmup=1, progress=True)
    assert "synthesizing" in capsys.readouterr().err


# ------------------------------------------------- the objective pulls towards labels
@pytest.mark.parametrize("lr, pulled", [(0.25, True), (0.0, False)])
def test_images_become_their_labels(trained_cnn, lr, pulled):
    # Default jitter/flip/TV/L2; lr=0 is the control showing the test can fail.
    s = synth.synthesize(trained_cnn, 10, iterations=60, warmup=5, lr=lr, progress=False)
    with torch.no_grad():
        hit = (trained_cnn(s.images).argmax(1) == s.labels).float().mean().item()
    if pulled:
        assert hit >= 0.9 and s.losses.mean() < 0.5
    else:
        assert hit <= 0.3


def test_random_cnn_is_pulled_without_augmentation():
    model = tiny_cnn(1, seed=0)
    for layer in model:  # larger weights than PyTorch's default init: informative logits
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            layer.weight.data *= 2
            nn.init.zeros_(layer.bias)
    common = dict(image_size=28, mean=0.5, std=0.5, jitter=0.0, flip=False, iterations=60, warmup=5, progress=False)
    hits = []
    for lr in (0.1, 0.0):
        s = synth.synthesize(model, 10, lr=lr, **common)
        with torch.no_grad():
            hits.append((model(s.images).argmax(1) == s.labels).float().mean().item())
    assert hits[0] >= 0.9 and hits[1] <= 0.3


# --- synth jitter follows the model ----------------------------------------------------------------------
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
        (tiny_vit(1, 16, patch_size=4), None, 2 / 16),  # half a patch (2 px) is under 30/224 of 16 px
        (
            tiny_vit(1, 28, patch_size=7),
            None,
            3 / 28,
        ),  # patch 7: 3 px, never more than half a patch (30/224 would round to 4)
        (tiny_vit(1, 64, patch_size=32), None, 30 / 224),  # half a patch is over the reference: the reference
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


# --- files keep the umask's permissions ---------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_synth_files_and_grid_follow_the_umask(tmp_path, umask_022):
    made = synth.synthesize(tiny_vit(1, 16, patch_size=4), 3, **QUICK)
    made.save(tmp_path / "set")
    made.save(tmp_path / "set")  # replacing too
    made.save_grid(tmp_path / "set" / "grid.png")
    assert {p.name: _mode(p) for p in (tmp_path / "set").iterdir()} == {
        "tensors.safetensors": 0o644,
        "meta.json": 0o644,
        "grid.png": 0o644,
    }
