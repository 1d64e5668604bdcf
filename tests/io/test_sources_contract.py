"""The contract of every registered slice source (tomoseg.io.sources.FORMATS): one content,
written by each format's writer, reads back as the same slices, ids and voxel size, and segments
to the same labels through ``segment_stack`` and ``Predictor.predict_volume``.

A format registered without a writer here fails ``test_every_registered_format_has_a_writer``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from conftest import TINY_TRAIN, make_dataset

from tomoseg.io.ome_zarr import write_ngff_attrs
from tomoseg.io.sources import FORMATS, SliceSource, open_source

SHAPE = (40, 48)
Z = 5
VOXEL = (2.0, 0.5, 0.5)
TINY = {**TINY_TRAIN, "tile_size": 0, "precision": "32"}

pytestmark = pytest.mark.usefixtures("one_thread")


def content() -> np.ndarray:
    """(Z, Y, X) uint16: noise with a bright square per slice."""
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 40, (Z, *SHAPE)).astype(np.uint16)
    for z in range(Z):
        y, x = rng.integers(0, SHAPE[0] - 10), rng.integers(0, SHAPE[1] - 10)
        vol[z, y : y + 8, x : x + 8] += 80
    return vol


# ----------------------------------------------------------------------------- writers

#: a writer: (folder to write in, volume) -> (input, voxel size its metadata declares or None)
Writer = Callable[[Path, np.ndarray], tuple[Any, tuple[float, float, float] | None]]


def _folder(d: Path, vol: np.ndarray):
    d.mkdir(parents=True)
    for z, s in enumerate(vol):
        tifffile.imwrite(d / f"z{z:04d}.tif", s)
    return d, None


def _multipage(d: Path, vol: np.ndarray):
    d.mkdir(parents=True)
    tifffile.imwrite(d / "stack.tif", vol)
    return d / "stack.tif", None


def _ome_tiff(d: Path, vol: np.ndarray):
    d.mkdir(parents=True)
    meta = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
    tifffile.imwrite(d / "stack.ome.tif", vol, ome=True, metadata=meta)
    return d / "stack.ome.tif", VOXEL


def _imagej(d: Path, vol: np.ndarray):
    d.mkdir(parents=True)
    tifffile.imwrite(
        d / "stack.tif",
        vol,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"},
    )
    return d / "stack.tif", VOXEL


def _zarr(d: Path, vol: np.ndarray):
    zarr.create_array(str(d / "in.zarr"), data=vol, chunks=(1, *SHAPE))
    return d / "in.zarr", None


def _ome_zarr(d: Path, vol: np.ndarray):
    g = zarr.open_group(str(d / "in.ome.zarr"), mode="w", zarr_format=2)
    g.create_array("0", data=vol, chunks=(1, *SHAPE))
    write_ngff_attrs(g, "raw", VOXEL, "micrometer")
    return d / "in.ome.zarr", VOXEL


def _zarr_v3_names(d: Path, vol: np.ndarray):
    """Zarr v3 with ``dimension_names`` and a length-1 channel axis (c, z, y, x)."""
    zarr.create_array(
        str(d / "in.zarr"),
        data=vol[None],
        chunks=(1, 1, *SHAPE),
        dimension_names=["c", "z", "y", "x"],
    )
    return d / "in.zarr", None


def _data_exchange(d: Path, vol: np.ndarray):
    """A tomography beamline's Data Exchange file: /exchange/data beside flats and darks."""
    h5py = pytest.importorskip("h5py")
    d.mkdir(parents=True)
    with h5py.File(d / "scan.h5", "w") as f:
        f.create_dataset("exchange/data_white", data=vol[:2])
        f.create_dataset("exchange/data", data=vol, chunks=(1, *SHAPE))
        f["exchange/data"].attrs["element_size_um"] = VOXEL
    return d / "scan.h5", VOXEL


def _ilastik(d: Path, vol: np.ndarray):
    """An ilastik export: ``exported_data`` (z, y, x, c) with its ``axistags``."""
    h5py = pytest.importorskip("h5py")
    import json

    d.mkdir(parents=True)
    tags = {
        "axes": [{"key": k, "typeFlags": 2, "resolution": 0, "description": ""} for k in "zyxc"]
    }
    with h5py.File(d / "export.h5", "w") as f:
        f.create_dataset("exported_data", data=vol[..., None], chunks=(1, *SHAPE, 1))
        f["exported_data"].attrs["axistags"] = json.dumps(tags)
    return d / "export.h5", None


def _mrc(d: Path, vol: np.ndarray):
    """An MRC volume with its voxel size in angstroms (x, y, z = 5, 5, 20 Å = 0.5, 0.5, 2 nm)."""
    mrcfile = pytest.importorskip("mrcfile")
    d.mkdir(parents=True)
    with mrcfile.new(d / "tomo.rec") as m:
        m.set_data(vol)
        m.voxel_size = (5.0, 5.0, 20.0)
    return d / "tomo.rec", VOXEL


def _n5(d: Path, vol: np.ndarray):
    """An N5 dataset written by tensorstore: dimensions x, y, z (fastest first)."""
    ts = pytest.importorskip("tensorstore")
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(d / "in.n5" / "raw")},
        "metadata": {
            "dimensions": list(vol.shape[::-1]),
            "blockSize": [SHAPE[1], SHAPE[0], 1],
            "dataType": "uint16",
            "compression": {"type": "gzip"},
        },
        "create": True,
    }
    arr = ts.open(spec).result()
    arr[...] = vol.T
    (d / "in.n5" / "attributes.json").write_text('{"n5": "2.5.1"}')
    attrs = d / "in.n5" / "raw" / "attributes.json"
    meta = json.loads(attrs.read_text())
    meta["pixelResolution"] = {"dimensions": [0.5, 0.5, 2.0], "unit": "um"}
    attrs.write_text(json.dumps(meta))
    return d / "in.n5", VOXEL


def _numpy(d: Path, vol: np.ndarray):
    return vol.copy(), None


def _dask(d: Path, vol: np.ndarray):
    da = pytest.importorskip("dask.array")
    return da.from_array(vol, chunks=(1, *SHAPE)), None


#: writers by registered format (``kind``): every format needs at least one
WRITERS: dict[str, dict[str, Writer]] = {
    "folder": {"folder": _folder},
    "tiff": {"multipage-tiff": _multipage, "ome-tiff": _ome_tiff, "imagej-tiff": _imagej},
    "zarr": {"zarr": _zarr, "ome-zarr": _ome_zarr, "zarr-v3-names": _zarr_v3_names},
    "hdf5": {"data-exchange": _data_exchange, "ilastik": _ilastik},
    "mrc": {"mrc": _mrc},
    "n5": {"n5": _n5},
    "array": {"numpy": _numpy, "dask": _dask},
}
CASES = [(kind, name) for kind, ws in WRITERS.items() for name in ws]


def test_every_registered_format_has_a_writer():
    kinds = [f.kind for f in FORMATS]
    assert len(kinds) == len(set(kinds)), f"two formats share a kind: {kinds}"
    missing = sorted(set(kinds) - set(WRITERS))
    assert not missing, f"registered formats without a writer in this test: {missing}"
    assert not set(WRITERS) - set(kinds), "writers of formats that are not registered"


def write(tmp_path: Path, kind: str, name: str) -> tuple[Any, tuple[float, float, float] | None]:
    return WRITERS[kind][name](tmp_path / name, content())


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_reads_back_the_same_stack(tmp_path, kind, name):
    vol = content()
    inp, voxel = write(tmp_path, kind, name)
    src = open_source(inp)
    assert isinstance(src, SliceSource)
    assert src.kind == kind
    assert (src.n, *src.shape) == vol.shape and src.dtype == "uint16"
    assert src.ids == [f"z{z:04d}" for z in range(Z)]
    assert src.voxel_size == voxel
    with src.reader() as read:
        for z in range(Z):
            s = read(z)
            assert s.dtype == np.uint16 and np.array_equal(s, vol[z]), z
    rec = src.describe()
    assert rec["kind"] == kind and rec["ids"] == src.ids and rec["shape"] == list(vol.shape)
    import pickle

    again = pickle.loads(pickle.dumps(src))  # sent as it is to worker processes
    with again.reader() as read:
        assert np.array_equal(read(Z - 1), vol[Z - 1])


@pytest.fixture(scope="module")
def tiny_run(one_thread, tmp_path_factory) -> Path:
    from tomoseg.config.schema import load_config
    from tomoseg.training.trainer import train

    root = tmp_path_factory.mktemp("contract")
    data = make_dataset(root / "data", shape=SHAPE)
    return train(data, root / "run", load_config(None, TINY), progress=False)


def test_every_source_segments_to_the_same_labels(tmp_path, tiny_run):
    import tomoseg

    p = tomoseg.Predictor.from_run(tiny_run, device="cpu")
    ref = np.stack([p.predict(s) for s in content()])
    for kind, name in CASES:
        try:
            inp, _ = write(tmp_path, kind, name)
        except pytest.skip.Exception:
            continue  # dask is optional
        out = tmp_path / f"out-{name}"
        info = tomoseg.segment_stack(tiny_run, inp, out, device="cpu")
        assert info["slices"] == Z and info["computed"] == Z, name
        got = np.asarray(zarr.open_array(str(out / "labels.zarr" / "0"), mode="r")[:])
        assert np.array_equal(got, ref), name
        assert np.array_equal(p.predict_volume(inp), ref), name


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros((4, 5), np.uint8), r"input must be a \(Z, Y, X\) array, got shape \(4, 5\)"),
        (np.zeros((2, 4, 5), complex), "input must hold integers or floats, got complex128"),
        (np.zeros((0, 4, 5), np.uint8), r"the input array is empty \(shape \(0, 4, 5\)\)"),
        ([[1, 2], [3, 4]], "input must be a path or a \\(Z, Y, X\\) array, got list"),
    ],
)
def test_bad_arrays_are_one_error_line(value, match):
    from tomoseg.errors import TomosegError

    with pytest.raises(TomosegError, match=match) as exc:
        open_source(value)
    assert "\n" not in str(exc.value)


def test_array_with_channel_is_refused():
    from tomoseg.errors import TomosegError

    with pytest.raises(TomosegError, match="channel=1 is out of range: the input array has no C"):
        open_source(content(), channel=1)


@pytest.mark.parametrize(("kind", "name"), [c for c in CASES if c[0] not in ("array", "folder")])
def test_every_volume_format_is_a_labelled_sub_volume(tmp_path, kind, name):
    """An image volume with its label volume, in each file format: the same training samples
    (one per z-slice, the label rule applied) as the multi-page TIFF pair."""
    from tomoseg.data.sources import DataSource, load_training_samples

    vol = content()
    lab = (vol > 60).astype(np.uint16)

    def samples(k: str, n: str):
        img, _ = WRITERS[k][n](tmp_path / f"{n}-img", vol)
        msk, _ = WRITERS[k][n](tmp_path / f"{n}-lab", lab)
        src = DataSource.of(images=img, masks=msk)
        got = load_training_samples(src, ignore_label=None, val_fraction=0.25, seed=0)
        return sorted(got.train + got.val, key=lambda s: s.id)

    ref = samples("tiff", "multipage-tiff") if name != "multipage-tiff" else None
    got = samples(kind, name)
    assert len(got) == Z
    for z, s in enumerate(got):
        assert np.array_equal(s.image, vol[z]) and np.array_equal(s.mask, lab[z]), (name, z)
    if ref is not None:
        assert [s.id.split("_")[-1] for s in got] == [s.id.split("_")[-1] for s in ref]
