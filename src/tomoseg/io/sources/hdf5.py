"""HDF5 files (h5py, the ``formats`` extra): one dataset of the file, read one plane at a time
(a hyperslab: only the chunks that plane touches).

The dataset: ``dataset`` (or ``scan.h5:/exchange/data``), else Data Exchange's
``/exchange/data`` (tomography beamlines), ilastik's ``exported_data``, else the file's only
array with 3 or more axes. Axes: ilastik's ``axistags`` attribute (JSON, one ``key`` per axis),
else Z, Y, X for the last three. Voxel size: the ``element_size_um`` attribute (z, y, x in
micrometers; ilastik, Fiji's HDF5 plugin), else for a Data Exchange reconstruction the
objective's ``resolution`` (``/measurement/instrument/detection_system/objective/resolution``;
not for projections, whose first axis is the angle). Chunks never written (unallocated: read as the fill
value) are counted per slice (``missing``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io.sources.base import (
    UNIT_NAMES,
    ReadOptions,
    StackSource,
    axis_letters,
    need,
    parse_voxel_size,
    pick_dataset,
    plan_axes,
    slice_ids,
)
from tomoseg.utils.files import loads_json
from tomoseg.utils.format import first_line

#: file name endings read as HDF5 (also any file starting with the HDF5 signature)
H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nxs", ".cxi")
_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: datasets read by default when present, in this order (Data Exchange, ilastik)
PREFERRED = ("exchange/data", "exported_data")


@dataclass
class Hdf5Source(StackSource):
    """Slice ``i`` is the plane at Z = ``i`` (of the chosen C and T) of the dataset ``dataset``."""

    kind: ClassVar[str] = "hdf5"

    @property
    def where(self) -> str:
        return f"{self.path}:/{self.dataset}"

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        h5py = need("h5py", "HDF5")
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise TomosegError(f"cannot read HDF5 {self.path}: {first_line(exc)}") from None
        with f:
            dset = f[self.dataset]

            def read(i: int) -> np.ndarray:
                try:
                    a = np.asarray(dset[self.index(i)])  # one hyperslab: never the whole volume
                except Exception as exc:  # h5py raises OSError, KeyError, ... for bad chunks
                    raise TomosegError(
                        f"slice {self.ids[i]} of {self.where} is unreadable: {first_line(exc)}"
                    ) from None
                return self.oriented(a, i)

            yield read


class Hdf5Format:
    kind = "hdf5"
    description = "an HDF5 file"
    containers = True

    def claims(self, input: Any) -> bool:
        if not isinstance(input, (str, os.PathLike)) or not Path(input).is_file():
            return False
        if Path(input).suffix.lower() in H5_SUFFIXES:
            return True
        try:
            with open(input, "rb") as f:
                return f.read(8) == _SIGNATURE
        except OSError:
            return False

    def open(self, input: Any, options: ReadOptions) -> Hdf5Source:
        h5py = need("h5py", "HDF5")
        p = Path(input)
        try:
            f = h5py.File(p, "r")
        except OSError as exc:
            raise TomosegError(f"cannot read HDF5 {p}: {first_line(exc)}") from None
        with f:
            found = _datasets(f, h5py)
            if options.dataset is not None:
                name = options.dataset.strip("/")
                if name not in found:
                    listing = ", ".join(f"/{k}" for k in list(found)[:6]) or "none"
                    raise TomosegError(
                        f"HDF5 {p} has no image dataset '/{name}' (its datasets: {listing})"
                    )
            else:
                name = pick_dataset(found, PREFERRED, f"HDF5 {p}")
            dset = f[name]
            shape = tuple(int(n) for n in dset.shape)
            where = f"HDF5 {p}:/{name}"
            axes = axis_letters(_axistags(dset), len(shape))
            axes, nz, ch, tm = plan_axes(
                axes, shape, options.channel, options.time, where, options.transpose
            )
            if nz == 0 or 0 in shape:
                raise TomosegError(f"{where} is empty (shape {shape})")
            dtype = "uint8" if dset.dtype.kind == "b" else str(dset.dtype)
            sizes = dict(zip(axes, shape, strict=True))
            voxel, unit = _element_size(dset, axes), "micrometer"
            if voxel is None and name.startswith("exchange/"):
                voxel, unit = _data_exchange_pixel(f)
            src = Hdf5Source(
                p, slice_ids(nz), (sizes["Y"], sizes["X"]), dtype, voxel,
                unit if voxel else None, axes=axes, axes_shape=shape, channel=ch,
                time=tm, dataset=name,
            )  # fmt: skip
            if options.missing != "ignore" and dset.chunks is not None:
                src.missing_chunks = src.holes(tuple(dset.chunks), _allocated(dset))
        return src


def _datasets(f: Any, h5py: Any) -> dict[str, tuple[int, ...]]:
    """Every numeric dataset with 2 or more axes: path (no leading ``/``) -> shape."""
    found: dict[str, tuple[int, ...]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2:
            dt = obj.dtype
            if np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating) or dt.kind == "b":
                found[name] = tuple(int(n) for n in obj.shape)

    f.visititems(visit)
    return found


def _axistags(dset: Any) -> list[str] | None:
    """Axis names of ilastik's ``axistags`` attribute (``{"axes": [{"key": "z"}, ...]}``)."""
    raw = dset.attrs.get("axistags")
    if raw is None:
        return None
    try:
        tags = loads_json(raw if isinstance(raw, bytes) else str(raw), "axistags")
        return [str(a["key"]) for a in tags["axes"]]
    except (ValueError, KeyError, TypeError):
        return None


def _element_size(dset: Any, axes: str) -> tuple[float, float, float] | None:
    """(z, y, x) from ``element_size_um`` (one value per axis, or z, y, x), else None."""
    raw = dset.attrs.get("element_size_um")
    if raw is None:
        return None
    vals = [float(v) for v in np.ravel(raw)]
    if len(vals) == len(axes):
        by = dict(zip(axes, vals, strict=True))
        vals = [by.get(a, 1.0) for a in "ZYX"]
    try:
        return parse_voxel_size(vals[-3:]) if len(vals) >= 3 else None
    except TomosegError:
        return None


#: Data Exchange's pixel size (tomography beamlines: APS 2-BM, 7-BM, 32-ID)
DX_PIXEL = "measurement/instrument/detection_system/objective/resolution"


def _data_exchange_pixel(f: Any) -> tuple[tuple[float, float, float] | None, str | None]:
    """Isotropic voxel size of a reconstructed Data Exchange volume: the objective's
    ``resolution`` (its ``units`` attribute, else micrometer); None for projections (the file
    has ``/exchange/theta``: the first axis is then the rotation angle, not z)."""
    if DX_PIXEL not in f or "exchange/theta" in f:
        return None, None
    try:
        r = float(np.ravel(f[DX_PIXEL][()])[0])
        voxel = parse_voxel_size([r, r, r])
    except (TomosegError, ValueError, TypeError, IndexError):
        return None, None
    unit = f[DX_PIXEL].attrs.get("units", "micrometer")
    unit = unit.decode() if isinstance(unit, bytes) else str(unit)
    return voxel, UNIT_NAMES.get(unit, unit)


def _allocated(dset: Any) -> set[tuple[int, ...]] | None:
    """Grid positions of the dataset's chunks that are stored (allocated) in the file; None
    when all are."""
    chunks = dset.chunks
    grid = [-(-n // c) for n, c in zip(dset.shape, chunks, strict=True)]
    n = dset.id.get_num_chunks()
    if n >= int(np.prod(grid)):
        return None
    stored: set[tuple[int, ...]] = set()

    def add(info: Any) -> None:
        stored.add(tuple(int(o) // c for o, c in zip(info.chunk_offset, chunks, strict=True)))

    if hasattr(dset.id, "chunk_iter"):
        try:
            dset.id.chunk_iter(add)
            return stored
        except Exception:  # an HDF5 library without H5Dchunk_iter
            stored.clear()
    for k in range(n):
        add(dset.id.get_chunk_info(k))
    return stored
