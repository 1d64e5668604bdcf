"""Faults of stack inputs as users have them, through every reader, the CLI and the API: a TIFF
cut short, an ImageJ stack with fewer pages than it declares, chunks missing from a Zarr / N5 /
HDF5 store, axes out of Z, Y, X order (x, y, z), a c, z, y, x Zarr v3 array, a container's
dataset, a flat pyramid TIFF, a bad MRC header and an absent optional library."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import TINY_TRAIN, make_dataset, one_error

import tomoseg
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.sources import open_source

SHAPE = (40, 48)
Z = 5
TINY = {**TINY_TRAIN, "tile_size": 0, "precision": "32"}

pytestmark = pytest.mark.usefixtures("one_thread")


def content() -> np.ndarray:
    """(Z, Y, X) uint8: noise with a bright square per slice."""
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 40, (Z, *SHAPE)).astype(np.uint8)  # the run was trained on 8-bit
    for z in range(Z):
        y, x = rng.integers(0, SHAPE[0] - 10), rng.integers(0, SHAPE[1] - 10)
        vol[z, y : y + 8, x : x + 8] += 80
    return vol


@pytest.fixture(scope="module")
def run(one_thread, tmp_path_factory) -> Path:
    from tomoseg.config.schema import load_config
    from tomoseg.training.trainer import train

    root = tmp_path_factory.mktemp("faults")
    data = make_dataset(root / "data", shape=SHAPE)
    return train(data, root / "run", load_config(None, TINY), progress=False)


@pytest.fixture(scope="module")
def ref(run) -> np.ndarray:
    p = tomoseg.Predictor.from_run(run, device="cpu")
    return np.stack([p.predict(s) for s in content()])


def labels_of(out: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(out / "labels.zarr" / "0"), mode="r")[:])


def read_all(src) -> np.ndarray:
    with src.reader() as read:
        return np.stack([read(i) for i in range(src.n)])


# ----------------------------------------------------------------------------- TIFF cut short


def _cut(path: Path, keep: float) -> int:
    data = path.read_bytes()
    size = int(len(data) * keep)
    path.write_bytes(data[:size])
    return size


def test_truncated_tiff_is_refused_with_both_counts_and_the_end(tmp_path, run, run_cli):
    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, content())  # tifffile's own stack: {"shape": [5, 40, 48]}
    size = _cut(f, 0.5)
    with pytest.raises(TomosegError) as exc:
        open_source(f)
    msg = str(exc.value)
    assert "cut short" in msg and "declares 5 pages but it holds 1" in msg, msg
    assert f"the file ends at byte {size}" in msg and "\n" not in msg
    with pytest.raises(TomosegError, match="cut short"):
        tomoseg.segment_stack(run, f, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
    line = one_error(run_cli, "segment-stack", run, f, "--out", tmp_path / "cli", "--device", "cpu")
    assert "declares 5 pages but it holds 1" in line and f"byte {size}" in line


def test_cut_imagej_stack_is_refused(tmp_path, run_cli, run):
    f = tmp_path / "ij.tif"
    tifffile.imwrite(f, content(), imagej=True, metadata={"axes": "ZYX"})
    size = _cut(f, 0.6)
    line = one_error(run_cli, "segment-stack", run, f, "--out", tmp_path / "o", "--device", "cpu")
    assert "ImageJ metadata (images) declares 5 pages but it holds 1" in line, line
    assert f"the file ends at byte {size}" in line


def test_imagej_stack_with_fewer_pages_than_images_is_refused(tmp_path):
    """The page chain is whole, but the ImageJ description says 5 images for 3 pages."""
    f = tmp_path / "ij.tif"
    tifffile.imwrite(f, content()[:3], imagej=True, metadata={"axes": "ZYX"})
    data = f.read_bytes()
    assert b"images=3\nslices=3" in data
    f.write_bytes(data.replace(b"images=3\nslices=3", b"images=5\nslices=5"))
    with pytest.raises(TomosegError, match="declares 5 pages but it holds 3") as exc:
        open_source(f)
    assert f"ends at byte {len(data)}" in str(exc.value)


def test_a_whole_tiff_is_not_reported_cut(tmp_path):
    zyx = {"axes": "ZYX"}
    for kw in ({}, {"imagej": True, "metadata": zyx}, {"ome": True, "metadata": zyx}):
        f = tmp_path / "s.tif"
        tifffile.imwrite(f, content(), **kw)
        assert open_source(f).n == Z


def test_flat_pyramid_tiff_is_read_at_full_resolution(tmp_path):
    vol = content()
    for name, extra in (("generic", {"metadata": None}), ("shaped", {})):
        f = tmp_path / f"{name}.tif"
        with tifffile.TiffWriter(f) as w:
            w.write(vol, **extra)
            for step in (2, 4):  # reduced-resolution pages after the full-resolution ones
                w.write(vol[:, ::step, ::step], subfiletype=1, **extra)
        src = open_source(f)
        assert (src.n, *src.shape) == vol.shape, name
        assert np.array_equal(read_all(src), vol), name


def test_stack_written_page_by_page_is_one_stack(tmp_path):
    """``TiffWriter.write`` per slice makes each page a tifffile series of its own."""
    vol = content()
    for reduced in (False, True):
        f = tmp_path / f"pages-{reduced}.tif"
        with tifffile.TiffWriter(f) as w:
            for s in vol:
                w.write(s, contiguous=False)
            for s in vol if reduced else []:
                w.write(s[::2, ::2], subfiletype=1, contiguous=False)
        src = open_source(f)
        assert (src.n, *src.shape) == vol.shape and np.array_equal(read_all(src), vol)


# ----------------------------------------------------------------------------- missing chunks


def _zarr_hole(d: Path, vol: np.ndarray, fmt: int) -> Path:
    p = d / "in.zarr"
    arr = zarr.create_array(str(p), data=vol, chunks=(1, *SHAPE), zarr_format=fmt)
    key = "2.0.0" if fmt == 2 else "c/2/0/0"
    assert arr.nchunks_initialized == Z
    (p / key).unlink()
    return p


def _n5_hole(d: Path, vol: np.ndarray) -> Path:
    ts = pytest.importorskip("tensorstore")
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(d / "in.n5")},
        "metadata": {
            "dimensions": list(vol.shape[::-1]),
            "blockSize": [SHAPE[1], SHAPE[0], 1],
            "dataType": "uint8",
            "compression": {"type": "raw"},
        },
        "create": True,
    }
    ts.open(spec).result()[...] = vol.T
    (d / "in.n5" / "0" / "0" / "2").unlink()  # the block of z = 2 (x/y/z block indices)
    return d / "in.n5"


def _hdf5_hole(d: Path, vol: np.ndarray) -> Path:
    h5py = pytest.importorskip("h5py")
    d.mkdir(parents=True, exist_ok=True)
    with h5py.File(d / "in.h5", "w") as f:
        dset = f.create_dataset("volume", shape=vol.shape, dtype=vol.dtype, chunks=(1, *SHAPE))
        for z in (0, 1, 3, 4):  # slice 2 never written: its chunk is not allocated
            dset[z] = vol[z]
    return d / "in.h5"


HOLES = {
    "zarr-v2": lambda d, v: _zarr_hole(d, v, 2),
    "zarr-v3": lambda d, v: _zarr_hole(d, v, 3),
    "n5": _n5_hole,
    "hdf5": _hdf5_hole,
}


@pytest.mark.parametrize("kind", list(HOLES))
def test_missing_chunk_warns_naming_the_slice_or_is_refused(tmp_path, kind):
    inp = HOLES[kind](tmp_path, content())
    with pytest.warns(TomosegWarning, match=r"1 slice of .* lacks chunks .*z0002 \(1 chunk\)"):
        src = open_source(inp)
    assert src.describe()["missing_chunks"] == {
        "slices": 1,
        "chunks": 1,
        "per_slice": {"z0002": 1},
    }
    assert not read_all(src)[2].any()  # read as the fill value
    with pytest.raises(TomosegError, match=r"z0002 \(1 chunk\).*missing='warn'"):
        open_source(inp, missing="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_source(inp, missing="ignore").describe()["missing_chunks"]["slices"] == 0


def test_missing_chunk_through_segment_stack_and_the_cli(tmp_path, run, run_cli):
    inp = _zarr_hole(tmp_path, content(), 2)
    with pytest.warns(TomosegWarning, match="z0002"):
        info = tomoseg.segment_stack(run, inp, tmp_path / "api", device="cpu")
    want = {"slices": 1, "chunks": 1, "per_slice": {"z0002": 1}}
    assert info["missing_chunks"] == want
    rec = json.loads((tmp_path / "api" / "stack.json").read_text())
    assert rec["input"]["missing_chunks"] == want and rec["complete"]
    with pytest.raises(TomosegError, match="z0002"):
        tomoseg.segment_stack(run, inp, tmp_path / "api2", device="cpu", missing="error")
    assert not (tmp_path / "api2").exists()

    code, _, err = run_cli("segment-stack", run, inp, "--out", tmp_path / "cli", "--device", "cpu")
    warns = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and len(warns) == 1 and "z0002 (1 chunk)" in warns[0], err
    assert "--missing error" in warns[0]
    line = one_error(
        run_cli, "segment-stack", run, inp, "--out", tmp_path / "c2", "--device", "cpu",
        "--missing", "error",
    )  # fmt: skip
    assert "z0002" in line and "--missing warn" in line
    assert "must be warn, error or ignore" in one_error(
        run_cli, "segment-stack", run, inp, "--out", tmp_path / "c3", "--missing", "no"
    )


# ----------------------------------------------------------------------------- axis order


def _xyz_zarr(d: Path, vol: np.ndarray) -> Path:
    """x, y, z as HiP-CT and neuroglancer conversions keep: the array is (X, Y, Z)."""
    zarr.create_array(
        str(d / "xyz.zarr"), data=vol.transpose(2, 1, 0), chunks=(16, 16, Z),
        dimension_names=["x", "y", "z"],
    )  # fmt: skip
    return d / "xyz.zarr"


def test_xyz_order_is_refused_naming_the_axes_or_transposed(tmp_path, run, ref, run_cli):
    vol = content()
    inp = _xyz_zarr(tmp_path, vol)
    with pytest.raises(TomosegError) as exc:
        open_source(inp)
    msg = str(exc.value)
    assert "axes XYZ (X=48, Y=40, Z=5)" in msg and "transpose=True" in msg, msg
    src = open_source(inp, transpose=True)
    assert (src.n, *src.shape) == vol.shape and np.array_equal(read_all(src), vol)

    line = one_error(run_cli, "segment-stack", run, inp, "--out", tmp_path / "a", "--device", "cpu")
    assert "axes XYZ" in line and "--transpose" in line
    out = tmp_path / "cli"
    code, _, err = run_cli(
        "segment-stack", run, inp, "--out", out, "--device", "cpu", "--transpose"
    )
    assert code == 0, err
    assert np.array_equal(labels_of(out), ref)
    p = tomoseg.Predictor.from_run(run, device="cpu")
    assert np.array_equal(p.predict_volume(inp, transpose=True), ref)


def test_mrc_axis_map_is_read(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    vol = content()
    f = tmp_path / "xyz.mrc"
    with mrcfile.new(f) as m:
        m.set_data(vol.transpose(2, 1, 0).copy())  # sections are X, rows Y, columns Z
        m.header.mapc, m.header.mapr, m.header.maps = 3, 2, 1
    with pytest.raises(TomosegError, match="axes XYZ .*transpose=True"):
        open_source(f)
    assert np.array_equal(read_all(open_source(f, transpose=True)), vol)


def test_czyx_zarr_v3_needs_and_takes_a_channel(tmp_path, run, ref, run_cli):
    vol = content()
    inp = tmp_path / "czyx.zarr"
    zarr.create_array(
        str(inp), data=np.stack([vol, vol[::-1]]), chunks=(1, 1, *SHAPE),
        dimension_names=["c", "z", "y", "x"],
    )  # fmt: skip
    line = one_error(run_cli, "segment-stack", run, inp, "--out", tmp_path / "a", "--device", "cpu")
    assert "axes CZYX (C=2, Z=5, Y=40, X=48)" in line and "--channel 0..1" in line
    out = tmp_path / "cli"
    code, _, err = run_cli(
        "segment-stack", run, inp, "--out", out, "--device", "cpu", "--channel", "0"
    )
    assert code == 0, err
    assert np.array_equal(labels_of(out), ref)
    info = tomoseg.segment_stack(run, inp, tmp_path / "api", device="cpu", channel=1)
    assert info["slices"] == Z
    assert np.array_equal(labels_of(tmp_path / "api"), ref[::-1])


# ----------------------------------------------------------------------------- containers


def test_hdf5_dataset_by_path_option_or_default(tmp_path, run, ref, run_cli):
    h5py = pytest.importorskip("h5py")
    vol = content()
    f = tmp_path / "two.h5"
    with h5py.File(f, "w") as h:
        h["a/raw"] = vol
        h["b/other"] = vol[:, ::-1]
    with pytest.raises(TomosegError, match=r"holds 2 arrays: /a/raw .*dataset='/a/raw'"):
        open_source(f)
    assert np.array_equal(read_all(open_source(f"{f}:/a/raw")), vol)
    assert np.array_equal(read_all(open_source(f, dataset="b/other")), vol[:, ::-1])
    with pytest.raises(TomosegError, match="has no image dataset '/c'"):
        open_source(f, dataset="/c")
    line = one_error(run_cli, "segment-stack", run, f, "--out", tmp_path / "x", "--device", "cpu")
    assert "--dataset /a/raw" in line
    code, _, err = run_cli(
        "segment-stack", run, f"{f}:/a/raw", "--out", tmp_path / "p", "--device", "cpu"
    )
    assert code == 0, err
    assert np.array_equal(labels_of(tmp_path / "p"), ref)
    rec = json.loads((tmp_path / "p" / "stack.json").read_text())
    assert rec["input"]["dataset"] == "a/raw" and rec["input"]["kind"] == "hdf5"
    code, _, err = run_cli(
        "segment-stack", run, f, "--dataset", "/a/raw", "--out", tmp_path / "p", "--device", "cpu"
    )
    assert code == 0 and "0 computed" in _ + err  # the same job: resumed, nothing to do
    line = one_error(
        run_cli, "segment-stack", run, f, "--dataset", "/b/other", "--out", tmp_path / "p"
    )
    assert "another input.dataset" in line


def test_data_exchange_reconstruction_voxel_size(tmp_path):
    h5py = pytest.importorskip("h5py")
    f = tmp_path / "recon.h5"
    with h5py.File(f, "w") as h:
        h["exchange/data"] = content()
        h["measurement/instrument/detection_system/objective/resolution"] = 0.65
        h["measurement/instrument/detection_system/objective/resolution"].attrs["units"] = "microns"
    src = open_source(f)
    assert src.voxel_size == (0.65, 0.65, 0.65) and src.unit == "micrometer"
    with h5py.File(f, "a") as h:
        h["exchange/theta"] = np.linspace(0, 180, Z)  # projections: z is the angle
    assert open_source(f).voxel_size is None


def test_n5_container_picks_its_full_resolution(tmp_path):
    ts = pytest.importorskip("tensorstore")
    vol = content()
    for level, v in (("s0", vol), ("s1", vol[:, ::2, ::2])):
        spec = {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(tmp_path / "c.n5" / "setup0" / level)},
            "metadata": {
                "dimensions": list(v.shape[::-1]),
                "blockSize": [16, 16, 1],
                "dataType": "uint8",
                "compression": {"type": "raw"},
            },
            "create": True,
        }
        ts.open(spec).result()[...] = v.T
    (tmp_path / "c.n5" / "attributes.json").write_text('{"n5": "2.5.1"}')
    src = open_source(tmp_path / "c.n5")
    assert src.kind == "n5" and src.dataset == "setup0/s0"
    assert np.array_equal(read_all(src), vol)
    assert open_source(tmp_path / "c.n5", dataset="setup0/s1").shape == (20, 24)


def test_dataset_for_a_single_stack_format_is_refused(tmp_path):
    f = tmp_path / "s.tif"
    tifffile.imwrite(f, content())
    with pytest.raises(TomosegError, match="dataset='x': .* holds one stack"):
        open_source(f, dataset="x")


def test_bad_mrc_header_is_one_error_line(tmp_path, run, run_cli):
    pytest.importorskip("mrcfile")
    f = tmp_path / "bad.mrc"
    f.write_bytes(b"\0" * 1100)
    with pytest.raises(TomosegError, match="cannot read MRC") as exc:
        open_source(f)
    assert "\n" not in str(exc.value)
    assert "cannot read MRC" in one_error(run_cli, "segment-stack", run, f, "--out", tmp_path / "o")


def test_absent_library_names_the_extra(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "a.h5", "w") as h:
        h["v"] = content()
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)  # import h5py fails
    with pytest.raises(
        TomosegError, match=r"needs the Python package h5py: pip install 'tomoseg\[formats\]'"
    ):
        open_source(tmp_path / "a.h5")


# ----------------------------------------------------------------------------- objects


def test_label_volumes_of_every_new_format_measure_alike(tmp_path):
    """``objects`` reads label volumes (and truth) from HDF5, MRC and N5 as from TIFF."""
    h5py = pytest.importorskip("h5py")
    mrcfile = pytest.importorskip("mrcfile")
    lab = np.zeros((Z, *SHAPE), np.uint8)
    lab[1:3, 5:10, 5:10] = 1
    lab[2:5, 20:30, 30:40] = 2  # instance ids: the truth; the volume's class is lab > 0
    tifffile.imwrite(tmp_path / "t.tif", lab)
    tifffile.imwrite(tmp_path / "l.tif", (lab > 0).astype(np.uint8))
    with h5py.File(tmp_path / "l.h5", "w") as h:
        h["labels"] = (lab > 0).astype(np.uint8)
        h["truth"] = lab
    with mrcfile.new(tmp_path / "l.mrc") as m:
        m.set_data((lab > 0).astype(np.int8))
    from tomoseg.evaluation.objects import analyze_objects

    seen = {}
    truth = {"l.tif": "t.tif", "l.h5": "l.h5:/truth", "l.mrc": "t.tif"}
    for name in ("l.tif", "l.h5", "l.mrc"):
        volume = f"{tmp_path / name}:/labels" if name.endswith("h5") else tmp_path / name
        s = analyze_objects(volume, tmp_path / f"o-{name}", meshes=0, truth=tmp_path / truth[name])
        d = s["detection"]
        seen[name] = (d["predicted_objects"], d["true_objects"], d["matched"])
    assert set(seen.values()) == {(2, 2, 2)}, seen
