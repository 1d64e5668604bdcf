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
    Format,
    SliceSource,
    StackSource,
    parse_voxel_size,
)
from tomoseg.io.sources.folder import FolderFormat, FolderSource
from tomoseg.io.sources.tiff import TiffFormat, TiffSource
from tomoseg.io.sources.zarr_store import ZarrFormat, ZarrSource

#: the registered formats, asked in this order (a Zarr store is a folder too: it comes first)
FORMATS: tuple[Format, ...] = (
    ZarrFormat(),
    FolderFormat(),
    TiffFormat(),
    ArrayFormat(),
)


def open_source(
    input: str | os.PathLike[str] | Any,
    allow_gaps: bool = False,
    *,
    channel: int | None = None,
    time: int | None = None,
) -> SliceSource:
    """Inspect a stack input without reading it all (the first slice is read for its shape).

    Multi-page TIFF (ImageJ hyperstacks, OME-TIFF) and Zarr / OME-Zarr are read by their
    declared axes (the TIFF's first series, the NGFF ``axes``): Z gives the slices, and a C or T
    axis of size > 1 needs ``channel`` / ``time`` to choose one.

    Args:
        input: folder of 2D slices, TIFF file, Zarr array or (OME-)Zarr group, or a (Z, Y, X)
            array (numpy, dask, ...); a source already opened is returned as it is.
        allow_gaps: accept numbered slice files with holes in the numbering.
        channel: channel index (0-based) of a file with a C axis.
        time: time-point index (0-based) of a file with a T axis.

    Raises:
        TomosegError: missing or empty input, unknown kind, not a (Z, Y, X) stack, C or T > 1
            without a selection, a selection out of range.
    """
    if isinstance(input, SliceSource):
        return input
    if isinstance(input, (str, os.PathLike)) and not Path(input).exists():
        raise TomosegError(f"input not found: {Path(input)}")
    for fmt in FORMATS:
        if fmt.claims(input):
            return fmt.open(input, allow_gaps=allow_gaps, channel=channel, time=time)
    if isinstance(input, (str, os.PathLike)):
        raise TomosegError(
            f"input {Path(input)} is not a folder of slices, a multi-page TIFF or a Zarr "
            "array/group"
        )
    raise TomosegError(f"input must be a path or a (Z, Y, X) array, got {type(input).__name__}")


__all__ = [
    "FORMATS",
    "ArraySource",
    "FolderSource",
    "Format",
    "SliceSource",
    "StackSource",
    "TiffSource",
    "ZarrSource",
    "is_array",
    "open_source",
    "parse_voxel_size",
]
