"""``segment_stack(planes=...)`` / ``segment-stack --planes``: the mean of the xy, xz and yz
passes' class probabilities, equal to an in-memory computation, resumable after a cancel, and
anisotropic voxels refused with one line."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import tomoseg.inference.stack_planes as stack_planes
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import Predictor
from tomoseg.inference.stack import segment_stack
from tomoseg.utils.progress import Cancelled

pytestmark = pytest.mark.usefixtures("one_thread")


def _volume(shape=(10, 24, 32), seed=1) -> np.ndarray:
    """Blobs of intensity ~80-120 in noise of 0-40 (the tiny run's training intensities)."""
    rng = np.random.default_rng(seed)
    blobs = np.zeros(shape, np.uint8)
    for _ in range(6):
        z, y, x = (int(rng.integers(0, max(n - 4, 1))) for n in shape)
        blobs[z : z + 4, y : y + 6, x : x + 6] = 1
    return (blobs * 80 + rng.integers(0, 40, shape)).astype(np.uint8)


def _by_hand(p: Predictor, vol: np.ndarray) -> np.ndarray:
    """The argmax of the sum of the three planes' probabilities, each section segmented on
    its own with ``predict_proba`` and kept as float16."""
    z, h, w = vol.shape
    xy = np.stack([p.predict_proba(vol[i]) for i in range(z)], axis=1)  # (K, Z, Y, X)
    xz = np.stack([p.predict_proba(vol[:, i]) for i in range(h)], axis=2)
    yz = np.stack([p.predict_proba(vol[:, :, i]) for i in range(w)], axis=3)
    acc = sum(a.astype(np.float16).astype(np.float32) for a in (xy, xz, yz))
    return np.argmax(acc, axis=0).astype(np.uint8)


def _labels(out: Path) -> np.ndarray:
    return zarr.open_array(str(out / "labels.zarr" / "0"), mode="r")[:]


@pytest.fixture
def small_chunks(monkeypatch):
    """Slabs of 8 planes, so every pass has several (and a resume skips some)."""
    monkeypatch.setattr(stack_planes, "CHUNK", 8)


def test_three_planes_equal_the_in_memory_mean(small_run, small_chunks, tmp_path):
    p = Predictor.from_run(small_run[1])
    vol = _volume()
    want = _by_hand(p, vol)
    got = segment_stack(p, vol, tmp_path / "out", planes="xy,xz,yz", voxel_size=(1, 1, 1))
    assert got["planes"] == ["xy", "xz", "yz"] and got["computed"] == vol.shape[0]
    np.testing.assert_array_equal(_labels(tmp_path / "out"), want)
    np.testing.assert_array_equal(p.predict_volume(vol, planes="xy,xz,yz"), want)
    assert not (tmp_path / "out" / "planes").exists()  # the temporary stores are gone
    assert (_labels(tmp_path / "out") != p.predict_volume(vol)).any()  # xy alone differs


@pytest.mark.parametrize("stop_at", ["plane xz: 2/", "advance"])
def test_resume_after_a_cancel_gives_the_same_labels(small_run, small_chunks, tmp_path, stop_at):
    p = Predictor.from_run(small_run[1])
    vol = _volume()
    segment_stack(p, vol, tmp_path / "full", planes="xy,xz,yz", voxel_size=(1, 1, 1))
    cancel = threading.Event()

    def stop(event):
        if stop_at in event.message or event.kind == stop_at:
            cancel.set()

    cut = tmp_path / "cut"
    with pytest.raises(Cancelled):
        segment_stack(p, vol, cut, planes="xy,xz,yz", voxel_size=(1, 1, 1), progress=stop,
                      cancel=cancel)  # fmt: skip
    seen: list[str] = []
    done = segment_stack(p, vol, cut, planes="xy,xz,yz", voxel_size=(1, 1, 1),
                         progress=lambda e: seen.append(e.message))  # fmt: skip
    assert not any(m.startswith("plane xy") for m in seen)  # the finished pass was kept
    assert done["computed"] + done["skipped"] == vol.shape[0]
    np.testing.assert_array_equal(_labels(cut), _labels(tmp_path / "full"))


def test_other_planes_are_another_job(small_run, tmp_path):
    p = Predictor.from_run(small_run[1])
    vol = _volume((4, 40, 48))
    segment_stack(p, vol, tmp_path / "out")
    with pytest.raises(TomosegError, match="another inference"):
        segment_stack(p, vol, tmp_path / "out", planes="xy,yz", voxel_size=(1, 1, 1))


def _anisotropic_tiff(path: Path) -> Path:
    tifffile.imwrite(
        path, _volume((4, 40, 48)), imagej=True, resolution=(1.0, 1.0),
        metadata={"axes": "ZYX", "spacing": 3.0, "unit": "um"},
    )  # fmt: skip
    return path


def test_anisotropic_voxels_are_refused_by_the_api(small_run, tmp_path):
    tif = _anisotropic_tiff(tmp_path / "aniso.tif")
    p = Predictor.from_run(small_run[1])
    for call in (
        lambda: segment_stack(p, tif, tmp_path / "out", planes="xy,xz,yz"),
        lambda: p.predict_volume(tif, planes="xy,xz,yz"),
    ):
        with pytest.raises(TomosegError, match=r"3 x 1 x 1 micrometer .* ratio of 3.00") as e:
            call()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / "stack.json").exists()
    with pytest.raises(TomosegError, match="planes='xy,zz'"):
        p.predict_volume(tif, planes="xy,zz")


def test_anisotropic_voxels_are_refused_by_the_cli(small_run, run_cli, tmp_path):
    tif = _anisotropic_tiff(tmp_path / "aniso.tif")
    code, _, err = run_cli("segment-stack", small_run[1], tif, "--out", tmp_path / "out",
                           "--planes", "xy,xz,yz")  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: --planes xy,xz,yz")
    assert "ratio of 3.00" in lines[0] and "1.2" in lines[0]


def test_unknown_voxel_size_warns_and_proceeds(small_run, tmp_path):
    p = Predictor.from_run(small_run[1])
    with pytest.warns(UserWarning, match="no voxel size is recorded"):
        got = p.predict_volume(_volume((4, 40, 48)), planes="xy,xz")
    assert got.shape == (4, 40, 48)
