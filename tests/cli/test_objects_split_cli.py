"""``tomoseg objects --split`` and ``phantom --touching`` as a user runs them; bad input is one
``error:`` line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile


@pytest.fixture
def touching(tmp_path):
    """A (Z, Y, X) class mask of two touching balls and one lone ball, no voxel size."""
    grid = np.indices((20, 24, 44)).astype(float)
    vol = np.zeros((20, 24, 44), np.uint8)
    for c, r in (((10, 12, 9), 7), ((10, 12, 21), 7), ((10, 12, 36), 5)):
        vol[sum((grid[a] - c[a]) ** 2 for a in range(3)) <= r * r] = 1
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, vol)
    return path


def test_objects_split_counts_each_body(tmp_path, run_cli, touching):
    code, out, err = run_cli("objects", touching, "--out", tmp_path / "o", "--meshes", "0")
    assert code == 0 and "\n2 objects;" in out
    assert "warning: the volume records no voxel size" in err and "--voxel-size" in err
    code, out, err = run_cli(
        "objects", touching, "--out", tmp_path / "s", "--split", "--meshes", "0",
        "--voxel-size", "1,0.5,0.5", "--chunk-slices", "4",
    )  # fmt: skip
    assert code == 0, err
    assert "\n3 objects;" in out and "2 connected components -> 3 objects" in out
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["unit"] == "micrometer" and summary["split"]["objects_split"] == 1


@pytest.mark.parametrize(
    "args, match",
    [
        (["--class", "3"], "error: --class 3: no voxel of the volume holds this class id"),
        (["--unit", "micrometer"], "error: --unit micrometer needs a voxel size"),
        (["--split", "--split-h", "0"], "error: --split-h 0.0: must be a positive number"),
        (["--split", "--split-min-distance", "-2"], "error: --split-min-distance -2.0"),
        (["--split-h", "0.5"], "error: --split-h 0.5 needs --split"),
        (["--split-min-distance", "2"], "error: --split-min-distance 2.0 needs --split"),
    ],
)
def test_objects_bad_input_is_one_error_line(tmp_path, run_cli, touching, args, match):
    code, out, err = run_cli("objects", touching, "--out", tmp_path / "o", *args)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(lines) == 1 and lines[0].startswith(match), err
    assert "Traceback" not in err


def test_objects_of_a_2d_image_is_one_error_line(tmp_path, run_cli):
    tifffile.imwrite(tmp_path / "slice.tif", np.ones((16, 16), np.uint8))
    code, _, err = run_cli("objects", tmp_path / "slice.tif", "--out", tmp_path / "o")
    assert code == 1 and err.strip().startswith("error:") and "2D image" in err


def test_phantom_touching_option(tmp_path, run_cli):
    code, out, _ = run_cli(
        "phantom", "--out", tmp_path / "p", "--shape", "64x64", "--slices", "6",
        "--touching", "1",
    )  # fmt: skip
    assert code == 0 and "'touching_somas':" in out
    code, _, err = run_cli("phantom", "--out", tmp_path / "q", "--touching", "1.5")
    assert code == 1 and err.startswith("error:") and "touching" in err


def test_a_unit_for_a_stack_without_a_voxel_size_is_refused(tmp_path, run_cli, small_run):
    """segment-stack of slices without a voxel size records (1, 1, 1) and no unit: `objects
    --unit` then has no size to put that unit on (it must not call voxels nanometres)."""
    from conftest import one_error

    data, run = small_run
    code, _, err = run_cli("segment-stack", run, data / "test" / "images", "--out", tmp_path / "s")
    assert code == 0, err
    msg = one_error(
        run_cli, "objects", tmp_path / "s", "--out", tmp_path / "o", "--unit", "nanometer"
    )
    assert "--voxel-size" in msg and not (tmp_path / "o" / "summary.json").exists()
