import pytest
import torch

import dcvit  # noqa: F401  registers the shipped models

# Tiny models are overhead-bound: one thread is faster and immune to a busy machine's oversubscription.
torch.set_num_threads(1)


def small_vit(depth=6, dim=48, heads=3, img=32, patch=8, chans=3, **kwargs):
    return dcvit.create_model("vit_tiny_patch16_224", img_size=img, patch_size=patch, embed_dim=dim, depth=depth,
                              num_heads=heads, in_chans=chans, num_classes=10, **kwargs).eval()


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return small_vit()


@pytest.fixture(scope="session")
def tmp_cwd_free(tmp_path_factory):
    return tmp_path_factory.mktemp("work")
