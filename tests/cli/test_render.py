"""What a user reads while a long job runs: one bar with the whole job's ETA on a terminal,
summaries on their own lines, plain unwrapped lines in a log file; Ctrl-C asks the job to
stop, a second Ctrl-C aborts."""

from __future__ import annotations

import io
import os
import re
import signal
import time

import pytest
from rich.console import Console

from tomoseg.cli.cancel import cancel_on_interrupt
from tomoseg.cli.render import LOG_WIDTH, ProgressRenderer, make_console
from tomoseg.utils.progress import Cancelled, JobProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUMMARY = "epoch 2: loss 0.123456, val IoU 0.987654, 12.345678 s"


def _job(renderer: ProgressRenderer, cancel=None) -> JobProgress:
    job = JobProgress("train", "epoch", total=3, callback=renderer, cancel=cancel)
    job.start()
    job.message("class weights (none): 1, 1")
    job.advance(message=SUMMARY.replace("2", "1", 1))
    job.advance(message=SUMMARY)
    return job


def test_log_file_gets_plain_whole_lines_with_the_eta():
    buf = io.StringIO()
    out = Console(file=buf, width=40, soft_wrap=True)  # a narrow, non-terminal output
    _job(ProgressRenderer(out)).end()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "class weights (none): 1, 1"
    assert re.fullmatch(r"train: 2/3 epochs, ETA \d+:\d\d:\d\d: " + re.escape(SUMMARY), lines[2])
    assert len(lines) == 3 and not ANSI.search(buf.getvalue())


def test_console_without_terminal_does_not_wrap(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr("sys.stdout", io.StringIO())  # a log file, as under Slurm or nohup
    console = make_console()
    assert not console.is_terminal and console.width >= LOG_WIDTH and console.soft_wrap


def test_terminal_bar_keeps_summaries_on_their_own_lines():
    buf = io.StringIO()
    out = Console(file=buf, width=100, force_terminal=True, color_system=None)
    renderer = ProgressRenderer(out)
    try:
        _job(renderer).end()
    finally:
        renderer.close()
    text = ANSI.sub("", buf.getvalue()).replace("\r", "\n")
    lines = [line.rstrip() for line in text.splitlines()]
    assert SUMMARY in lines, "the epoch summary shares its line with something else"
    bars = [line for line in lines if "2/3 epochs" in line]
    assert bars and "ETA 0:00:00" in bars[-1] and "train" in bars[-1]


def test_first_ctrl_c_sets_cancel_second_aborts():
    # Python's own handler, as in a terminal (a shell's background job starts with SIGINT
    # ignored, and pytest keeps that)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with cancel_on_interrupt() as cancel:
            os.kill(os.getpid(), signal.SIGINT)
            assert cancel.wait(5), "the first Ctrl-C did not set the cancel event"
            with pytest.raises(Cancelled, match="train cancelled after 0/3 epochs"):
                _job(ProgressRenderer(Console(file=io.StringIO())), cancel=cancel)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler runs (and raises) as soon as the signal arrives
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, outer)


def test_log_of_a_long_job_is_not_a_line_per_unit():
    buf = io.StringIO()
    job = JobProgress(
        "segment-stack", "slice", total=500, callback=ProgressRenderer(Console(file=buf))
    )
    for _ in range(500):
        job.advance()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("segment-stack: 1/500 slices")
    assert lines[-1].startswith("segment-stack: 500/500 slices") and len(lines) < 10
