"""segment_stack: slice order, equality with infer.segment, inputs, resume, bad inputs."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import TINY_TRAIN, make_dataset, sigkill_when, write_png

from tomoseg.api import segment_stack
from tomoseg.config.schema import load_config
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.inference import stack as stack_mod
from tomoseg.inference.predictor import Predictor
from tomoseg.io.images import read_image
from tomoseg.io.ome_zarr import write_ngff_attrs
from tomoseg.io.volumes import parse_voxel_size
from tomoseg.runtime.checkpoint import load_run
from tomoseg.training.trainer import train

SHAPE = (40, 48)
# precision 32: an untrained net has near-tied logits, bf16 rounding would flip them
TINY = {**TINY_TRAIN, "tile_size": 0, "precision": "32"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(one_thread, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny trained runs (different seeds): the model and 'another model'."""
    root = tmp_path_factory.mktemp("runs")
    data = make_dataset(root / "data", shape=SHAPE)
    a = train(data, root / "a", load_config(None, TINY), progress=False)
    b = train(data, root / "b", load_config(None, {**TINY, "seed": 1}), progress=False)
    return a, b


def slices(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 40, SHAPE).astype(np.uint8)
        y, x = rng.integers(0, SHAPE[0] - 10), rng.integers(0, SHAPE[1] - 10)
        img[y : y + 8, x : x + 8] += 80
        out.append(img)
    return out


def folder(path: Path, imgs: list[np.ndarray], names=None) -> Path:
    names = names or [f"z{i:04d}" for i in range(len(imgs))]
    for name, img in zip(names, imgs, strict=True):
        write_png(path / f"{name}.png", img)
    return path


def volume(out: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(out / "labels.zarr" / "0"), mode="r")[:])


def reference(run_dir: Path, imgs: list[np.ndarray]) -> np.ndarray:
    predictor = Predictor(load_run(run_dir))
    return np.stack([predictor.segment(im)[0] for im in imgs])


def test_natural_order_equals_segment_and_ngff(tmp_path, runs):
    imgs = slices(3)
    names = ["z10", "z9", "z8"]  # natural order: z8, z9, z10 (text order: z10, z8, z9)
    src = folder(tmp_path / "in", imgs, names)
    info = segment_stack(runs[0], src, tmp_path / "out", voxel_size=(2, 0.5, 0.5), device="cpu")
    assert info["slices"] == 3 and info["computed"] == 3 and info["slices_per_second"] > 0
    order = [imgs[names.index(n)] for n in ("z8", "z9", "z10")]
    vol = volume(tmp_path / "out")
    assert vol.dtype == np.uint8 and np.array_equal(vol, reference(runs[0], order))
    meta = json.loads((tmp_path / "out" / "stack.json").read_text())
    assert meta["input"]["ids"] == ["z8", "z9", "z10"] and meta["complete"]
    assert meta["input"]["shape"] == [3, *SHAPE] and len(meta["run"]["sha256"]) == 64
    g = zarr.open_group(str(tmp_path / "out" / "labels.zarr"), mode="r")
    ms = g.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["axes"][0]["unit"] == "micrometer" and ms["datasets"][0]["path"] == "0"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    assert g["0"].chunks == (1, *SHAPE)
    assert (tmp_path / "out" / "labels.zarr" / ".zgroup").is_file()  # zarr v2: NGFF 0.4


def test_tiff_format_and_batched_slices(tmp_path, runs):
    imgs = slices(4, seed=1)
    src = folder(tmp_path / "in", imgs)
    ref = reference(runs[0], imgs)
    segment_stack(runs[0], src, tmp_path / "t", format="tiff", device="cpu")
    files = sorted((tmp_path / "t" / "labels").glob("*.tif"))
    assert [f.stem for f in files] == [f"z{i:04d}" for i in range(4)]
    assert np.array_equal(np.stack([tifffile.imread(f) for f in files]), ref)
    segment_stack(runs[0], src, tmp_path / "b", batch_slices=3, device="cpu")
    assert (volume(tmp_path / "b") == ref).mean() > 0.999


def test_no_voxel_size_is_recorded_as_voxels_not_micrometres(tmp_path, runs):
    src = folder(tmp_path / "in", slices(2, seed=4))  # PNG-like TIFFs: no physical size
    info = segment_stack(runs[0], src, tmp_path / "o", device="cpu")
    assert info["voxel_size"] == [1.0, 1.0, 1.0] and info["unit"] is None
    ms = zarr.open_group(str(tmp_path / "o" / "labels.zarr"), mode="r").attrs["multiscales"][0]
    assert all("unit" not in a for a in ms["axes"])
    with pytest.raises(TomosegError, match="unit='micrometer' needs a voxel size.*voxel_size="):
        segment_stack(runs[0], src, tmp_path / "u", unit="micrometer", device="cpu")


def test_multipage_tiff_and_zarr_inputs(tmp_path, runs, monkeypatch):
    imgs = slices(3, seed=2)
    ref = reference(runs[0], imgs)
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.stack(imgs), imagej=True, metadata={"spacing": 4.0, "unit": "um"})

    def whole(*a, **k):
        raise AssertionError("the whole stack was read at once")

    monkeypatch.setattr(tifffile, "imread", whole)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", whole)
    # tifffile's imagej=True declares a plain 3D array's slices as channels: read as Z, said so
    with pytest.warns(TomosegWarning, match="read as 3 Z slices"):
        info = segment_stack(runs[0], tif, tmp_path / "o1", device="cpu")
    monkeypatch.undo()
    assert np.array_equal(volume(tmp_path / "o1"), ref)
    assert info["voxel_size"][0] == 4.0 and info["unit"] == "micrometer"
    # plain zarr array
    zarr.create_array(str(tmp_path / "a.zarr"), data=np.stack(imgs), chunks=(1, *SHAPE))
    segment_stack(runs[0], tmp_path / "a.zarr", tmp_path / "o2", device="cpu")
    assert np.array_equal(volume(tmp_path / "o2"), ref)
    # OME-Zarr group: level 0, and the voxel size from its metadata
    g = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w", zarr_format=2)
    g.create_array("0", data=np.stack(imgs)[None], chunks=(1, 1, *SHAPE))
    g.create_array("1", data=np.stack(imgs)[None, :, ::2, ::2])
    write_ngff_attrs(g, "raw", (3.0, 0.7, 0.7), "nanometer")
    info = segment_stack(runs[0], tmp_path / "ome.zarr", tmp_path / "o3", device="cpu")
    assert np.array_equal(volume(tmp_path / "o3"), ref)
    assert info["voxel_size"] == [3.0, 0.7, 0.7] and info["unit"] == "nanometer"


def test_resume_identity(tmp_path, runs):
    imgs = slices(12, seed=3)
    src = folder(tmp_path / "in", imgs)
    segment_stack(runs[0], src, tmp_path / "full", device="cpu")
    out = tmp_path / "out"
    seen = []

    def stop_after_two(event):
        seen.append((event.done, event.total))
        if event.done >= 2:
            raise KeyboardInterrupt  # like Ctrl-C / a kill after two slices

    with pytest.raises(KeyboardInterrupt):
        segment_stack(runs[0], src, out, device="cpu", progress=stop_after_two)
    assert seen[:2] == [(0, 12), (1, 12)]  # start, then one event per slice
    marks = {f.name: f.stat().st_mtime_ns for f in (out / "progress").iterdir()}
    assert 2 <= len(marks) < 12  # the writer finishes the slices already computed
    assert not json.loads((out / "stack.json").read_text())["complete"]
    # a slice half-written when the process died (no marker): garbage in its chunk
    first_missing = min(set(range(12)) - {int(n) for n in marks})
    chunk = out / "labels.zarr" / "0" / str(first_missing) / "0" / "0"
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(b"half-written")
    info = segment_stack(runs[0], src, out, device="cpu")
    assert info["computed"] == 12 - len(marks) and info["skipped"] == len(marks)
    after = {f.name: f.stat().st_mtime_ns for f in (out / "progress").iterdir()}
    assert len(after) == 12 and all(after[n] == t for n, t in marks.items())  # not recomputed
    assert np.array_equal(volume(out), volume(tmp_path / "full"))
    again = segment_stack(runs[0], src, out, device="cpu")  # complete: nothing to do
    assert again["computed"] == 0


def test_refuses_other_model_or_input(tmp_path, runs):
    a = folder(tmp_path / "a", slices(2, seed=4))
    b = folder(tmp_path / "b", slices(3, seed=5))
    out = tmp_path / "out"
    segment_stack(runs[0], a, out, device="cpu")
    with pytest.raises(TomosegError, match="another model"):
        segment_stack(runs[1], a, out, device="cpu")
    with pytest.raises(TomosegError, match="another input"):
        segment_stack(runs[0], b, out, device="cpu")
    with pytest.raises(TomosegError, match="another format"):
        segment_stack(runs[0], a, out, format="tiff", device="cpu")
    info = segment_stack(runs[1], b, out, device="cpu", overwrite=True)
    assert info["computed"] == 3 and volume(out).shape == (3, *SHAPE)


def test_bad_slices_are_named_and_earlier_ones_stay_finished(tmp_path, runs):
    imgs = slices(5, seed=6)
    src = folder(tmp_path / "in", imgs)
    (src / "z0002.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    with pytest.raises(TomosegError, match="z0002") as exc:
        segment_stack(runs[0], src, out, format="tiff", device="cpu")
    assert "\n" not in str(exc.value)
    assert sorted(f.name for f in (out / "progress").iterdir()) == ["000000", "000001"]
    assert sorted(f.stem for f in (out / "labels").glob("*.tif")) == ["z0000", "z0001"]
    write_png(src / "z0002.png", imgs[2])  # repaired: the same call resumes
    info = segment_stack(runs[0], src, out, format="tiff", device="cpu")
    assert info["computed"] == 3 and info["skipped"] == 2
    # another shape in the middle
    write_png(src / "z0003.png", np.zeros((40, 40), np.uint8))
    with pytest.raises(TomosegError, match=r"slice z0003 has shape \(40, 40\)"):
        segment_stack(runs[0], src, tmp_path / "o2", device="cpu")
    assert sorted(f.name for f in (tmp_path / "o2" / "progress").iterdir()) == [
        "000000",
        "000001",
        "000002",
    ]


@pytest.mark.parametrize(
    "case,match",
    [
        ("empty", "no images"),
        ("gap", "slice z0002 is missing"),
        ("missing", "input not found"),
        ("not_stack", "not a folder of slices"),
        ("voxel", "three positive numbers"),
        ("format", "format=.png.: must be zarr or tiff"),
    ],
)
def test_bad_inputs(tmp_path, runs, case, match):
    src = tmp_path / "in"
    src.mkdir()
    kw = {}
    if case == "gap":
        folder(src, slices(3), ["z0000", "z0001", "z0003"])
    elif case == "missing":
        src = tmp_path / "nope"
    elif case == "not_stack":
        src = tmp_path / "x.txt"
        src.write_text("hello")
    elif case == "voxel":
        folder(src, slices(1))
        kw["voxel_size"] = (1, 0, 1)
    elif case == "format":
        folder(src, slices(1))
        kw["format"] = "png"
    with pytest.raises(TomosegError, match=match) as exc:
        segment_stack(runs[0], src, tmp_path / "out", device="cpu", **kw)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("bad", [(1, 2), (1, -1, 1), "a,b,c", (0, 1, 1), (1, float("nan"), 1)])
def test_voxel_size_validation(bad):
    with pytest.raises(TomosegError, match="three positive numbers"):
        parse_voxel_size(bad)
    assert parse_voxel_size("2, 1,1") == (2.0, 1.0, 1.0)


def test_disk_full_is_a_one_liner_and_resumable(tmp_path, runs, monkeypatch):
    imgs = slices(4, seed=7)
    src = folder(tmp_path / "in", imgs)
    from tomoseg.inference import stack_sinks

    real = stack_sinks._ZarrWriter.write

    def full_at_two(self, i, labels):
        if i == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, i, labels)

    monkeypatch.setattr(stack_sinks._ZarrWriter, "write", full_at_two)
    out = tmp_path / "out"
    with pytest.raises(TomosegError) as exc:
        segment_stack(runs[0], src, out, device="cpu")
    assert str(exc.value) == "disk full while writing slice z0002; free space and rerun to resume"
    assert sorted(f.name for f in (out / "progress").iterdir()) == ["000000", "000001"]
    monkeypatch.undo()
    info = segment_stack(runs[0], src, out, device="cpu")
    assert info["computed"] == 2
    assert np.array_equal(volume(out), reference(runs[0], imgs))


def test_read_image_agrees_with_folder_order(tmp_path):
    """The id order is io.list_images's natural order (z2 before z10)."""
    src = folder(tmp_path / "in", slices(3), ["z10", "z2", "z1"])
    s = stack_mod.open_source(src, allow_gaps=True)
    assert s.ids == ["z1", "z2", "z10"] and s.shape == SHAPE
    assert np.array_equal(read_image(s.files[0]), read_image(src / "z1.png"))


@pytest.mark.slow  # about 11 s; the default suite resumes segment-stack after a cancel
def test_sigkill_then_same_command_resumes_identically(tmp_path, runs):
    """A real ``kill -9`` of ``tomoseg segment-stack`` mid-stack, then the same command again."""
    import os
    import subprocess
    import sys

    n = 120
    rng = np.random.default_rng(7)
    big = [rng.integers(0, 120, (160, 192)).astype(np.uint8) for _ in range(n)]
    src = folder(tmp_path / "in", big)
    segment_stack(runs[0], src, tmp_path / "full", device="cpu")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tomoseg.cli", "segment-stack", str(runs[0]), str(src)]
    cmd += ["--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    marks = out / "progress"
    sigkill_when(proc, lambda: marks.is_dir() and len(os.listdir(marks)) >= 3)
    done_before = len(os.listdir(marks))
    assert 3 <= done_before < n
    assert not json.loads((out / "stack.json").read_text())["complete"]
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr[-500:]
    meta = json.loads((out / "stack.json").read_text())
    assert meta["complete"] and meta["summary"]["skipped"] >= done_before
    assert meta["summary"]["computed"] + meta["summary"]["skipped"] == n
    assert np.array_equal(volume(out), volume(tmp_path / "full"))


# ----------------------------------------------------------------------------- io_workers


def nan_slices(n: int, seed: int = 8) -> list[np.ndarray]:
    """float32 slices with NaN (outside the field of view) and a few infinite pixels."""
    imgs = [im.astype(np.float32) for im in slices(n, seed)]
    imgs[1][:6, :10] = np.nan
    imgs[-1][-1, -3:] = [np.inf, -np.inf, np.nan]
    return imgs


def marker_texts(out: Path) -> dict[str, str]:
    return {f.name: f.read_text() for f in (out / "progress").iterdir()}


@pytest.mark.parametrize("kind", ["folder", "tiff", "zarr"])
def test_io_workers_equal_threads_byte_for_byte(tmp_path, runs, kind):
    imgs = nan_slices(5)
    if kind == "folder":
        src = tmp_path / "in"
        src.mkdir()
        for k, im in enumerate(imgs):
            tifffile.imwrite(src / f"z{k:04d}.tif", im)
    elif kind == "tiff":
        src = tmp_path / "stack.tif"
        tifffile.imwrite(src, np.stack(imgs))
    else:
        src = tmp_path / "in.zarr"
        zarr.create_array(str(src), data=np.stack(imgs), chunks=(1, *SHAPE))
    fmt = "tiff" if kind == "folder" else "zarr"
    batch = 2 if kind == "zarr" else 1
    outs = {}
    for w in (0, 2):
        outs[w] = tmp_path / f"out{w}"
        info = segment_stack(
            runs[0], src, outs[w], format=fmt, device="cpu", batch_slices=batch, io_workers=w
        )
        assert info["computed"] == 5 and info["nonfinite"]["pixels"] == 63
    if fmt == "zarr":
        a, b = volume(outs[0]), volume(outs[2])
        assert a.tobytes() == b.tobytes() and (a[1][:6, :10] == 0).all()
    else:
        for f in sorted((outs[0] / "labels").glob("*.tif")):
            assert f.read_bytes() == (outs[2] / "labels" / f.name).read_bytes()
    assert marker_texts(outs[0]) == marker_texts(outs[2])  # non-finite counts per slice
    # the count of non-finite pixels first (then the intensity finding: float32 slices, 8-bit run)
    assert marker_texts(outs[0])["000001"].splitlines()[0] == "60"


def test_io_workers_interrupted_then_resumed_identically(tmp_path, runs):
    src = folder(tmp_path / "in", slices(10, seed=9))
    segment_stack(runs[0], src, tmp_path / "full", device="cpu", io_workers=0)

    def stop_after_two(event):
        if event.done >= 2:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        segment_stack(runs[0], src, out, device="cpu", io_workers=2, progress=stop_after_two)
    marks = sorted((out / "progress").iterdir())
    assert 2 <= len(marks) < 10  # the writes already submitted were finished
    info = segment_stack(runs[0], src, out, device="cpu", io_workers=2)
    assert info["computed"] + info["skipped"] == 10 and info["skipped"] == len(marks)
    assert volume(out).tobytes() == volume(tmp_path / "full").tobytes()


@pytest.mark.parametrize("io_workers", [0, 2])
def test_cancel_midway_then_rerun_equals_uninterrupted(tmp_path, runs, io_workers):
    """``cancel`` set from the progress callback (an event, not a timer) stops the job at the
    next slice with ``Cancelled``, its finished slices kept; the same call resumes."""
    import threading

    from tomoseg.utils.progress import Cancelled

    src = folder(tmp_path / "in", slices(10, seed=12))
    segment_stack(runs[0], src, tmp_path / "full", device="cpu", io_workers=0)
    cancel = threading.Event()

    def progress(event):
        if event.done >= 2:
            cancel.set()

    out = tmp_path / "out"
    with pytest.raises(Cancelled, match=r"segment-stack cancelled after \d+/10 slices"):
        segment_stack(
            runs[0], src, out, device="cpu", io_workers=io_workers, progress=progress, cancel=cancel
        )
    marks = sorted(f.name for f in (out / "progress").iterdir())
    assert 2 <= len(marks) < 10  # the slices computed before the cancel are written
    assert not json.loads((out / "stack.json").read_text())["complete"]
    events = []
    info = segment_stack(
        runs[0], src, out, device="cpu", io_workers=io_workers, progress=events.append
    )
    assert info["skipped"] == len(marks) and info["computed"] == 10 - len(marks)
    assert (events[0].kind, events[0].done, events[0].total) == ("start", len(marks), 10)
    advances = [e for e in events if e.kind == "advance"]
    assert [e.done for e in advances] == list(range(len(marks) + 1, 11))
    assert events[-1].kind == "end" and events[-1].done == 10
    assert volume(out).tobytes() == volume(tmp_path / "full").tobytes()


def test_io_workers_bad_slice_is_one_error_line(tmp_path, runs, run_cli):
    src = folder(tmp_path / "in", slices(6, seed=10))
    (src / "z0002.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    args = ["segment-stack", runs[0], src, "--out", out, "--device", "cpu", "--format", "tiff"]
    code, _, err = run_cli(*args, "--io-workers", "2")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "z0002" in lines[0] and "Traceback" not in err
    # the slices before it are finished, none after it
    assert sorted(f.name for f in (out / "progress").iterdir()) == ["000000", "000001"]
    assert sorted(f.stem for f in (out / "labels").glob("*.tif")) == ["z0000", "z0001"]
    # a slice of another shape, read in a worker, through the API
    write_png(src / "z0002.png", np.zeros((40, 40), np.uint8))
    with pytest.raises(TomosegError, match=r"slice z0002 has shape \(40, 40\)") as exc:
        segment_stack(runs[0], src, out, format="tiff", device="cpu", io_workers=1)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("bad", ["-1", "two"])
def test_cli_bad_io_workers_is_one_error_line(tmp_path, runs, run_cli, bad):
    src = folder(tmp_path / "in", slices(1))
    code, _, err = run_cli(
        "segment-stack", runs[0], src, "--out", tmp_path / "o", "--io-workers", bad
    )
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "io-workers" in lines[0]
    for value in (-1, 1.5, True):
        with pytest.raises(TomosegError, match=r"io_workers=\S+: must be an integer >= 0"):
            segment_stack(runs[0], src, tmp_path / "o", io_workers=value)


def test_auto_io_workers_and_write_errors(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    from tomoseg.inference.stack_io import auto_io_workers, worker_error, write_slice

    assert [auto_io_workers(True, c) for c in (1, 2, 3, 4, 6, 16)] == [0, 0, 1, 2, 4, 4]
    assert auto_io_workers(False, 64) == 0  # the network on the CPU: threads

    class Full:
        out, ids = tmp_path, ["z0000", "z0001"]

        def write(self, i, labels):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(TomosegError) as exc:
        write_slice(Full(), 1, np.zeros(SHAPE, np.uint8), 0)  # type: ignore[arg-type]
    assert str(exc.value) == "disk full while writing slice z0001; free space and rerun to resume"
    err = worker_error(BrokenProcessPool("gone"), "reading slice z0007")
    assert isinstance(err, TomosegError) and "while reading slice z0007" in str(err)


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    import os

    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = (Path("/proc") / d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                pids.append(int(d))
    return pids


LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _wait_session_gone(sid: int, seconds: float = 15.0) -> list[int]:
    import time

    deadline = time.time() + seconds
    while _session(sid) and time.time() < deadline:
        time.sleep(0.05)
    return _session(sid)


@LINUX_PROC
def test_io_pool_owner_sigkilled_leaves_no_process(tmp_path):
    """A process holding an IOPool (2 workers, forkserver, resource tracker) is ``kill -9``-ed:
    every process it started ends (fast: no torch, no model)."""
    import os
    import subprocess
    import sys

    src = folder(tmp_path / "in", slices(3))
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tomoseg.data.normalization import Normalization\n"
        "from tomoseg.inference.stack_io import IOPool\n"
        "from tomoseg.io.volumes import open_source\n"
        f"src = open_source({str(src)!r})\n"
        f"pool = IOPool(src, Path({str(tmp_path)!r}), 'tiff', Normalization(lower=0, upper=1),"
        " 'background', 2, 3, 3)\n"
        "[f.result() for f in [pool.read(0, 0), pool.read(1, 1), pool.read(2, 2)]]\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    err = tmp_path / "stderr.txt"  # not a pipe: an orphan holding it would hang the test
    with open(err, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=f,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready", err.read_text()
    assert len(_session(proc.pid)) >= 4  # owner, forkserver, 2 workers (+ resource tracker)
    sigkill_when(proc, lambda: True)
    assert _wait_session_gone(proc.pid) == [], "processes left after kill -9 of the owner"


@pytest.mark.slow
@LINUX_PROC
def test_io_workers_sigkill_leaves_no_orphan_and_resumes(tmp_path, runs):
    """``kill -9`` of ``tomoseg segment-stack --io-workers 2``: its worker processes exit too,
    and the same command completes the stack identically."""
    import os
    import subprocess
    import sys

    n = 120
    rng = np.random.default_rng(11)
    src = folder(
        tmp_path / "in", [rng.integers(0, 120, (160, 192)).astype(np.uint8) for _ in range(n)]
    )
    segment_stack(runs[0], src, tmp_path / "full", device="cpu", io_workers=0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tomoseg.cli", "segment-stack", str(runs[0]), str(src)]
    cmd += ["--out", str(out), "--device", "cpu", "--io-workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "wb") as f:  # not a pipe: orphans would hang the test
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=f, env=env, start_new_session=True
        )
    marks = out / "progress"
    seen: list[int] = []

    def ready() -> bool:
        seen[:] = _session(proc.pid)
        return marks.is_dir() and len(os.listdir(marks)) >= 3

    sigkill_when(proc, ready)
    assert len(seen) >= 4, seen  # the CLI, the forkserver and two workers (+ resource tracker)
    assert _wait_session_gone(proc.pid) == [], "orphan worker processes after kill -9"
    done_before = len(os.listdir(marks))
    assert 3 <= done_before < n
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr[-500:]
    meta = json.loads((out / "stack.json").read_text())
    assert meta["complete"] and meta["summary"]["computed"] + meta["summary"]["skipped"] == n
    assert volume(out).tobytes() == volume(tmp_path / "full").tobytes()


def test_io_pool_from_a_script_without_main_guard(tmp_path):
    """The workers never re-import ``__main__``: a script without an ``if __name__ ==
    "__main__":`` guard runs its top-level code once (multiprocessing would run it per worker)."""
    import os
    import subprocess
    import sys

    src = folder(tmp_path / "in", slices(2))
    script = tmp_path / "script.py"
    script.write_text(
        "print('top-level code ran', flush=True)\n"
        "from pathlib import Path\n"
        "from tomoseg.data.normalization import Normalization\n"
        "from tomoseg.inference.stack_io import IOPool\n"
        "from tomoseg.io.volumes import open_source\n"
        f"src = open_source({str(src)!r})\n"
        f"with IOPool(src, Path({str(tmp_path)!r}), 'tiff', Normalization(lower=0, upper=1),"
        " 'background', 2, 2, 2) as pool:\n"
        "    print([pool.read(i, i).result()[0] for i in range(2)], flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.splitlines() == ["top-level code ran", "[0, 0]"], proc.stdout
