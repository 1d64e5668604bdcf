"""Shared fixtures: tiny datasets written in tmp folders, and a CLI runner."""

from __future__ import annotations

import json
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


def sigkill_when(proc, ready, timeout: float = 120.0, poll: float = 0.005) -> str:
    """SIGKILL a running subprocess as soon as ``ready()`` is true (a real ``kill -9``).

    Fails the test when the process ended on its own first (nothing was interrupted).

    Returns:
        The process's stderr (empty when it was not piped).
    """
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(poll)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
    assert killed, f"finished before it could be killed: {err}"
    return err


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


__all__ = ["TINY_TRAIN", "make_dataset", "shared_dataset", "write_png", "tifffile"]
