"""Slice sources: every (Z, Y, X) input of ``segment_stack``, ``analyze_objects`` and
``Predictor.predict_volume``, found through one list.

:data:`FORMATS` is the registry: :func:`open_source` asks each format in turn whether it
``claims`` the input and opens it with the first that does. A new format is one module here
(a :class:`~tomoseg.io.sources.base.Format` whose ``open`` returns a
:class:`~tomoseg.io.sources.base.SliceSource`) plus one line in :data:`FORMATS`; the contract
test (``tests/io/test_sources_contract.py``) then asks for a writer of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tomoseg.errors import TomosegError
from tomoseg.io.sources.array import ArrayFormat, ArraySource, is_array
from tomoseg.io.sources.base import (
    MISSING_RULES,
    Format,
    ReadOptions,
    SliceSource,
    StackSource,
    check_missing,
    parse_voxel_size,
    resolve_voxel_size,
)
from tomoseg.io.sources.folder import FolderFormat, FolderSource
from tomoseg.io.sources.hdf5 import Hdf5Format, Hdf5Source
from tomoseg.io.sources.mrc import MrcFormat, MrcSource
from tomoseg.io.sources.n5 import N5Format, N5Source
from tomoseg.io.sources.tiff import TiffFormat, TiffSource
from tomoseg.io.sources.zarr_store import ZarrFormat, ZarrSource

#: the registered formats, asked in this order (Zarr and N5 stores are folders too: they come
#: before the folder of slices)
FORMATS: tuple[Format, ...] = (
    ZarrFormat(),
    N5Format(),
    FolderFormat(),
    TiffFormat(),
    Hdf5Format(),
    MrcFormat(),
    ArrayFormat(),
)


def split_dataset(input: Any, dataset: str | None) -> tuple[Any, str | None]:
    """``file.h5:/exchange/data`` as ``(file.h5, "/exchange/data")``: a path that does not exist
    whose part before a ``:`` does (an HDF5 file, a Zarr group, an N5 container); other inputs
    unchanged.

    Raises:
        TomosegError: the path names a dataset and ``dataset`` names another.
    """
    if not isinstance(input, (str, os.PathLike)) or Path(input).exists():
        return input, dataset
    text = os.fspath(input)
    for k in [i for i, ch in enumerate(text) if ch == ":"][::-1]:
        head, inner = text[:k], text[k + 1 :]
        if head and inner and Path(head).exists():
            if dataset is not None and dataset.strip("/") != inner.strip("/"):
                raise TomosegError(
                    f"dataset={dataset!r} differs from the dataset named in the path {text}"
                )
            return type(input)(head) if isinstance(input, Path) else head, inner
    return input, dataset


def open_source(
    input: str | os.PathLike[str] | Any,
    allow_gaps: bool = False,
    *,
    channel: int | None = None,
    time: int | None = None,
    dataset: str | None = None,
    transpose: bool = False,
    missing: str = "warn",
) -> SliceSource:
    """Inspect a stack input without reading it all (at most the first slice is read).

    Multi-page TIFF (ImageJ hyperstacks, OME-TIFF), Zarr / OME-Zarr, HDF5, MRC and N5 are read
    by their declared axes (the TIFF's first series, the NGFF ``axes``, Zarr v3
    ``dimension_names``, ilastik ``axistags``, the MRC axis map, N5's x, y, z order): Z gives
    the slices, and a C or T axis of size > 1 needs ``channel`` / ``time`` to choose one.

    Args:
        input: folder of 2D slices, TIFF file, Zarr array or (OME-)Zarr group, HDF5 file, MRC
            file (``.mrc``, ``.rec``, ``.st``, ``.ali``, ...), N5 dataset or container, or a
            (Z, Y, X) array (numpy, dask, ...); a source already opened is returned as it is.
            A container's array may be named in the path: ``scan.h5:/exchange/data``.
        allow_gaps: accept numbered slice files with holes in the numbering.
        channel: channel index (0-based) of a file with a C axis.
        time: time-point index (0-based) of a file with a T axis.
        dataset: the array of a container (HDF5 dataset, Zarr group member, N5 dataset);
            default: the one obvious volume (Data Exchange ``/exchange/data``, ilastik's
            ``exported_data``, an OME-Zarr's first level, the only 3D array).
        transpose: read a stack whose axes are not in Z, Y, X order by their names.
        missing: ``warn`` (default), ``error`` or ``ignore``: slices with chunks missing from
            a Zarr, N5 or HDF5 store (:func:`~tomoseg.io.sources.base.check_missing`).

    Raises:
        TomosegError: missing or empty input, unknown kind, not a (Z, Y, X) stack, C or T > 1
            without a selection, a selection out of range, axes out of order without
            ``transpose``, a file cut short, missing chunks with ``missing="error"``, a format
            whose optional library is absent (naming ``tomoseg[formats]``).

    Warns:
        TomosegWarning: slices with missing chunks (``missing="warn"``).
    """
    if isinstance(input, SliceSource):
        return input
    if missing not in MISSING_RULES:
        raise TomosegError(f"missing={missing!r}: must be warn, error or ignore")
    input, dataset = split_dataset(input, dataset)
    if isinstance(input, (str, os.PathLike)) and not Path(input).exists():
        raise TomosegError(f"input not found: {Path(input)}")
    options = ReadOptions(allow_gaps, channel, time, dataset, bool(transpose), missing)
    for fmt in FORMATS:
        if fmt.claims(input):
            if dataset is not None and not fmt.containers:
                raise TomosegError(
                    f"dataset={dataset!r}: {_where(input)} is {fmt.description}, which holds "
                    "one stack (dataset names an array of an HDF5 file, a Zarr group or an "
                    "N5 container)"
                )
            src = fmt.open(input, options)
            check_missing(src, missing)
            return src
    if isinstance(input, (str, os.PathLike)):
        raise TomosegError(
            f"input {Path(input)} is not a folder of slices, a multi-page TIFF, a Zarr "
            "array/group, an HDF5, MRC or N5 file"
        )
    raise TomosegError(f"input must be a path or a (Z, Y, X) array, got {type(input).__name__}")


def _where(input: Any) -> str:
    return str(Path(input)) if isinstance(input, (str, os.PathLike)) else "the input array"


__all__ = [
    "FORMATS",
    "ArraySource",
    "FolderSource",
    "Format",
    "Hdf5Source",
    "MrcSource",
    "N5Source",
    "ReadOptions",
    "SliceSource",
    "StackSource",
    "TiffSource",
    "ZarrSource",
    "is_array",
    "open_source",
    "parse_voxel_size",
    "resolve_voxel_size",
    "split_dataset",
]
