"""Shared fixtures: tiny datasets written in tmp folders, and a CLI runner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data, or skip the test with the reason."""
    d = SHARED / name
    if not (d / "dataset.json").is_file():
        pytest.skip(f"real data {d} is absent (it lives beside the repo in ../shared/data)")
    return d


#: how long a test waits for something a job is sure to do: far beyond what any machine
#: needs, so a slow or busy machine is never mistaken for a failure (only a hang is)
EVENT_DEADLINE = 600.0


def wait_for(ready, what: str, proc=None, deadline: float = EVENT_DEADLINE, poll: float = 0.005):
    """Wait until ``ready()`` is true; fail the test with a clear message when it never is.

    Args:
        ready: the event waited for (checked every ``poll`` seconds).
        what: the event in words, for the failure message.
        proc: a subprocess whose end before the event fails the test at once (the event can
            no longer happen); it is killed when the deadline passes.
        deadline: seconds before the test fails (never acted on as if the event had happened).
    """
    import time

    t0 = time.monotonic()
    while not ready():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}: {err}")
        if time.monotonic() - t0 > deadline:
            if proc is not None:
                proc.kill()
                proc.wait()
            pytest.fail(f"{what} did not happen within {deadline:.0f} s")
        time.sleep(poll)


def sigkill_when(proc, ready, what: str = "the awaited state", deadline: float = EVENT_DEADLINE):
    """SIGKILL a running subprocess as soon as ``ready()`` is true (a real ``kill -9``).

    Fails the test when the process ended on its own first (nothing was interrupted) or when
    ``ready()`` is not true within ``deadline`` seconds; it never kills at the deadline and
    carries on.

    Returns:
        The process's stderr (empty when it was not piped).
    """
    import os
    import signal

    wait_for(ready, what, proc=proc, deadline=deadline)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.stderr.read().decode()[-500:] if proc.stderr else ""


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path_factory, monkeypatch):
    """Compiled inference runtimes cache their ONNX exports in a test folder, not ~/.cache."""
    monkeypatch.setenv("TOMOSEG_CACHE", str(tmp_path_factory.getbasetemp() / "tomoseg-cache"))


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_dataset(
    root: Path,
    shape=(40, 48),
    n: dict | None = None,
    classes=("background", "fg"),
    seed: int = 0,
) -> Path:
    """A small dataset folder: blobs of class 1 (and 2) with intensity = class + noise."""
    rng = np.random.default_rng(seed)
    n = n or {"train": 3, "val": 1, "test": 2}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"classes": list(classes)}))
    k = len(classes)
    for split, count in n.items():
        for i in range(count):
            mask = np.zeros(shape, np.uint8)
            for c in range(1, k):
                for _ in range(2):
                    y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
                    mask[y : y + rng.integers(3, 9), x : x + rng.integers(3, 9)] = c
            img = (mask * 80 + rng.integers(0, 40, shape)).astype(np.uint8)
            write_png(root / split / "images" / f"s{i:02d}.png", img)
            write_png(root / split / "masks" / f"s{i:02d}.png", mask)
    return root


METRICS_JSON_KEYS = {
    "classes",
    "class_of_interest",
    "tolerance_px",
    "per_image",
    "mean",
    "pooled_iou",
}


#: the smallest training that runs every part of a run (modules add or change what they test)
TINY_TRAIN = {
    "crop_size": 32,
    "crops": 16,
    "epochs": 1,
    "batch_size": 4,
    "width": 4,
    "depth": 3,
    "tile_size": 64,
}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models on a busy 2-core machine run far faster
    (no spinning threads); the setting is restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny two-class run for the modules that only read it (uncertainty, suggest,
    fine-tuning from it, the napari widgets): ``(dataset folder, run folder)``; the dataset's
    ``test`` split holds six (40, 48) slices. Trained once per session, on one torch thread;
    no test writes into either folder."""
    import torch

    import tomoseg

    root = tmp_path_factory.mktemp("small_run")
    data = make_dataset(root / "data", shape=(40, 48), n={"train": 3, "val": 1, "test": 6})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tomoseg.train(data, root / "run", **TINY_TRAIN)
    finally:
        torch.set_num_threads(n)
    return data, run.path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from tomoseg.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run


def peak_rss() -> int:
    """This process's peak resident memory so far (bytes; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_error(run_cli, *args, warnings: bool = True, max_growth: int | None = None) -> str:
    """Run a CLI command that must fail and return its one ``error:`` line.

    Asserts exit status 1, exactly one ``error:`` line and no traceback; every other line of
    stderr a ``warning:`` (none at all with ``warnings=False``); with ``max_growth`` (bytes),
    the peak resident memory grew by less than that (the input was refused before any
    allocation its numbers decide)."""
    before = peak_rss()
    code, _, err = run_cli(*args)
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    allowed = ("error:", "warning:") if warnings else ("error:",)
    assert all(ln.startswith(allowed) for ln in lines), err
    if max_growth is not None:
        assert peak_rss() - before < max_growth, "refusing the input allocated memory"
    return errors[0]


def mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``where``; the reason when it cannot be done here."""
    if sys.platform != "linux":
        return "a small file system is mounted as a Linux tmpfs"
    if shutil.which("mount") is None:
        return "no mount command"
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        return f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {res.stderr.strip()}"
    return None


__all__ = [
    "EVENT_DEADLINE",
    "TINY_TRAIN",
    "make_dataset",
    "mount_tmpfs",
    "one_error",
    "peak_rss",
    "shared_dataset",
    "sigkill_when",
    "tifffile",
    "wait_for",
    "write_png",
]
