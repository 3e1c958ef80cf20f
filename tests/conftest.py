import atexit
import os
import shutil
import tempfile

import pytest
import torch

import dcvit  # noqa: F401  registers the shipped models

# Tiny models are overhead-bound: one thread is faster and immune to a busy machine's oversubscription.
torch.set_num_threads(1)

# The metric-set cache of the runs under test (the CLI's subprocesses inherit it): one per test process, removed
# at exit, never the user's ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="dcvit-test-metric-sets-")
atexit.register(shutil.rmtree, _CACHE, True)
os.environ["DCVIT_METRIC_CACHE"] = _CACHE


def small_vit(depth=6, dim=48, heads=3, img=32, patch=8, chans=3, **kwargs):
    return dcvit.create_model(
        "vit_tiny_patch16_224",
        img_size=img,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        in_chans=chans,
        num_classes=10,
        **kwargs,
    ).eval()


def tiny_vit(depth=5):
    """A 1-channel 16-pixel ViT small enough to compress in seconds."""
    torch.manual_seed(0)
    return dcvit.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=depth,
        num_heads=2,
        in_chans=1,
        num_classes=10,
    ).eval()


def tiny_swin(**kwargs):
    """A two-stage 56-pixel Swin: every Swin code path at test speed."""
    settings = dict(img_size=56, embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=7, num_classes=5)
    return dcvit.create_model("swin_tiny_patch4_window7_224", **{**settings, **kwargs}).eval()


def tiny_data(n=16):
    """n random 1 x 16 x 16 images (labels are never used)."""
    gen = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(torch.randn(n, 1, 16, 16, generator=gen), torch.zeros(n, dtype=torch.long))


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return small_vit()


@pytest.fixture(scope="session")
def tmp_cwd_free(tmp_path_factory):
    return tmp_path_factory.mktemp("work")
