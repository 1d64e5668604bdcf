"""Paths of a tubular class: lengths and radii of known tubes, branch topology, SWC and GraphML
read back by their readers, somas reached, slabs against one block, resume, empty classes."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest

pytest.importorskip("kimimaro")
pytest.importorskip("skan")
nx = pytest.importorskip("networkx")

from tomoseg.errors import TomosegError  # noqa: E402
from tomoseg.evaluation.paths import analyze_paths, measure_paths  # noqa: E402
from tomoseg.utils.progress import Cancelled  # noqa: E402


def segment(shape, p0, p1, r, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxels within ``r`` (physical) of the segment p0-p1 (physical (z, y, x))."""
    grid = np.indices(shape, dtype=np.float64) * np.asarray(spacing)[:, None, None, None]
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    length = np.linalg.norm(d)
    d /= length
    rel = np.moveaxis(grid, 0, -1) - p0
    t = np.clip(rel @ d, 0, length)
    return np.linalg.norm(rel - t[..., None] * d, axis=-1) < r


def y_shape() -> tuple[np.ndarray, float]:
    """A Y: a trunk along z and two arms, every end on a face of the volume; its centre-line
    length inside the volume."""
    shape = (60, 80, 80)
    y = (
        segment(shape, (-5, 40, 40), (30, 40, 40), 4)
        | segment(shape, (30, 40, 40), (65, 15, 40), 3.5)
        | segment(shape, (30, 40, 40), (65, 65, 40), 3.5)
    )
    arm = 29 / 35 * np.hypot(35, 25)  # each arm from z = 30 to the last slice, z = 59
    return y.astype(np.uint8), 30 + 2 * arm


@pytest.fixture(scope="module")
def oblique():
    """An oblique straight tube (radius 4) crossing the volume from the first slice to the last."""
    lab = segment((40, 60, 90), (-5, 10, 5), (45, 50, 85), 4.0).astype(np.uint8)
    direction = np.array([50, 40, 80.0])
    length = 39 / (50 / np.linalg.norm(direction))  # from z = 0 to z = 39
    return lab, length, measure_paths(lab, class_id=1)


def test_tube_length_and_radius_within_5_percent(oblique):
    _, length, res = oblique
    b = res["branches"]
    assert len(b["branch"]) == 1 and res["junctions"] == 0 and res["end_points"] == 2
    assert b["length"][0] == pytest.approx(length, rel=0.05)
    assert b["mean_radius"][0] == pytest.approx(4.0, rel=0.05)
    assert b["min_radius"][0] <= b["mean_radius"][0]
    assert b["tortuosity"][0] == pytest.approx(1.0, abs=0.03)
    assert res["objects"]["total_length"][0] == pytest.approx(b["length"][0])


def test_spacing_scales_lengths_and_radii(oblique):
    lab, _, res = oblique
    scaled = measure_paths(lab, class_id=1, spacing=(0.5, 0.5, 0.5))
    assert scaled["total_length"] == pytest.approx(0.5 * res["total_length"], rel=1e-6)
    assert scaled["branches"]["mean_radius"][0] == pytest.approx(
        0.5 * res["branches"]["mean_radius"][0], rel=1e-6
    )


def test_y_shape_one_junction_three_end_points():
    lab, length = y_shape()
    res = measure_paths(lab, class_id=1)
    assert res["junctions"] == 1 and res["end_points"] == 3
    assert len(res["branches"]["branch"]) == 3
    assert res["total_length"] == pytest.approx(length, rel=0.05)
    o = res["objects"]
    assert (o["branches"][0], o["junctions"][0], o["end_points"][0]) == (3, 1, 3)
    g = res["graph"]
    kinds = sorted(d["kind"] for _, d in g.nodes(data=True))
    assert kinds == ["end", "end", "end", "junction"]
    assert all(g.degree(n) == 1 for n, d in g.nodes(data=True) if d["kind"] == "end")


def _parse_swc(text: str) -> np.ndarray:
    """The SWC standard (Cannon et al. 1998): ``n T x y z R parent`` per line, ``#`` comments,
    ids from 1, every parent -1 (a root) or an earlier id."""
    rows = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    a = np.array(rows, np.float64)
    assert a.shape[1] == 7
    ids, parents = a[:, 0].astype(int), a[:, 6].astype(int)
    assert list(ids) == list(range(1, len(ids) + 1))
    seen = set()
    for i, p in zip(ids, parents, strict=True):
        assert p == -1 or p in seen
        seen.add(i)
    return a


def test_swc_and_graphml_read_back(tmp_path):
    from osteoid import Skeleton

    lab, length = y_shape()
    lab[50:60, 5:30, 30:50] = 2  # a soma cutting one arm
    s = analyze_paths(lab, tmp_path / "p", class_name=1, soma_class=2, voxel_size=(2, 1, 1))
    assert s["voxel_size"] == [2.0, 1.0, 1.0]
    swcs = sorted((tmp_path / "p" / "swc").glob("*.swc"))
    assert len(swcs) == s["objects"] == 1
    a = _parse_swc(swcs[0].read_text())
    sk = Skeleton.from_swc(swcs[0].read_text())  # kimimaro's own skeleton class reads it back
    assert len(sk.vertices) == len(a) and (sk.radius > 0).all()
    assert sk.cable_length() > 0.9 * s["total_length"]
    g = nx.read_graphml(tmp_path / "p" / "paths.graphml")
    kinds = [d["kind"] for _, d in g.nodes(data=True)]
    assert kinds.count("junction") == 1 and kinds.count("soma") == 1
    contact = [(u, v) for u, v, d in g.edges(data=True) if d["kind"] == "contact"]
    assert len(contact) == 1 and s["soma_contacts"] == 1 and s["somas_reached"] == 1
    branches = [d for _, _, d in g.edges(data=True) if d["kind"] == "branch"]
    assert len(branches) == s["branches"] == 3
    rows = list(csv.DictReader(open(tmp_path / "p" / "objects.csv")))
    assert rows[0]["somas"] == "1"
    assert (tmp_path / "p" / "preview.png").stat().st_size > 1000
    assert not (tmp_path / "p" / "slabs").exists()


def test_empty_class_gives_empty_tables(tmp_path):
    lab = np.zeros((8, 16, 16), np.uint8)
    res = measure_paths(lab, class_id=1)
    assert len(res["branches"]["branch"]) == 0 and res["total_length"] == 0
    assert res["graph"].number_of_nodes() == 0
    s = analyze_paths(lab, tmp_path / "e", class_name=1)
    assert s["branches"] == 0 and s["objects"] == 0
    text = (tmp_path / "e" / "branches.csv").read_text().splitlines()
    assert text == [",".join(text[0].split(","))] and text[0].startswith("branch,object,length")


def test_slabs_agree_with_one_block(tmp_path):
    lab, _ = y_shape()
    whole = analyze_paths(lab, tmp_path / "w", class_name=1)
    slabs = analyze_paths(lab, tmp_path / "s", class_name=1, chunk_slices=16)
    assert (slabs["junctions"], slabs["end_points"]) == (whole["junctions"], whole["end_points"])
    assert slabs["total_length"] == pytest.approx(whole["total_length"], rel=0.03)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    lab, _ = y_shape()
    ref = analyze_paths(lab, tmp_path / "ref", class_name=1, chunk_slices=16)
    cancel = threading.Event()

    def stop_after_two(event):
        if event.kind == "advance" and event.done >= 2:
            cancel.set()

    with pytest.raises(Cancelled):
        analyze_paths(lab, tmp_path / "r", class_name=1, chunk_slices=16,
                      progress=stop_after_two, cancel=cancel)  # fmt: skip
    kept = sorted(p.name for p in (tmp_path / "r" / "slabs").iterdir())
    assert len(kept) >= 2 and not (tmp_path / "r" / "branches.csv").exists()
    again = analyze_paths(lab, tmp_path / "r", class_name=1, chunk_slices=16)
    assert again["total_length"] == ref["total_length"]
    for name in ("branches.csv", "objects.csv"):
        assert (tmp_path / "r" / name).read_text() == (tmp_path / "ref" / name).read_text()
    with pytest.raises(TomosegError, match="overwrite=True"):
        analyze_paths(lab, tmp_path / "r", class_name=1, chunk_slices=16)


def test_bad_input_is_one_error(tmp_path):
    with pytest.raises(TomosegError, match=r"\(Z, Y, X\)"):
        measure_paths(np.zeros((8, 8), np.uint8), class_id=1)
    with pytest.raises(TomosegError, match="voxel_size=Z,Y,X"):
        analyze_paths(np.zeros((4, 8, 8), np.uint8), tmp_path / "u", class_name=1, units="physical")
    with pytest.raises(TomosegError, match="no class names"):
        analyze_paths(np.zeros((4, 8, 8), np.uint8), tmp_path / "c", class_name="vessel")
    with pytest.raises(TomosegError, match="same class"):
        analyze_paths(np.zeros((4, 8, 8), np.uint8), tmp_path / "s", class_name=1, soma_class=1)


def test_missing_voxel_size_warns_and_measures_in_voxels(tmp_path):
    lab, _ = y_shape()
    with pytest.warns(UserWarning, match="no voxel size"):
        s = analyze_paths(lab, tmp_path / "v", class_name=1)
    assert s["unit"] == "voxel" and s["voxel_size"] is None


def test_phantom_vessel_class_measured(tmp_path):
    """The phantom's labelled vessels: the skeletons' length against the analytic centre lines."""
    import json

    import tifffile

    from tomoseg.synthetic.phantom import generate_phantom

    generate_phantom(tmp_path / "ph", (96, 96), 24, seed=1, label_vessels=True)
    truth = json.loads((tmp_path / "ph" / "truth3d" / "vessels.json").read_text())
    lab = tifffile.imread(tmp_path / "ph" / "truth3d" / "classes.tif")
    assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 2).any()
    res = measure_paths(lab, class_id=2, soma_class_id=1)
    assert res["total_length"] == pytest.approx(truth["total_length"], rel=0.15)


def test_missing_extra_is_one_error_naming_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kimimaro", None)  # import kimimaro now raises ImportError
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[:, 3:5, 3:5] = 1
    with pytest.raises(TomosegError, match=r"tomoseg\[skeletons\]"):
        measure_paths(lab, class_id=1)
