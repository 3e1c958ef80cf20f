"""Fixtures the test files share; shared functions are in tests/helpers/ (imported as `helpers.NAME`)."""

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from helpers.models import small_vit, tiny_vit
from helpers.runs import image_folder, other_teacher
from PIL import Image

import dcvit

# Tiny models are overhead-bound: one thread is faster and immune to a busy machine's oversubscription.
torch.set_num_threads(1)

# The metric-set cache of the runs under test (the CLI's subprocesses inherit it): never the user's ~/.cache.
# This one is for code outside a test (collection); each test gets its own below.
_CACHE = tempfile.mkdtemp(prefix="dcvit-test-metric-sets-")
atexit.register(shutil.rmtree, _CACHE, True)
os.environ["DCVIT_METRIC_CACHE"] = _CACHE


@pytest.fixture(autouse=True)
def _own_metric_cache(tmp_path_factory, monkeypatch):
    """A metric-set cache per test: a set another test cached would otherwise skip a synthesis this test
    counts or patches, depending on the order the tests ran in."""
    monkeypatch.setenv("DCVIT_METRIC_CACHE", str(tmp_path_factory.mktemp("metric-sets")))


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return small_vit()


@pytest.fixture(scope="session")
def tmp_cwd_free(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Two saved tiny 10-class ViTs (depth 2 and 1): a big model and a saver for `dcvit cascade`."""
    root = tmp_path_factory.mktemp("models")
    return str(dcvit.save(tiny_vit(2), root / "big")), str(dcvit.save(tiny_vit(1), root / "saver"))


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """A bare ImageFolder of 10 classes x 2 random 16 x 16 gray PNGs."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return f"imagefolder:{root}"


@pytest.fixture
def cli_env(tmp_path):
    """A saved tiny teacher, another one, and two different image folders."""
    return {
        "model": dcvit.save(tiny_vit(), tmp_path / "teacher"),
        "other": dcvit.save(other_teacher(), tmp_path / "t2"),
        "data": image_folder(tmp_path / "a", 1),
        "other_data": image_folder(tmp_path / "b", 2),
    }


# files are written with the umask 022 (a common default), whatever the test process had
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def no_slow_work(monkeypatch):
    """Any model loading or demo run means the command started its work before refusing."""

    def started(*args, **kwargs):
        raise AssertionError("the command started its work before checking its arguments")

    # Modules that bind resolve_model at import must be imported before the patch, or they keep the stand-in.
    import dcvit.studies.demo  # noqa: F401

    monkeypatch.setattr("dcvit.factory.resolve_model", started)
    monkeypatch.setattr("dcvit.studies.demo.run_demo", started)
