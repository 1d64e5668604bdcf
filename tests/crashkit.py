"""Helpers of the crash-consistency tests: build the inputs of every long command once, run a
command as a user does and ``kill -9`` it at one of its own progress events, and compare two
output folders (byte for byte; JSON without its timings and output paths).

The kill points come from the command's progress events, never from timings: the command runs
with ``TOMOSEG_PROGRESS_LOG`` naming a file (``tomoseg.cli.render.PROGRESS_LOG_ENV``), where
the CLI appends each event as a JSON line before drawing it; the test waits for the chosen event
(``conftest.sigkill_when``) and sends SIGKILL at once. The process has usually gone on a little
by then: the kill lands anywhere after that event, inside a write as often as between two.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from conftest import TINY_TRAIN, make_dataset, sigkill_when

from tomoseg.cli.render import PROGRESS_LOG_ENV
from tomoseg.io.jobs import JOB_FILE
from tomoseg.io.writers import TMP_PREFIX

#: a tiny run whose labels do not depend on bf16 rounding (near-tied logits of a barely
#: trained net)
TINY = {**TINY_TRAIN, "tile_size": 0, "precision": "32"}
SHAPE = (48, 56)


class Inputs:
    """Everything the long commands read, each group built when first asked for (a test of
    ``score`` or ``objects`` needs no training), under ``root``:

    * ``data`` (a dataset: 4 validation, 12 test images), ``run`` (a run trained on it),
      ``stack`` (a multi-page TIFF of 24 slices);
    * ``volume`` (a class-id volume with many objects), ``pred`` and ``truth`` (30 masks each
      to score).
    """

    def __init__(self, root: Path):
        self.root, self.paths = root, {}

    def __getitem__(self, key: str) -> Path:
        if key not in self.paths:
            group = self._trained if key in ("data", "run", "stack") else self._light
            self.paths.update(group(self.root))
        return self.paths[key]

    @staticmethod
    def _trained(root: Path) -> dict[str, Path]:
        from tomoseg.config.schema import load_config
        from tomoseg.training.trainer import train

        data = make_dataset(root / "data", shape=SHAPE, n={"train": 3, "val": 4, "test": 12})
        run = train(data, root / "run", load_config(None, TINY), progress=False)
        rng = np.random.default_rng(3)
        stack = root / "stack.tif"
        tifffile.imwrite(stack, rng.integers(0, 100, (24, *SHAPE), dtype=np.uint8))
        return {"data": data, "run": Path(run), "stack": stack}

    @staticmethod
    def _light(root: Path) -> dict[str, Path]:
        from PIL import Image

        rng = np.random.default_rng(4)
        volume = np.zeros((10, 64, 64), np.uint8)
        for _ in range(40):
            z, y, x = rng.integers(0, 8), rng.integers(0, 58), rng.integers(0, 58)
            dz, dy, dx = rng.integers(2, 4), rng.integers(3, 7), rng.integers(3, 7)
            volume[z : z + dz, y : y + dy, x : x + dx] = 1
        tifffile.imwrite(root / "volume.tif", volume)
        truth, pred = root / "scores" / "truth", root / "scores" / "pred"
        for d in (truth, pred):
            d.mkdir(parents=True)
        for i in range(30):
            t = (rng.random((64, 80)) > 0.7).astype(np.uint8)
            p = t.copy()
            p[rng.random(t.shape) > 0.9] ^= 1
            Image.fromarray(t).save(truth / f"m{i:02d}.png")
            Image.fromarray(p).save(pred / f"m{i:02d}.png")
        return {"volume": root / "volume.tif", "pred": pred, "truth": truth}


def events(log: Path) -> list[dict[str, Any]]:
    """The progress events a command has logged so far (a line being written is left out)."""
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def reached(log: Path, job: str, kind: str, done: int) -> bool:
    return any(e["job"] == job and e["kind"] == kind and e["done"] >= done for e in events(log))


def kill_at(args: list[Any], log: Path, job: str, kind: str, done: int) -> list[dict[str, Any]]:
    """Run ``tomoseg ARGS`` in a subprocess and SIGKILL it as soon as it has reported a
    ``kind`` event of ``job`` with at least ``done`` units done; returns the events seen."""
    env = {**os.environ, PROGRESS_LOG_ENV: str(log), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tomoseg.cli", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    sigkill_when(
        proc, lambda: reached(log, job, kind, done), f"a {job} {kind} event with {done} done"
    )
    return events(log)


def temporaries(folder: Path) -> list[Path]:
    """Temporary files and folders of atomic writes left in ``folder``."""
    return [p for p in Path(folder).rglob(f"{TMP_PREFIX}*")]


_TIMING = re.compile(r"second|elapsed|time|date|eta$")


def without_timing(obj: Any, drop: tuple[str, ...] = ()) -> Any:
    """A JSON value without the keys that hold durations or dates (and the keys ``drop``)."""
    if isinstance(obj, dict):
        return {
            k: without_timing(v, drop)
            for k, v in obj.items()
            if not _TIMING.search(k) and k not in drop
        }
    if isinstance(obj, list):
        return [without_timing(v, drop) for v in obj]
    return obj


def contents(
    folder: Path, skip: tuple[str, ...] = (), drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Relative path -> content of every file in ``folder``: bytes, or for JSON the parsed value
    without timings and with the folder's own path written ``OUT`` (so two output folders
    compare equal when they hold the same results)."""
    folder = Path(folder)
    out: dict[str, Any] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        if p.suffix == ".json":
            text = p.read_text().replace(str(folder.resolve()), "OUT").replace(str(folder), "OUT")
            out[rel] = without_timing(json.loads(text), drop)
        else:
            out[rel] = p.read_bytes()
    return out


def assert_same_outputs(
    a: Path, b: Path, skip: tuple[str, ...] = (), drop: tuple[str, ...] = ()
) -> None:
    """``a`` and ``b`` hold the same files with the same contents (see :func:`contents`)."""
    ca, cb = contents(a, skip, drop), contents(b, skip, drop)
    assert sorted(ca) == sorted(cb), (sorted(set(ca) ^ set(cb)))[:10]
    differ = [k for k in ca if ca[k] != cb[k]]
    assert not differ, f"files differ: {differ[:10]}"


__all__ = [
    "JOB_FILE",
    "SHAPE",
    "TINY",
    "assert_same_outputs",
    "Inputs",
    "contents",
    "events",
    "kill_at",
    "temporaries",
    "without_timing",
]
