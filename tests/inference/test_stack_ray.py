"""segment-stack --backend ray: a pool of Ray actors gives the local run's volume byte for byte,
resumes from the markers, works with --part, and fails with one line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, write_png

from tomoseg.api import segment_stack
from tomoseg.config.schema import load_config
from tomoseg.errors import TomosegError
from tomoseg.inference.stack import missing_slices
from tomoseg.training.trainer import train

SHAPE = (40, 48)
TINY = {"crop_size": 32, "crops": 16, "epochs": 1, "batch_size": 4, "width": 4, "depth": 3}
TINY["precision"] = "32"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(one_thread, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    data = make_dataset(root / "data", shape=SHAPE)
    return train(data, root / "a", load_config(None, TINY), progress=False)


@pytest.fixture(scope="module")
def ray_up():
    """One local Ray (2 CPUs) for the module: the backend reuses it instead of starting its own."""
    pytest.importorskip("ray")
    from tomoseg.runtime.ray_session import init_ray

    ray = init_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


def stack(path: Path, n: int, seed: int = 0, bad: int | None = None) -> Path:
    rng = np.random.default_rng(seed)
    for z in range(n):
        shape = (SHAPE[0] + 2, SHAPE[1]) if z == bad else SHAPE
        write_png(path / f"z{z:04d}.png", rng.integers(0, 120, shape).astype(np.uint8))
    return path


def tree(out: Path) -> dict[str, bytes]:
    root = out / "labels.zarr"
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_without_ray_is_one_line(run_cli, run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    src = stack(tmp_path / "in", 2)
    code, out, err = run_cli(
        "segment-stack", run_dir, src, "--out", tmp_path / "o", "--backend", "ray"
    )
    assert code == 1 and err.strip() == (
        "error: --backend ray needs Ray, which is not installed: pip install 'tomoseg[cluster]'"
    )
    code, out, err = run_cli(
        "segment-stack", run_dir, src, "--out", tmp_path / "o", "--actors", "2"
    )
    assert code == 1 and "need --backend ray" in err


def test_cli_ray_unreachable(run_cli, run_dir, tmp_path):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = stack(tmp_path / "in", 2)
    code, out, err = run_cli(
        "segment-stack", run_dir, src, "--out", tmp_path / "o", "--backend", "ray",
        "--address", f"127.0.0.1:{port}",
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "cannot reach the Ray cluster" in lines[0]
    with pytest.raises(TomosegError, match="actors=0: must be at least 1"):
        segment_stack(run_dir, src, tmp_path / "o2", backend="ray", actors=0)


@pytest.mark.slow
def test_actors_equal_local_run_resume_and_parts(tmp_path, run_dir, ray_up):
    src = stack(tmp_path / "in", 7, seed=2)
    segment_stack(run_dir, src, tmp_path / "single", device="cpu")
    info = segment_stack(
        run_dir, src, tmp_path / "ray", device="cpu", backend="ray", actors=2, batch_slices=2
    )
    assert info["computed"] == 7 and tree(tmp_path / "ray") == tree(tmp_path / "single")
    # resume: slices finished locally by part 1/2 are skipped, the rest computed by the actors
    out = tmp_path / "mixed"
    segment_stack(run_dir, src, out, device="cpu", part="1/2")
    info = segment_stack(run_dir, src, out, device="cpu", backend="ray", actors=1)
    assert (info["computed"], info["skipped"]) == (4, 3) and tree(out) == tree(tmp_path / "single")
    # a part on Ray
    out = tmp_path / "parts"
    p2 = segment_stack(run_dir, src, out, device="cpu", backend="ray", part="2/2")
    assert p2["computed"] == 4 and missing_slices(out, 7) == [0, 1, 2]
    segment_stack(run_dir, src, out, device="cpu", backend="ray", part="1/2")
    assert missing_slices(out, 7) == [] and tree(out) == tree(tmp_path / "single")


@pytest.mark.slow  # long (10-25 s): keeps the default suite within 5 minutes
def test_actors_feed_the_2_5d_context_like_the_local_run(tmp_path, ray_up):
    """A run with context 1: every actor reads each slice's neighbours (open_slices), also
    across the boundary of its batch and of a part."""
    import json

    data = make_dataset(tmp_path / "data", shape=SHAPE)
    spec = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**spec, "consecutive": True}))
    run = train(data, tmp_path / "run", load_config(None, {**TINY, "context": 1}), progress=False)
    src = stack(tmp_path / "in", 5, seed=4)
    segment_stack(run, src, tmp_path / "single", device="cpu")
    segment_stack(run, src, tmp_path / "ray", device="cpu", backend="ray", actors=2, batch_slices=2)
    assert tree(tmp_path / "ray") == tree(tmp_path / "single")
    out = tmp_path / "parts"
    segment_stack(run, src, out, device="cpu", part="1/2")
    segment_stack(run, src, out, device="cpu", backend="ray", actors=1, part="2/2")
    assert tree(out) == tree(tmp_path / "single")


@pytest.mark.slow
def test_bad_slice_is_one_error_and_earlier_ones_stay(tmp_path, run_dir, ray_up, run_cli):
    src = stack(tmp_path / "in", 4, bad=3)
    out = tmp_path / "o"
    code, stdout, err = run_cli(
        "segment-stack", run_dir, src, "--out", out, "--backend", "ray", "--device", "cpu"
    )
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: slice z0003 has shape (42, 48)"), lines[0]
    assert 3 in missing_slices(out, 4)


@pytest.mark.slow  # about 15 s with Ray's start and stop
def test_nan_pixels_and_hyperstack_channel_as_the_local_run(ray_up, run_dir, tmp_path):
    """The Ray path reads by the same rules: NaN pixels counted and labelled background, a
    channel of a ZCYX hyperstack chosen."""
    import json

    import tifffile

    rng = np.random.default_rng(3)
    vol = rng.integers(0, 120, (3, 2, *SHAPE)).astype(np.float32)
    vol[:, :, :5, :7] = np.nan
    f = tmp_path / "zc.tif"
    tifffile.imwrite(f, vol, imagej=True, metadata={"axes": "ZCYX"})
    segment_stack(run_dir, f, tmp_path / "local", device="cpu", channel=1)
    segment_stack(run_dir, f, tmp_path / "ray", device="cpu", channel=1, backend="ray")
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")
    # an array in memory is sent to the actors with the job
    segment_stack(run_dir, vol[:, 1], tmp_path / "array", device="cpu", backend="ray", actors=2)
    labels = tree(tmp_path / "array")
    assert {k: v for k, v in labels.items() if not k.startswith(".")} == {
        k: v for k, v in tree(tmp_path / "local").items() if not k.startswith(".")
    }
    summary = json.loads((tmp_path / "ray" / "stack.json").read_text())["summary"]
    assert summary["nonfinite"]["pixels"] == 3 * 5 * 7
