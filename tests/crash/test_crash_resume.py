"""Interrupted jobs resume (in-process, fast): a cancel or a full disk at a chosen unit, then the
same call gives the uninterrupted result; temporary names stay short; the temporary files of
an interrupted write are removed on the next run. The real ``kill -9`` of every command is in
``test_crash_kill.py`` (slow)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_png
from crashkit import JOB_FILE, SHAPE, TINY, assert_same_outputs, temporaries

from tomoseg.errors import TomosegError
from tomoseg.evaluation.objects import analyze_objects
from tomoseg.evaluation.score import score_folders
from tomoseg.io.writers import TMP_PREFIX, _host_tag, write_mask
from tomoseg.utils.progress import Cancelled

pytestmark = pytest.mark.usefixtures("one_thread")


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


def _mount_tmpfs(where: Path, size: str) -> str | None:
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


@pytest.mark.slow
def test_predict_on_a_really_full_disk_then_resume(tmp_path, trained, run_cli):
    """A real full file system (a 48 KiB tmpfs: about ten small files): one error line, what
    was written stays; after the disk grows the same command finishes to the uninterrupted
    result."""
    run, data = trained
    images = tmp_path / "images"
    rng = np.random.default_rng(5)
    for i in range(24):
        write_png(images / f"i{i:02d}.png", rng.integers(0, 255, SHAPE, dtype=np.uint8))
    args = ["predict", run, images, "--device", "cpu"]
    assert run_cli(*args, "--out", tmp_path / "ref")[0] == 0
    disk = tmp_path / "disk"
    disk.mkdir()
    why = _mount_tmpfs(disk, "48k")
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
