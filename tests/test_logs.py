"""Logs: progress as log lines, never carriage returns, when stderr is not a terminal; progress for API users who
configured no logging; a first line naming device, processes and precision; a whole-run estimate; a closing line
with the time and the agreement with the teacher."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from helpers.models import tiny_vit

import dcvit
import synth
from dcvit import progress
from dcvit.cli import main
from dcvit.config import CompressConfig

ROOT = Path(__file__).resolve().parents[1]
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


def test_a_redirected_compress_log_ends_with_time_and_agreement(tmp_path):
    """`dcvit compress ... 2> run.log` in a fresh process: plain lines only, the device line first, the whole-run
    estimate as the fine-tunes finish, and a closing line with the time and the top-1 agreement on the shots that
    result.json records; --clean leaves the model and result.json and removes the checkpoints."""
    model = dcvit.save(tiny_vit(depth=3), tmp_path / "m")
    argv = ["compress", "--model", model, "--data", "fashion-mnist", "--shots", "8", "--target-macs", "0.8"]
    argv += ["--out", tmp_path / "run", "--epochs", "1", "--trial-epochs", "1", "--synth-iterations", "5", "--clean"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "TQDM_"))} | {"OMP_NUM_THREADS": "1"}
    with open(tmp_path / "run.log", "w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "dcvit", *map(str, argv)], stderr=log, stdout=subprocess.PIPE, cwd=ROOT, env=env
        )
    text = (tmp_path / "run.log").read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "dcvit: compressing on cpu, 1 process(es), mixed precision no"
    assert any(
        re.fullmatch(r"dcvit: run: \d+% of the fine-tuning done, \d+s elapsed, about \d+s left", x) for x in lines
    )
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    agreement = f"{100 * summary['fidelity']['top1_agreement']:.1f}%"
    closing = [x for x in lines if x.startswith("dcvit: done in ")]
    assert len(closing) == 1 and re.fullmatch(
        rf"dcvit: done in \d+s; top-1 agreement with the teacher on the 8 shots: {re.escape(agreement)}", closing[0]
    )
    where = re.escape(str(tmp_path / "run" / "checkpoints"))
    assert re.fullmatch(rf"dcvit: --clean: removed \d+ checkpoint item\(s\) from {where}", lines[-1])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".dcvit-compress", "model", "result.json"]


def test_the_run_clock_estimates_what_is_left_from_the_work_done(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    clock = progress.RunClock(start=90.0)  # 10 s of set-up before the work is planned
    clock.plan(10)
    clock.skip(2)  # a checkpoint holds 2 epochs: 8 left to spend
    now[0] = 120.0
    with caplog.at_level(logging.INFO, logger="dcvit"):
        clock.advance(2)  # 2 epochs in 20 s: 6 more take 60 s
        assert caplog.messages[-1] == "run: 25% of the fine-tuning done, 30s elapsed, about 1m00s left"
        now[0] = 180.0
        clock.advance(6)
        assert caplog.messages[-1] == "run: all planned fine-tuning done, 1m30s elapsed"
    unknown = progress.RunClock(start=0.0)
    unknown.plan(None)  # a structure that cannot tell its work in advance: elapsed time only
    unknown.advance(1)
    assert unknown.line() == "run: 3m00s elapsed"
    assert [progress.duration(s) for s in (0.4, 59.6, 3725)] == ["0s", "1m00s", "1h02m"]
