"""Ctrl-C during ``segment-stack`` and ``train``: one ``error:`` line saying it was cancelled
and how to resume, a non-zero exit, and the resumed job ends as an uninterrupted one."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_dataset

from tomoseg.cli import render


def _ctrl_c_after(units: int, real):
    """``render.progress_bar`` that presses Ctrl-C once ``units`` units of the job are done."""

    @contextmanager
    def progress_bar(enabled: bool = True, bar: bool = True):
        with real(enabled, bar) as show:

            def progress(event) -> None:
                if event.kind == "advance" and event.done == units:
                    os.kill(os.getpid(), signal.SIGINT)
                show(event)

            yield progress

    return progress_bar


def _labels(folder) -> np.ndarray:
    return zarr.open_array(str(folder / "labels.zarr" / "0"), mode="r")[:]


def test_ctrl_c_stops_segment_stack_and_the_same_command_resumes(tmp_path, run_cli, monkeypatch):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = tmp_path / "run"
    tiny = ["--crop-size", "32", "--crops", "8", "--epochs", "1", "--width", "4", "--quiet"]
    assert run_cli("train", "--data", data, "--out", run, *tiny)[0] == 0
    stack = tmp_path / "stack.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(stack, rng.integers(0, 255, (6, 48, 56), dtype=np.uint8))
    code, _, err = run_cli("segment-stack", run, stack, "--out", tmp_path / "full")
    assert code == 0, err

    real = render.progress_bar
    monkeypatch.setattr(render, "progress_bar", _ctrl_c_after(1, real))
    cut = tmp_path / "cut"
    code, out, err = run_cli("segment-stack", run, stack, "--out", cut)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1, err
    assert "segment-stack cancelled after 1/6 slices" in lines[0]
    assert lines[0].endswith("the same command resumes it")
    monkeypatch.setattr(render, "progress_bar", real)
    code, out, err = run_cli("segment-stack", run, stack, "--out", cut)
    assert code == 0 and "already done" in out and "0 already done" not in out, out + err
    np.testing.assert_array_equal(_labels(cut), _labels(tmp_path / "full"))


def test_ctrl_c_stops_train_and_resume_finishes_it(tmp_path, run_cli, monkeypatch):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = tmp_path / "run"
    tiny = ["--crop-size", "32", "--crops", "8", "--epochs", "3", "--width", "4", "--quiet"]
    real = render.progress_bar
    monkeypatch.setattr(render, "progress_bar", _ctrl_c_after(1, real))
    code, out, err = run_cli("train", "--data", data, "--out", run, *tiny)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 130 and len(lines) == 1, err
    assert (
        lines[0]
        == f"error: interrupted after epoch 1 of 3; resume with tomoseg train --resume {run}"
    )
    assert "epoch 1:" in out and "epoch 2:" not in out
    monkeypatch.setattr(render, "progress_bar", real)
    code, out, err = run_cli("train", "--resume", run, "--quiet")  # nothing retyped
    assert code == 0, err
    assert "epoch 3:" in out and "epoch 1:" not in out


@pytest.mark.slow  # about 15 s: a real terminal and a sweep case process
def test_ctrl_c_in_a_terminal_cancels_a_sweep_without_failing_its_case(tmp_path):
    """Ctrl-C reaches every process of the terminal's foreground group, the case processes
    too: the running case stops unrecorded (its rerun resumes it), never recorded as failed."""
    import subprocess
    import sys
    import time

    data = make_dataset(tmp_path / "d", shape=(48, 56))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "tomoseg.cli", "sweep", "--data", str(data), "--out", str(out)]
    cmd += ["--sizes", "32", "--counts", "8,16", "--epochs", "3"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 600
    assert proc.stdout is not None
    for line in proc.stdout:  # wait for the event: the first case has trained an epoch
        if "epoch 1:" in line:
            break
        assert time.monotonic() < deadline, "no epoch finished within 10 minutes"
    else:
        raise AssertionError(f"the sweep ended before an epoch: {proc.stderr.read()}")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    _, err = proc.communicate(timeout=600)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, err
    assert "sweep cancelled" in errors[0] and "the same command resumes it" in errors[0]
    assert not list(out.glob("cases/*/case.json")), "a cancelled case was recorded"
