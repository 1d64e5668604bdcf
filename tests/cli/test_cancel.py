"""Ctrl-C during ``segment-stack``: one ``error:`` line saying it was cancelled, a non-zero
exit, and the same command resumes to the labels of an uninterrupted run."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import numpy as np
import tifffile
import zarr
from conftest import make_dataset

from tomoseg.cli import render


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

    @contextmanager
    def ctrl_c_after_first_slice(enabled: bool = True):
        with real(enabled) as show:

            def progress(event) -> None:
                if event.kind == "advance" and event.done == 1:  # the user presses Ctrl-C
                    os.kill(os.getpid(), signal.SIGINT)
                show(event)

            yield progress

    monkeypatch.setattr(render, "progress_bar", ctrl_c_after_first_slice)
    cut = tmp_path / "cut"
    code, out, err = run_cli("segment-stack", run, stack, "--out", cut)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1, err
    assert "segment-stack cancelled after 1/6 slices" in lines[0]
    monkeypatch.setattr(render, "progress_bar", real)
    code, out, err = run_cli("segment-stack", run, stack, "--out", cut)
    assert code == 0 and "already done" in out and "0 already done" not in out, out + err
    np.testing.assert_array_equal(_labels(cut), _labels(tmp_path / "full"))
