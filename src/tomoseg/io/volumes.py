"""Stack outputs: the files of a ``segment_stack`` output folder and its ``stack.json``.

The inputs (folders of slices, multi-page TIFF, Zarr / OME-Zarr, HDF5, MRC, N5, arrays) are read by
:mod:`tomoseg.io.sources`; :func:`open_source` and :func:`parse_voxel_size` are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tomoseg.io.jobs import read_record
from tomoseg.io.sources import SliceSource, StackSource, open_source, parse_voxel_size

#: files of a ``segment_stack`` output folder (written by :mod:`tomoseg.inference.stack`)
STACK_FILE = "stack.json"
ZARR_NAME = "labels.zarr"
TIFF_DIR = "labels"


def read_stack_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``stack.json`` of a ``segment_stack`` output folder (None when there is none).

    Raises:
        TomosegError: unreadable, not JSON, or not a mapping (:func:`tomoseg.io.jobs.read_record`).
    """
    return read_record(Path(path) / STACK_FILE)


__all__ = [
    "STACK_FILE",
    "TIFF_DIR",
    "ZARR_NAME",
    "SliceSource",
    "StackSource",
    "open_source",
    "parse_voxel_size",
    "read_stack_info",
]
