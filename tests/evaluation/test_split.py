"""objects --split: touching bodies told apart, chunked = in-memory; phantom --touching; units."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.evaluation.objects import (
    analyze_objects,
    label_objects,
    measure_objects,
    split_labels,
)
from tomoseg.evaluation.split import split_mask, typical_radius
from tomoseg.synthetic.phantom import generate_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


def balls(shape, centres, radii, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """uint8 class mask (1) of balls of physical radii at physical centres (z, y, x)."""
    grid = np.indices(shape).astype(np.float64) * np.asarray(spacing)[:, None, None, None]
    out = np.zeros(shape, np.uint8)
    for c, r in zip(centres, radii, strict=True):
        d2 = sum((grid[a] - c[a]) ** 2 for a in range(3))
        out[d2 <= r * r] = 1
    return out


def cluster_volume() -> tuple[np.ndarray, int]:
    """Two touching pairs, a touching triple standing tall in z, one lone ball: 8 bodies."""
    centres = [(8, 10, 10), (8, 10, 21), (8, 30, 12), (8, 30, 21), (8, 12, 40),
               (20, 12, 40), (32, 12, 40), (9, 32, 40)]  # fmt: skip
    radii = [6, 6, 6, 4.5, 6, 6, 6, 5]
    return balls((42, 44, 52), centres, radii), 8


def zarr_labels(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(path), mode="r")["0"][:])


def test_split_mask_two_balls_and_the_neck_rule():
    two = balls((20, 20, 32), [(10, 10, 9), (10, 10, 21)], [7, 7]).astype(bool)
    pieces, n = split_mask(two, (1, 1, 1), h=1.0, min_distance=3.0)
    assert n == 2 and set(np.unique(pieces)) == {0, 1, 2}
    assert pieces[10, 10, 9] == 1 and pieces[10, 10, 21] == 2  # raster order of first voxel
    assert np.array_equal(pieces > 0, two)
    for k in (1, 2):  # each piece is one connected body
        assert ndimage.label(pieces == k, np.ones((3, 3, 3)))[1] == 1
    # a neck of radius ~3.6 between balls of radius 7: a seed height above 3.4 keeps it whole
    assert split_mask(two, (1, 1, 1), h=4.0, min_distance=3.0)[1] == 1
    # seeds closer than min_distance are merged
    assert split_mask(two, (1, 1, 1), h=1.0, min_distance=20.0)[1] == 1
    # a single ball is never split
    one = balls((16, 16, 16), [(8, 8, 8)], [6]).astype(bool)
    assert split_mask(one, (1, 1, 1), h=0.5, min_distance=0.0)[1] == 1


def test_measure_objects_split_counts_touching_bodies():
    vol, n_bodies = cluster_volume()
    assert len(measure_objects(vol)["label"]) == 4  # connected components merge them
    table = measure_objects(vol, split=True)
    assert len(table["label"]) == n_bodies
    assert table["num_pixels"].sum() == int(vol.sum())  # every voxel in one object
    assert typical_radius(np.array([10, 10, 1000]), (1, 1, 1)) == pytest.approx(
        (3 * 1000 / (4 * np.pi)) ** (1 / 3)
    )  # the voxel-weighted median: debris does not move it


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_split_chunked_equals_in_memory(tmp_path, spacing):
    """The same objects, numbered the same, whole or slab by slab (objects taller than a slab
    included), and objects.csv agrees with measure_objects."""
    vol, _ = cluster_volume()
    if spacing[0] == 2.0:  # the same bodies on a grid twice as coarse in z
        vol = vol[::2]
    ref = split_labels(label_objects(vol), spacing)
    assert ref.max() >= 7
    for chunk in (None, 4):  # at 4 slices, the triple is taller than a slab
        s = analyze_objects(
            vol, tmp_path / f"o{chunk}", split=True, chunk_slices=chunk, meshes=0,
            voxel_size=spacing,
        )  # fmt: skip
        assert np.array_equal(zarr_labels(tmp_path / f"o{chunk}" / "objects.zarr"), ref), chunk
        assert s["count"] == ref.max() and s["split"]["connected_components"] == 4
    rows = list(csv.DictReader((tmp_path / "o4" / "objects.csv").open()))
    table = measure_objects(vol, spacing=spacing, split=True)
    for c in ("label", "num_pixels", "area", "centroid-0", "bbox-3", "axis_major_length"):
        got = np.array([float(r[c]) for r in rows])
        np.testing.assert_allclose(got, table[c].astype(float), rtol=1e-4, err_msg=c)


def test_split_against_instance_truth(tmp_path):
    vol, n_bodies = cluster_volume()
    truth = split_labels(label_objects(vol))
    tifffile.imwrite(tmp_path / "t.tif", truth.astype(np.uint16))
    s = analyze_objects(vol, tmp_path / "o", split=True, truth=tmp_path / "t.tif", meshes=0)
    det = s["detection"]
    assert det["true_objects"] == n_bodies and det["f1"] == 1.0 and det["f1_75"] == 1.0
    plain = analyze_objects(vol, tmp_path / "p", truth=tmp_path / "t.tif", meshes=0)["detection"]
    assert plain["count_relative_error"] == pytest.approx(4 / 8 - 1) and plain["f1"] <= 0.5


def test_class_mask_truth_is_named_not_scored(tmp_path):
    vol, _ = cluster_volume()
    tifffile.imwrite(tmp_path / "mask.tif", vol)  # a class mask: 1 value, 4 objects
    with pytest.warns(TomosegWarning, match="class ids rather than instance labels"):
        s = analyze_objects(vol, tmp_path / "o", truth=tmp_path / "mask.tif", meshes=0)
    assert "detection" not in s and "class ids" in s["truth_warning"]


def test_units_are_voxels_unless_known(tmp_path):
    vol, _ = cluster_volume()
    with pytest.warns(TomosegWarning, match="no voxel size.*voxel_size=Z,Y,X"):
        s = analyze_objects(vol, tmp_path / "a", meshes=0)
    assert s["unit"] is None and s["units"] == "voxels"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TomosegWarning)
        s = analyze_objects(vol, tmp_path / "b", meshes=0, voxel_size=(2, 1, 1))
    assert s["unit"] == "micrometer" and s["voxel_size"] == [2.0, 1.0, 1.0]
    s = analyze_objects(vol, tmp_path / "c", meshes=0, voxel_size=(2, 1, 1), unit="nanometer")
    assert s["unit"] == "nanometer"
    with pytest.raises(TomosegError, match="unit='micrometer' needs a voxel size.*voxel_size="):
        analyze_objects(vol, tmp_path / "d", meshes=0, unit="micrometer")


def test_bad_input_is_one_line(tmp_path):
    vol, _ = cluster_volume()
    with pytest.raises(TomosegError, match="class_name=3: no voxel"):
        analyze_objects(vol, tmp_path / "a", class_name="3", meshes=0)
    tifffile.imwrite(tmp_path / "2d.tif", vol[5])
    with pytest.raises(TomosegError, match="2D image"):
        analyze_objects(tmp_path / "2d.tif", tmp_path / "b")
    for bad in ({"split_h": 0}, {"split_min_distance": -1.0}, {"split_h": float("nan")}):
        with pytest.raises(TomosegError, match=next(iter(bad))):
            analyze_objects(vol, tmp_path / "c", split=True, **bad)
        with pytest.raises(TomosegError, match=next(iter(bad))):
            measure_objects(vol, split=True, **bad)


@pytest.mark.parametrize("given", [{"split_h": 1.0}, {"split_min_distance": 2.0}])
def test_split_tuning_without_split_is_refused(tmp_path, given):
    vol, _ = cluster_volume()
    name = next(iter(given))
    with pytest.raises(TomosegError, match=f"^{name}=.* needs split=True"):
        analyze_objects(vol, tmp_path / "a", meshes=0, **given)
    assert not (tmp_path / "a").exists()  # refused before anything is written
    with pytest.raises(TomosegError, match=f"^{name}=.* needs split=True"):
        measure_objects(vol, **given)


def test_phantom_touching_clusters_keep_an_exact_instance_truth(tmp_path):
    info = generate_phantom(tmp_path / "t", (96, 96), 12, seed=1, params={"touching": 1.0})
    truth = tifffile.imread(tmp_path / "t" / "truth3d" / "labels.tif")
    objs = json.loads((tmp_path / "t" / "truth3d" / "objects.json").read_text())
    assert info["touching_somas"] == objs["touching"] >= 4
    ids = [o["label"] for o in objs["objects"]]
    assert sorted(set(np.unique(truth)) - {0}) == ids  # every listed soma is in the truth
    for k in ids:  # ... as one 26-connected component
        assert ndimage.label(truth == k, np.ones((3, 3, 3)))[1] == 1, k
    n_cc = label_objects((truth > 0).astype(np.uint8)).max()
    assert n_cc < len(ids)  # touching somas merge into connected components
    # touching=0 (the default) leaves every file as it was
    generate_phantom(tmp_path / "a", (64, 64), 6, seed=2)
    generate_phantom(tmp_path / "b", (64, 64), 6, seed=2, params={"touching": 0.0})
    for f in ("truth3d/labels.tif", "train/images/z0000.tif"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


class CancelAfter:
    """A cancel token set from its ``n``-th check on (the job checks after each step)."""

    def __init__(self, n: int):
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.n


@pytest.mark.parametrize("step", [7, 12], ids=["splitting", "renumbering"])
def test_split_interrupted_resumes_to_the_same_result(tmp_path, step):
    """Slabs of 14 slices (3): steps 1-6 label and write, 7-10 split, 11-13 renumber."""
    from tomoseg.utils.progress import Cancelled

    vol, _ = cluster_volume()
    kw = {"split": True, "chunk_slices": 14, "meshes": 0}
    ref = analyze_objects(vol, tmp_path / "ref", **kw)
    with pytest.raises(Cancelled):
        analyze_objects(vol, tmp_path / "out", cancel=CancelAfter(step), **kw)
    again = analyze_objects(vol, tmp_path / "out", **kw)
    assert again["count"] == ref["count"] == 8
    for f in ("objects.csv",):
        assert (tmp_path / "out" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes()
    assert np.array_equal(
        zarr_labels(tmp_path / "out" / "objects.zarr"),
        zarr_labels(tmp_path / "ref" / "objects.zarr"),
    )
