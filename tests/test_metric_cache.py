"""The metric-set cache (dcvit.metric_cache): a second run reuses the set, a changed teacher or synthesis
setting does not, an unusable entry is ignored with a log line, and results are the same with or without it."""

import json
import logging

import pytest
import torch
from helpers.models import tiny_data, tiny_vit

import synth
from dcvit import CompressConfig, compress
from dcvit.metric_cache import ENTRY, resolve

FAST = CompressConfig(epochs=1, batch_size=8, synth_images=4, synth_iterations=3, structure="dcvit", progress=False)


@pytest.fixture
def counted(monkeypatch):
    """synth.synthesize, counting its calls."""
    calls = []
    real = synth.synthesize

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "synthesize", counting)
    return calls


def _run(cache, model=None, config=FAST):
    return compress(model or tiny_vit(), 0.8, tiny_data(), config, metric_cache=cache)


def _same(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_second_run_reuses_the_set_with_identical_results(tmp_path, counted, caplog):
    uncached = _run(False)
    assert len(counted) == 1 and not (tmp_path / "c").exists()
    first = _run(tmp_path / "c")
    assert len(counted) == 2 and len(list((tmp_path / "c").iterdir())) == 1
    with caplog.at_level(logging.INFO, logger="dcvit"):
        second = _run(tmp_path / "c")
    assert len(counted) == 2, "the second run synthesized again"
    assert "taken from the cache" in caplog.text and "synth" not in second.seconds
    assert _same(first, uncached) and _same(second, uncached)
    assert first.scores == second.scores == uncached.scores


@pytest.mark.parametrize(
    "change", [{"synth_iterations": 4}, {"synth_images": 5}, {"seed": 1}, {"synth_jitter": 0.0}, "teacher"]
)
def test_a_changed_teacher_or_setting_synthesizes_anew(tmp_path, counted, change):
    _run(tmp_path / "c")
    model, config = tiny_vit(), FAST
    if change == "teacher":
        with torch.no_grad():
            model.head.bias[0] += 1e-3
    else:
        config = FAST.replace(**change)
    _run(tmp_path / "c", model, config)
    assert len(counted) == 2 and len(list((tmp_path / "c").iterdir())) == 2


def _entry(root):
    (folder,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    return folder


@pytest.mark.parametrize("damage", ["tensors", "fields", "entry"])
def test_an_unusable_entry_is_ignored_and_replaced(tmp_path, counted, caplog, damage):
    reference = _run(tmp_path / "c")
    folder = _entry(tmp_path / "c")
    if damage == "tensors":  # a flipped byte in the images
        data = bytearray((folder / "tensors.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (folder / "tensors.safetensors").write_bytes(bytes(data))
    elif damage == "fields":  # an entry recording other settings under this key
        entry = json.loads((folder / ENTRY).read_text())
        entry["fields"]["synthesis"]["iterations"] = 99
        (folder / ENTRY).write_text(json.dumps(entry))
    else:
        (folder / ENTRY).write_text("{not json")
    with caplog.at_level(logging.INFO, logger="dcvit"):
        again = _run(tmp_path / "c")
    assert len(counted) == 2 and "ignoring" in caplog.text
    assert _same(again, reference)
    _run(tmp_path / "c")  # the entry was written anew: the third run reuses it
    assert len(counted) == 2 and _entry(tmp_path / "c") == folder


def test_where_the_cache_lives(tmp_path, monkeypatch):
    monkeypatch.delenv("DCVIT_METRIC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve(None) == tmp_path / "xdg" / "dcvit" / "metric-sets"
    monkeypatch.setenv("DCVIT_METRIC_CACHE", str(tmp_path / "env"))
    assert resolve(None) == tmp_path / "env" and resolve(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("DCVIT_METRIC_CACHE", "off")
    assert resolve(None) is None and resolve(False) is None and resolve("OFF") is None


def test_an_unwritable_cache_does_not_fail_the_run(tmp_path, counted, caplog):
    (tmp_path / "file").write_text("not a folder")
    with caplog.at_level(logging.INFO, logger="dcvit"):
        result = _run(tmp_path / "file" / "cache")
    assert len(counted) == 1 and "could not write" in caplog.text and _same(result, _run(False))
