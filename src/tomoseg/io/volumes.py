"""Stack outputs: the files of a ``segment_stack`` output folder and its ``stack.json``.

The inputs (folders of slices, multi-page TIFF, Zarr / OME-Zarr, HDF5, MRC, N5, arrays) are read by
:mod:`tomoseg.io.sources`; :func:`open_source` and :func:`parse_voxel_size` are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tomoseg.io.datasets import MAX_CLASSES
from tomoseg.io.jobs import read_record
from tomoseg.io.sources import SliceSource, StackSource, open_source, parse_voxel_size
from tomoseg.io.sources.base import MAX_SLICES
from tomoseg.utils.files import confined, validated

#: files of a ``segment_stack`` output folder (written by :mod:`tomoseg.inference.stack`)
STACK_FILE = "stack.json"
ZARR_NAME = "labels.zarr"
TIFF_DIR = "labels"
PLANES_DIR = "planes"  #: temporary stores of a job with planes other than xy, while it runs


class StackInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    ids: list[str] | None = Field(default=None, max_length=MAX_SLICES)


class StackInfo(BaseModel):
    """What tomoseg reads from a ``stack.json`` (other fields are kept unread): the volume's
    name inside the folder, the classes, the voxel size and the input's slice ids."""

    model_config = ConfigDict(extra="allow")
    volume: str | None = None
    classes: list[str] | None = Field(default=None, min_length=1, max_length=MAX_CLASSES)
    class_of_interest: str | None = None
    voxel_size: list[float] | None = None
    unit: str | None = None
    input: StackInput | None = None

    @field_validator("voxel_size")
    @classmethod
    def _voxel(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else list(parse_voxel_size(v) or ())


def read_stack_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``stack.json`` of a ``segment_stack`` output folder (None when there is none),
    checked by :class:`StackInfo`; its ``volume`` is a path inside the folder.

    Raises:
        TomosegError: unreadable, not bounded JSON, not a mapping
            (:func:`tomoseg.io.jobs.read_record`), a field :class:`StackInfo` refuses, or a
            volume outside the folder (naming the file and the field).
    """
    f = Path(path) / STACK_FILE
    info = read_record(f)
    if info is not None:
        checked = validated(StackInfo, info, str(f))
        if checked.volume is not None:
            confined(path, checked.volume, f"{f}: volume")
    return info


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
