"""segment-stack --part I/N (job arrays) and --verify: parts give the single run's volume byte for
byte, sequentially, in threads and as concurrent processes (one killed and rerun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN, make_dataset, sigkill_when, write_png

from tomoseg.api import segment_stack
from tomoseg.config.schema import load_config
from tomoseg.errors import TomosegError
from tomoseg.inference.stack import missing_slices, parse_part, part_range
from tomoseg.training.trainer import train

SHAPE = (40, 48)
TINY = {**TINY_TRAIN, "tile_size": 0, "precision": "32"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(one_thread, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    data = make_dataset(root / "data", shape=SHAPE)
    a = train(data, root / "a", load_config(None, TINY), progress=False)
    b = train(data, root / "b", load_config(None, {**TINY, "seed": 1}), progress=False)
    return a, b


def stack(path: Path, n: int, shape=SHAPE, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for z in range(n):
        write_png(path / f"z{z:04d}.png", rng.integers(0, 120, shape).astype(np.uint8))
    return path


def tree(out: Path) -> dict[str, bytes]:
    """Every file of the label volume, by relative path (the byte-for-byte comparison)."""
    root = out / "labels.zarr"
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("bad", ["0/2", "3/2", "a/b", "1", "1/0", "-1/2", "1/2/3", ""])
def test_parse_part_refuses(bad):
    with pytest.raises(TomosegError, match=r"part='?\S+'?: must be I/N"):
        parse_part(bad)


def test_part_ranges_cover_whole_chunks():
    assert parse_part(" 2/3 ") == (2, 3) and parse_part((1, 1)) == (1, 1)
    for n_slices in (1, 7, 10, 1800):
        for parts in (1, 2, 3, 8, 12):
            for zc in (1, 4):
                rs = [part_range(n_slices, i, parts, zc) for i in range(1, parts + 1)]
                assert [z for r in rs for z in r] == list(range(n_slices))
                assert all(r.start % zc == 0 for r in rs if len(r))
    assert part_range(1800, 1, 8) == range(0, 225) and part_range(1800, 8, 8) == range(1575, 1800)


def test_parts_equal_single_run_and_verify(tmp_path, runs):
    src = stack(tmp_path / "in", 7)
    single = segment_stack(runs[0], src, tmp_path / "single", device="cpu")
    out = tmp_path / "parts"
    p2 = segment_stack(runs[0], src, out, device="cpu", part="2/2")
    assert (p2["first"], p2["last"], p2["computed"], p2["missing"]) == (3, 6, 4, 3)
    assert not json.loads((out / "stack.json").read_text())["complete"]
    with pytest.raises(TomosegError, match=r"3 of 7 slices are missing .*z0000-z0002 \(0-2\)"):
        segment_stack(runs[0], src, out, device="cpu", verify=True)
    p1 = segment_stack(runs[0], src, out, device="cpu", part="1/2")
    assert (p1["first"], p1["last"], p1["computed"], p1["complete"]) == (0, 2, 3, True)
    assert json.loads((out / "stack.json").read_text())["complete"]
    assert tree(out) == tree(tmp_path / "single") and single["computed"] == 7
    assert segment_stack(runs[0], src, out, device="cpu", verify=True)["complete"]
    again = segment_stack(runs[0], src, out, device="cpu", part="1/2")  # finished: nothing to do
    assert again["computed"] == 0 and again["skipped"] == 3
    final = segment_stack(runs[0], src, out, device="cpu")  # the final run without --part
    assert final["computed"] == 0 and tree(out) == tree(tmp_path / "single")


def test_parts_started_together_in_threads(tmp_path, runs):
    src = stack(tmp_path / "in", 9, seed=1)
    segment_stack(runs[0], src, tmp_path / "single", device="cpu")
    out, errors = tmp_path / "parts", []

    def part(i: int) -> None:
        try:
            segment_stack(runs[0], src, out, device="cpu", part=f"{i}/3")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=part, args=(i,)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert missing_slices(out, 9) == [] and tree(out) == tree(tmp_path / "single")
    assert not [p for p in out.iterdir() if p.name.endswith(".new")]  # no temporary left over


def test_part_into_another_jobs_output_is_refused(tmp_path, runs):
    src = stack(tmp_path / "in", 4)
    other = stack(tmp_path / "other", 4, seed=9)
    out = tmp_path / "out"
    segment_stack(runs[0], src, out, device="cpu", part="1/2")
    with pytest.raises(TomosegError, match="another model"):
        segment_stack(runs[1], src, out, device="cpu", part="2/2")
    with pytest.raises(TomosegError, match="another input"):
        segment_stack(runs[0], other, out, device="cpu", part="2/2")
    with pytest.raises(TomosegError, match="would erase the other parts"):
        segment_stack(runs[0], src, out, device="cpu", part="2/2", overwrite=True)
    with pytest.raises(TomosegError, match="holds no segmentation"):
        segment_stack(runs[0], src, tmp_path / "nothing", device="cpu", verify=True)
    assert missing_slices(out, 4) == [2, 3]  # part 1 is kept


@pytest.mark.parametrize("part", ["0/2", "3/2", "a/b"])
def test_cli_bad_part_is_one_error_line(tmp_path, runs, run_cli, part):
    src = stack(tmp_path / "in", 2)
    code, out, err = run_cli(
        "segment-stack", runs[0], src, "--out", tmp_path / "o", "--device", "cpu", "--part", part
    )
    lines = err.strip().splitlines()
    assert (
        code == 1 and len(lines) == 1 and lines[0].startswith(f"error: --part {part}: must be I/N")
    )
    assert not (tmp_path / "o").exists()


def test_cli_verify_lists_missing(tmp_path, runs, run_cli):
    src = stack(tmp_path / "in", 5)
    args = ["segment-stack", runs[0], src, "--out", tmp_path / "o", "--device", "cpu"]
    code, out, err = run_cli(*args, "--part", "1/2")
    assert code == 0 and "part 1/2 (slices 0-1 of 5)" in out and "3 slices of the stack" in out
    code, out, err = run_cli(*args, "--verify")
    assert code == 1 and err.strip() == (
        f"error: 3 of 5 slices are missing in {tmp_path / 'o'}: z0002-z0004 (2-4); "
        "rerun the parts that hold them (or once without part)"
    )
    code, out, err = run_cli(*args, "--part", "2/2")
    assert code == 0 and "the whole stack is complete" in out
    code, out, err = run_cli(*args, "--verify")
    assert code == 0 and "complete: all 5 slices" in out


@pytest.mark.slow  # long (10-25 s): keeps the default suite within 5 minutes
def test_concurrent_processes_one_killed_then_rerun(tmp_path, runs):
    """Two ``tomoseg segment-stack --part`` processes start together; part 1 gets ``kill -9``
    midway, part 2 finishes; rerunning part 1 completes a volume equal to the single run."""
    n = 80
    src = stack(tmp_path / "in", n, shape=(160, 192), seed=4)
    segment_stack(runs[0], src, tmp_path / "single", device="cpu")
    out = tmp_path / "parts"
    base = [sys.executable, "-m", "tomoseg.cli", "segment-stack", str(runs[0]), str(src)]
    base += ["--out", str(out), "--device", "cpu", "--part"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p1 = subprocess.Popen(
        [*base, "1/2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    p2 = subprocess.Popen(
        [*base, "2/2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    marks = out / "progress"

    def part1_started() -> bool:
        return marks.is_dir() and len([m for m in os.listdir(marks) if int(m) < n // 2]) >= 3

    sigkill_when(p1, part1_started)
    assert p2.wait(timeout=300) == 0, p2.stderr.read().decode()[-500:]
    left = [i for i in missing_slices(out, n) if i < n // 2]
    assert left and not [i for i in missing_slices(out, n) if i >= n // 2]
    assert not json.loads((out / "stack.json").read_text())["complete"]
    rerun = subprocess.run([*base, "1/2"], capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr[-500:]
    assert "the whole stack is complete" in rerun.stdout
    assert json.loads((out / "stack.json").read_text())["complete"]
    assert tree(out) == tree(tmp_path / "single")
