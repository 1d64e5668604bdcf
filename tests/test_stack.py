"""segment_stack: slice order, equality with infer.segment, inputs, resume, bad inputs."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_dataset, sigkill_when, write_png

from tomoseg.config.schema import load_config
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.inference import stack as stack_mod
from tomoseg.inference.predictor import segment
from tomoseg.inference.stack import segment_stack
from tomoseg.io.images import read_image
from tomoseg.io.ome_zarr import write_ngff_attrs
from tomoseg.io.volumes import parse_voxel_size
from tomoseg.runtime.checkpoint import load_run
from tomoseg.training.trainer import train

SHAPE = (40, 48)
TINY = {"crop_size": 32, "crops": 16, "epochs": 1, "batch_size": 4, "width": 4, "depth": 3}
TINY["precision"] = "32"  # an untrained net has near-tied logits: bf16 rounding would flip them


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
    run = load_run(run_dir)
    return np.stack([segment(run, im)[0] for im in imgs])


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
    segment_stack(runs[0], src, tmp_path / "t", fmt="tiff", device="cpu")
    files = sorted((tmp_path / "t" / "labels").glob("*.tif"))
    assert [f.stem for f in files] == [f"z{i:04d}" for i in range(4)]
    assert np.array_equal(np.stack([tifffile.imread(f) for f in files]), ref)
    segment_stack(runs[0], src, tmp_path / "b", batch_slices=3, device="cpu")
    assert (volume(tmp_path / "b") == ref).mean() > 0.999


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

    def stop_after_two(done, total):
        seen.append((done, total))
        if done >= 2:
            raise KeyboardInterrupt  # like Ctrl-C / a kill after two slices

    with pytest.raises(KeyboardInterrupt):
        segment_stack(runs[0], src, out, device="cpu", progress=stop_after_two)
    assert seen[0] == (1, 12)
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
        segment_stack(runs[0], a, out, fmt="tiff", device="cpu")
    info = segment_stack(runs[1], b, out, device="cpu", overwrite=True)
    assert info["computed"] == 3 and volume(out).shape == (3, *SHAPE)


def test_bad_slices_are_named_and_earlier_ones_stay_finished(tmp_path, runs):
    imgs = slices(5, seed=6)
    src = folder(tmp_path / "in", imgs)
    (src / "z0002.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    with pytest.raises(TomosegError, match="z0002") as exc:
        segment_stack(runs[0], src, out, fmt="tiff", device="cpu")
    assert "\n" not in str(exc.value)
    assert sorted(f.name for f in (out / "progress").iterdir()) == ["000000", "000001"]
    assert sorted(f.stem for f in (out / "labels").glob("*.tif")) == ["z0000", "z0001"]
    write_png(src / "z0002.png", imgs[2])  # repaired: the same call resumes
    info = segment_stack(runs[0], src, out, fmt="tiff", device="cpu")
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
        ("format", "format must be zarr or tiff"),
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
        kw["fmt"] = "png"
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
    real = stack_mod._Sink.write

    def full_at_two(self, i, labels):
        if i == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, i, labels)

    monkeypatch.setattr(stack_mod._Sink, "write", full_at_two)
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
