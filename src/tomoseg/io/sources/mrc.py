"""MRC files of electron microscopy and cryo-ET (``.mrc``, ``.rec``, ``.st``, ``.ali``,
``.map``, ``.mrcs``) via mrcfile (the ``formats`` extra), memory-mapped (``mrcfile.mmap``,
``permissive=False``: a bad header is one error line): slice ``i`` is section ``i``.

Axes: the header's axis map (``mapc``, ``mapr``, ``maps``: which of X, Y, Z the columns, rows
and sections are; 1, 2, 3 as almost every writer stores). Voxel size: the header's (``cella`` /
``mx, my, mz``, in angstroms), recorded in nanometers (1 Å = 0.1 nm); None when unset (0).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.sources.base import (
    ReadOptions,
    StackSource,
    need,
    parse_voxel_size,
    plan_axes,
    slice_ids,
)
from tomoseg.utils.format import first_line

#: file name endings read as MRC
MRC_SUFFIXES = (".mrc", ".mrcs", ".rec", ".st", ".ali", ".map")


@dataclass
class MrcSource(StackSource):
    """Slice ``i`` is section ``i`` of the memory-mapped data (only its pages are read)."""

    kind: ClassVar[str] = "mrc"

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        with _mmap(self.path) as mrc:
            data = mrc.data

            def read(i: int) -> np.ndarray:
                try:
                    a = np.array(data[self.index(i)])  # a copy: the map closes after
                except (OSError, ValueError) as exc:
                    raise TomosegError(
                        f"slice {self.ids[i]} of {self.path} is unreadable: {first_line(exc)}"
                    ) from None
                return self.oriented(a, i)

            yield read


@contextmanager
def _mmap(path: Path) -> Iterator[Any]:
    """``mrcfile.mmap(path, permissive=False)``; its header complaints as one error line, its
    other notes as TomosegWarnings."""
    mrcfile = need("mrcfile", "MRC")
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=False)
        except (ValueError, OSError, EOFError) as exc:
            raise TomosegError(f"cannot read MRC {path}: {first_line(exc)}") from None
    for note in notes:
        warnings.warn(f"MRC {path}: {first_line(note.message)}", TomosegWarning, stacklevel=3)
    with mrc:
        yield mrc


class MrcFormat:
    kind = "mrc"
    description = "an MRC file"
    containers = False

    def claims(self, input: Any) -> bool:
        return (
            isinstance(input, (str, os.PathLike))
            and Path(input).suffix.lower() in MRC_SUFFIXES
            and Path(input).is_file()
        )

    def open(self, input: Any, options: ReadOptions) -> MrcSource:
        p = Path(input)
        with _mmap(p) as mrc:
            h = mrc.header
            shape = tuple(int(n) for n in mrc.data.shape)
            dtype = str(mrc.data.dtype)
            if mrc.data.dtype.kind not in "iuf":
                raise TomosegError(f"MRC {p} holds {dtype} pixels, not grayscale numbers")
            axes = "?" * (len(shape) - 3) + _axes(h) if len(shape) >= 3 else "YX"
            voxel = _voxel(mrc.voxel_size)
        where = f"MRC {p}"
        axes, nz, ch, tm = plan_axes(
            axes, shape, options.channel, options.time, where, options.transpose
        )
        if nz == 0 or 0 in shape:
            raise TomosegError(f"{where} is empty (shape {shape})")
        sizes = dict(zip(axes, shape, strict=True))
        return MrcSource(
            p, slice_ids(nz), (sizes["Y"], sizes["X"]), dtype, voxel,
            "nanometer" if voxel else None, axes=axes, axes_shape=shape, channel=ch, time=tm,
        )  # fmt: skip


def _axes(header: Any) -> str:
    """The letters of the data's (section, row, column) axes from ``maps, mapr, mapc``."""
    try:
        order = [int(header.maps), int(header.mapr), int(header.mapc)]
    except (TypeError, ValueError):
        return "ZYX"
    if sorted(order) != [1, 2, 3]:
        return "ZYX"
    return "".join("XYZ"[k - 1] for k in order)


def _voxel(size: Any) -> tuple[float, float, float] | None:
    """(z, y, x) in nanometers from mrcfile's ``voxel_size`` (x, y, z in Å); None when unset."""
    try:
        zyx = [float(size.z) / 10, float(size.y) / 10, float(size.x) / 10]
    except (AttributeError, TypeError, ValueError):
        return None
    try:
        return parse_voxel_size(zyx)
    except TomosegError:
        return None
