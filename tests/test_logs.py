"""Logs: progress as log lines, never carriage returns, when stderr is not a terminal; progress for API users who
configured no logging; a first line naming device, processes and precision."""

import logging

import torch
from helpers.models import tiny_vit

import dcvit
import synth
from dcvit import progress
from dcvit.cli import main
from dcvit.config import CompressConfig

SMOKE = CompressConfig(epochs=1, trial_epochs=1, batch_size=8, synth_images=4, synth_iterations=20, search_steps=1)


def test_synthesis_counts_in_log_lines_when_redirected(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="dcvit"):
        synth.synthesize(tiny_vit(depth=2), 2, iterations=20, progress=progress.bar)
    assert "synthesizing: 20/20 (100%) loss=" in caplog.text
    synth.synthesize(tiny_vit(depth=2), 2, iterations=20, progress=True)  # tqdm only on a terminal
    assert "\r" not in capsys.readouterr().err


def test_a_redirected_compress_log_has_no_carriage_returns(tmp_path, capsys):
    model = dcvit.save(tiny_vit(depth=3), tmp_path / "m")
    argv = ["compress", "--model", model, "--data", "fashion-mnist", "--shots", "8", "--target-macs", "0.8"]
    argv += ["--out", tmp_path / "run", "--epochs", "1", "--trial-epochs", "1", "--synth-iterations", "20"]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "\r" not in err and "\x1b" not in err
    assert "dcvit: compressing on cpu, 1 process(es), mixed precision no" in err
    assert "dcvit: synthesizing: 20/20" in err


def test_the_api_lends_a_handler_only_where_no_logging_is_configured(monkeypatch, capsys):
    log = logging.getLogger("dcvit")
    monkeypatch.setattr(log, "handlers", [])  # a CLI run in this process may have configured it
    before = (list(log.handlers), log.level)
    monkeypatch.setattr(log, "hasHandlers", lambda: False)  # pytest's own handlers sit on the root logger
    with progress.api_logging(True):
        log.info("step 1")
    assert "dcvit: step 1" in capsys.readouterr().err
    assert (list(log.handlers), log.level) == before  # given back as it was
    with progress.api_logging(False):
        log.info("step 2")
    assert "step 2" not in capsys.readouterr().err


def test_a_null_handler_counts_as_configured(capsys):
    log = logging.getLogger("dcvit")
    null = logging.NullHandler()
    log.addHandler(null)
    handlers = list(log.handlers)
    try:
        with progress.api_logging(True):
            assert log.handlers == handlers  # nothing lent
    finally:
        log.removeHandler(null)


def test_log_to_stderr_replaces_its_handler(capsys):
    log = logging.getLogger("dcvit")
    level = log.level
    try:
        dcvit.log_to_stderr()
        dcvit.log_to_stderr()
        assert sum(isinstance(h, progress._CurrentStderr) for h in log.handlers) == 1
        log.info("hello")
        assert capsys.readouterr().err.count("dcvit: hello") == 1
    finally:
        for h in [h for h in log.handlers if isinstance(h, progress._CurrentStderr)]:
            log.removeHandler(h)
        log.setLevel(level)


def test_compress_says_where_it_runs(caplog):
    with caplog.at_level(logging.INFO, logger="dcvit"):
        dcvit.compress(tiny_vit(depth=3), 0.8, torch.randn(8, 1, 16, 16), SMOKE)
    assert "compressing on cpu, 1 process(es), mixed precision no" in caplog.text
