"""``tomoseg paths`` as a user runs it: the result lines and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import one_error

pytest.importorskip("kimimaro")


def _volume(path, shape=(12, 32, 32)):
    """A class-id stack: a tube along z (class 2) ending on a blob (class 1)."""
    lab = np.zeros(shape, np.uint8)
    zz, yy, xx = np.indices(shape)
    lab[((yy - 16) ** 2 + (xx - 16) ** 2 < 9) & (zz < 9)] = 2
    lab[9:12, 10:22, 10:22] = 1
    tifffile.imwrite(path, lab)
    return path


def test_paths_cli_measures_and_reports(tmp_path, run_cli):
    vol = _volume(tmp_path / "classes.tif")
    code, out, err = run_cli(
        "paths", vol, "--out", tmp_path / "p", "--class", "2", "--soma-class", "1",
        "--voxel-size", "2,0.5,0.5",
    )  # fmt: skip
    assert code == 0, err
    assert "\n1 path, 1 branch, 0 junctions, 2 end points; total length" in out
    assert "1 path end reaches 1 object of class 1" in out
    for name in ("branches.csv", "objects.csv", "paths.graphml", "preview.png", "summary.json"):
        assert (tmp_path / "p" / name).is_file()
    assert len(list((tmp_path / "p" / "swc").glob("*.swc"))) == 1


def test_paths_cli_errors_are_one_line(tmp_path, run_cli):
    vol = _volume(tmp_path / "classes.tif")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((32, 32), np.uint8))
    err = one_error(
        run_cli, "paths", tmp_path / "flat.tif", "--out", tmp_path / "a", "--class", "2"
    )
    assert "3D volume" in err
    err = one_error(
        run_cli, "paths", vol, "--out", tmp_path / "b", "--class", "2", "--units", "physical"
    )
    assert "--voxel-size Z,Y,X" in err and "--units voxel" in err
    err = one_error(run_cli, "paths", vol, "--out", tmp_path / "c", "--class", "vessel")
    assert "no class names" in err and "--class-name" not in err
    err = one_error(
        run_cli, "paths", tmp_path / "nope.tif", "--out", tmp_path / "d", "--class", "2"
    )
    assert "not found" in err


def test_paths_cli_class_names_of_an_ome_zarr_volume(tmp_path, run_cli):
    from tomoseg.io.ome_zarr import create_label_array

    lab = tifffile.imread(_volume(tmp_path / "classes.tif"))
    arr = create_label_array(
        tmp_path / "labels.zarr", lab.shape, "uint8", (1, 32, 32), (2.0, 0.5, 0.5), "micrometer",
        classes=["background", "soma", "vessel"],
        extra={"tomoseg": {"classes": ["background", "soma", "vessel"]}},
    )  # fmt: skip
    arr[:] = lab
    code, out, err = run_cli(
        "paths", tmp_path / "labels.zarr", "--out", tmp_path / "p", "--class", "vessel",
        "--soma-class", "soma", "--units", "physical",
    )  # fmt: skip
    assert code == 0 and "warning" not in err, err
    assert "micrometer" in out and "reaches 1 object of class soma" in out
    err = one_error(
        run_cli, "paths", tmp_path / "labels.zarr", "--out", tmp_path / "q", "--class", "nope"
    )
    assert "'nope'" in err and "vessel" in err
    err = one_error(
        run_cli, "paths", tmp_path / "labels.zarr", "--out", tmp_path / "r", "--class", "7"
    )
    assert "--class 7" in err and "ids 0-2" in err
