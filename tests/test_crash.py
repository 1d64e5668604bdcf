"""Crash consistency of every long command: interrupted at any point, the same command again
gives the uninterrupted result, and leaves no temporary file behind.

* **kill -9** (``test_kill_then_same_command_equals_uninterrupted``): for each command
  (``predict``, ``evaluate``, ``score``, ``objects``, ``paths``, ``tune``, ``segment-stack``,
  ``train``, ``pretrain``)
  and each of its kill points, a subprocess runs the command as a user does and is killed with
  SIGKILL as soon as it reports the chosen progress event (``crashkit``); the same command is
  then run again (``train``, ``pretrain``: with ``--resume``, how a training resumes) and its
  outputs are compared with an uninterrupted run's: the same files, byte for byte (JSON without timings).
  Each point costs a subprocess start (torch import) and a run: slow, but for one cheap point
  of ``score`` (no training).
* **in-process** (fast): a cancel at each step of ``objects`` and ``score``, a full disk in
  ``predict`` (a write failing with ENOSPC; slow: a real, full tmpfs where one can be mounted),
  short temporary names, stale temporary files removed on the next run.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import mount_tmpfs, write_png
from crashkit import (
    JOB_FILE,
    SHAPE,
    TINY,
    Inputs,
    assert_same_outputs,
    kill_at,
    temporaries,
    without_timing,
)

from tomoseg.errors import TomosegError
from tomoseg.evaluation.objects import analyze_objects
from tomoseg.evaluation.score import score_folders
from tomoseg.io.writers import TMP_PREFIX, _host_tag, write_mask
from tomoseg.utils.progress import Cancelled

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------- kill -9


@dataclass(frozen=True)
class Case:
    """A command under test: its progress job's name, its arguments for inputs ``i`` and an
    output ``out``, its kill points ``(event kind, units done)``, what its rerun adds, and how
    its outputs compare."""

    job: str
    args: Callable[[Inputs, Path], list[Any]]
    points: tuple[tuple[str, int], ...]
    rerun: tuple[str, ...] = ()
    compare: Callable[[Path, Path], None] = assert_same_outputs
    #: the output is a copy of the trained run (``tune`` writes into it)
    in_run: bool = False
    #: the kill point cheap enough for the default suite (no training, a few seconds)
    quick: tuple[str, int] | None = None


def _same_decision(a: Path, b: Path) -> None:
    import json

    da, db = (without_timing(json.loads((r / "decision.json").read_text())) for r in (a, b))
    assert da == db
    ra, rb = (json.loads((r / "run.json").read_text()) for r in (a, b))
    assert without_timing(ra.get("decision")) == without_timing(rb.get("decision")) == da


def _same_training(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    def metrics(run: Path) -> list[dict[str, str]]:
        timing = ("seconds", "train_seconds", "crops_per_second")
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert metrics(a) == metrics(b)
    wa, wb = load_file(a / "last.safetensors"), load_file(b / "last.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _train_args(i: Inputs, out: Path) -> list[Any]:
    cfg = out.parent / "train.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "crops": 160, "epochs": 4}))
    return ["train", "--data", i["data"], "--out", out, "--config", cfg, "--quiet"]


def _pretrain_args(i: Inputs, out: Path) -> list[Any]:
    tiny = ["--width", "4", "--depth", "3", "--crop-size", "32", "--crops", "16"]
    return ["pretrain", "--images", i["volume"], "--out", out, *tiny, "--batch-size", "4",
            "--epochs", "4", "--precision", "32", "--quiet"]  # fmt: skip


CASES: dict[str, Case] = {
    "predict": Case(
        "predict",
        lambda i, o: [
            "predict",
            i["run"],
            i["data"] / "test" / "images",
            "--out",
            o,
            "--device",
            "cpu",
            "--probabilities",
        ],
        (("start", 0), ("advance", 4), ("advance", 9)),
    ),  # fmt: skip
    "evaluate": Case(
        "evaluate",
        lambda i, o: ["evaluate", i["run"], "--data", i["data"], "--out", o, "--device", "cpu"],
        (("start", 0), ("advance", 4), ("advance", 9)),
    ),
    "score": Case(
        "score",
        lambda i, o: ["score", "--pred", i["pred"], "--truth", i["truth"], "--out", o],
        (("start", 0), ("advance", 10), ("advance", 24)),
        quick=("advance", 10),
    ),
    "objects": Case(  # 5 slabs labelled, 5 written, then 20 meshes and the preview
        "objects",
        lambda i, o: ["objects", i["volume"], "--out", o, "--chunk-slices", "2"],
        (("advance", 2), ("advance", 7), ("advance", 12)),
    ),
    "paths": Case(  # 5 slabs skeletonised, the somas, the tables, the preview
        "paths",
        lambda i, o: ["paths", i["volume"], "--out", o, "--class", "1", "--chunk-slices", "2"],
        (("advance", 2), ("advance", 5), ("advance", 6)),
        quick=("advance", 2),
    ),
    "tune": Case(
        "tune",
        lambda i, o: ["tune", o, "--data", i["data"], "--device", "cpu", "--overwrite"],
        (("start", 0), ("advance", 2)),
        compare=_same_decision,
        in_run=True,
    ),
    "segment-stack": Case(
        "segment-stack",
        lambda i, o: ["segment-stack", i["run"], i["stack"], "--out", o, "--device", "cpu"],
        (("start", 0), ("advance", 8), ("advance", 16)),
        # the summary counts the slices of the last call: computed now or found done
        compare=lambda a, b: assert_same_outputs(a, b, drop=("computed", "skipped")),
    ),
    "segment-stack-planes": Case(  # killed after the input copy, and while averaging
        "segment-stack",
        lambda i, o: [
            "segment-stack",
            i["run"],
            i["stack"],
            "--out",
            o,
            "--device",
            "cpu",
            "--planes",
            "xy,xz,yz",
            "--voxel-size",
            "1,1,1",
        ],
        (("message", 0), ("advance", 8)),
        compare=lambda a, b: assert_same_outputs(a, b, drop=("computed", "skipped")),
    ),  # fmt: skip
    "train": Case(
        "train",
        _train_args,
        (("advance", 1), ("advance", 2)),
        rerun=("--resume",),
        compare=_same_training,
    ),  # fmt: skip
    "pretrain": Case(
        "pretrain",
        _pretrain_args,
        (("advance", 1), ("advance", 2)),
        rerun=("--resume",),
        compare=_same_training,
    ),
}

POINTS = [
    pytest.param(
        name, point, id=f"{name}-{point[0]}{point[1]}",
        marks=[] if point == case.quick else [pytest.mark.slow],
    )
    for name, case in CASES.items()
    for point in case.points
]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def baselines(inputs, tmp_path_factory) -> Callable[[str], Path]:
    """The uninterrupted output of a case (made once, in this process)."""
    from tomoseg.cli import main

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            case = CASES[name]
            out = tmp_path_factory.mktemp(f"base-{name}") / "out"
            if case.in_run:
                shutil.copytree(inputs["run"], out)
            assert main([str(a) for a in case.args(inputs, out)]) == 0
            made[name] = out
        return made[name]

    return get


@pytest.mark.parametrize("name,point", POINTS)
def test_kill_then_same_command_equals_uninterrupted(
    name, point, inputs, baselines, tmp_path, run_cli
):
    case = CASES[name]
    expected = baselines(name)
    out = tmp_path / "out"
    if case.in_run:
        shutil.copytree(inputs["run"], out)
    args = case.args(inputs, out)
    seen = kill_at(args, tmp_path / "events.jsonl", case.job, *point)
    assert seen, "no progress event was logged"
    code, _, err = run_cli(*args, *case.rerun)
    assert code == 0, err
    assert not temporaries(out), temporaries(out)
    case.compare(expected, out)


# ----------------------------------------------------------------------------- in-process


class CancelAfter:
    """A cancel token that is set from its ``n``-th check on (a job checks after each unit)."""

    def __init__(self, n: int):
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.n


def masks(root: Path, n: int = 8, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    truth, pred = root / "truth", root / "pred"
    for i in range(n):
        t = (rng.random((30, 40)) > 0.6).astype(np.uint8)
        p = t.copy()
        p[rng.random(t.shape) > 0.9] ^= 1
        write_png(truth / f"m{i}.png", t)
        write_png(pred / f"m{i}.png", p)
    return pred, truth


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_long_names_write_and_score(tmp_path, run_cli):
    """A 240-character name (valid: names may have 255) is written: the temporary name is short."""
    long = "a" * 240
    write_mask(tmp_path / f"{long}.png", np.ones((4, 4), np.uint8))
    assert (tmp_path / f"{long}.png").is_file()
    pred, truth = masks(tmp_path, 1)
    (pred / "m0.png").rename(pred / f"{long}.png")
    (truth / "m0.png").rename(truth / f"{long}.png")
    code, _, err = run_cli("score", "--pred", pred, "--truth", truth, "--out", tmp_path / "r")
    assert code == 0, err
    assert (tmp_path / "r" / "overlays").is_dir() and not temporaries(tmp_path)


def test_stale_temporaries_are_removed_on_the_next_run(tmp_path, run_cli):
    pred, truth = masks(tmp_path, 2)
    out = tmp_path / "r"
    (out / "overlays").mkdir(parents=True)
    tag = _host_tag()
    stale = [
        out / f"{TMP_PREFIX}{tag}-{dead_pid()}-abcdefgh.png",
        out / "overlays" / f"{TMP_PREFIX}{tag}-{dead_pid()}-abcdefg1.png",
    ]
    live = out / f"{TMP_PREFIX}{tag}-{os.getppid()}-abcdefg2.png"  # a process still running
    other = out / f"{TMP_PREFIX}mine.txt"  # not a temporary name of tomoseg's
    (out / f"{TMP_PREFIX}{tag}-{dead_pid()}-abcdefg3").mkdir()  # a temporary folder
    for p in [*stale, live, other]:
        p.write_bytes(b"half")
    code, _, err = run_cli("score", "--pred", pred, "--truth", truth, "--out", out)
    assert code == 0, err
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()
    assert sorted(p.name for p in temporaries(out)) == sorted([live.name, other.name])


def test_score_cancelled_then_the_same_call_and_another_finish(tmp_path):
    pred, truth = masks(tmp_path)
    ref = tmp_path / "ref"
    score_folders(pred, truth, ref)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        score_folders(pred, truth, out, cancel=CancelAfter(3))
    assert (out / "overlays").is_dir() and not (out / "metrics.json").exists()
    score_folders(pred, truth, out)  # no overwrite needed: nothing of it was finished
    assert_same_outputs(ref, out)
    # an unfinished report is no result: another call may take the folder too
    with pytest.raises(Cancelled):
        score_folders(pred, truth, out, tolerance=1.0, overwrite=True, cancel=CancelAfter(2))
    assert not (out / "metrics.json").exists()  # the replaced report is gone, not mixed
    score_folders(pred, truth, out)
    assert_same_outputs(ref, out)
    with pytest.raises(TomosegError, match="overwrite=True"):
        score_folders(pred, truth, out)  # a finished report is kept


@pytest.fixture(scope="module")
def label_volume(tmp_path_factory) -> np.ndarray:
    rng = np.random.default_rng(1)
    vol = np.zeros((6, 40, 40), np.uint8)
    for _ in range(12):
        z, y, x = rng.integers(0, 4), rng.integers(0, 34), rng.integers(0, 34)
        vol[z : z + 2, y : y + rng.integers(3, 6), x : x + rng.integers(3, 6)] = 1
    path = tmp_path_factory.mktemp("vol") / "labels.tif"
    import tifffile

    tifffile.imwrite(path, vol)
    return path


@pytest.mark.parametrize("step", [1, 4, 8], ids=["labelling", "volume", "meshes"])
def test_objects_interrupted_at_any_step_resumes(tmp_path, label_volume, step):
    """Interrupted while labelling, writing objects.zarr or making meshes (3 slabs: steps 1-3
    label, 4-6 write, then one per mesh): the same call finishes, without overwrite."""
    kw = {"chunk_slices": 2, "meshes": 5}
    ref = tmp_path / "ref"
    analyze_objects(label_volume, ref, **kw)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        analyze_objects(label_volume, out, cancel=CancelAfter(step), **kw)
    analyze_objects(label_volume, out, **kw)
    assert_same_outputs(ref, out)
    with pytest.raises(TomosegError, match="overwrite=True"):
        analyze_objects(label_volume, out, **kw)


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import make_dataset

    from tomoseg.config.schema import load_config
    from tomoseg.training.trainer import train

    root = tmp_path_factory.mktemp("predict")
    data = make_dataset(root / "data", shape=SHAPE, n={"train": 2, "val": 1, "test": 6})
    return Path(train(data, root / "run", load_config(None, TINY), progress=False)), data


def test_predict_disk_full_then_resume(tmp_path, trained, run_cli, monkeypatch):
    """A full disk at the third mask: one error line, the first two masks intact, no
    temporary file; the same command then writes only the missing masks, to the
    uninterrupted result; other settings on the unfinished folder are refused."""
    import tomoseg.inference.predict as predict_mod

    run, data = trained
    images = data / "test" / "images"
    args = ["predict", run, images, "--device", "cpu"]
    assert run_cli(*args, "--out", tmp_path / "ref")[0] == 0
    real, calls = predict_mod.write_mask, []

    def full_at_three(path, mask):
        calls.append(path)
        if len(calls) == 3:
            from tomoseg.io.writers import atomic_write

            def fail(tmp):
                tmp.write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")

            return atomic_write(path, fail)
        return real(path, mask)

    monkeypatch.setattr(predict_mod, "write_mask", full_at_three)
    out = tmp_path / "out"
    code, _, err = run_cli(*args, "--out", out)
    assert code == 1
    assert (
        err.strip()
        == "error: disk full while writing the mask of s02; free space and rerun to resume"
    )
    assert sorted(p.name for p in out.glob("*.png")) == ["s00.png", "s01.png"]
    assert not temporaries(out)
    monkeypatch.undo()
    code, _, err = run_cli(*args, "--out", out, "--format", "tif")
    assert code == 1 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(*args, "--out", out)
    assert code == 0, err
    assert_same_outputs(tmp_path / "ref", out)
    assert (out / JOB_FILE).is_file()


@pytest.mark.slow
def test_predict_on_a_really_full_disk_then_resume(tmp_path, trained, run_cli):
    """A real full file system (a 48 KiB tmpfs: about ten small files): one error line, what
    was written stays; after the disk grows the same command finishes to the uninterrupted
    result."""
    run, data = trained
    images = tmp_path / "images"
    rng = np.random.default_rng(5)
    for i in range(24):
        write_png(images / f"i{i:02d}.png", rng.integers(0, 100, SHAPE, dtype=np.uint8))
    args = ["predict", run, images, "--device", "cpu"]
    assert run_cli(*args, "--out", tmp_path / "ref")[0] == 0
    disk = tmp_path / "disk"
    disk.mkdir()
    why = mount_tmpfs(disk, "48k")
    if why:
        pytest.skip(why)
    try:
        out = disk / "out"
        code, _, err = run_cli(*args, "--out", out)
        assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
        assert "disk full" in err or "No space" in err, err
        written = sorted(out.glob("*.png")) if out.is_dir() else []
        assert len(written) < 24 and not temporaries(disk)
        before = {p.name: p.read_bytes() for p in written}
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        code, _, err = run_cli(*args, "--out", out)
        assert code == 0, err
        assert all((out / n).read_bytes() == b for n, b in before.items())
        assert_same_outputs(tmp_path / "ref", out)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
