"""The contract of a slice source and the checks every format shares (axes, voxel size, ids)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from tomoseg.errors import TomosegError

#: axis letters that count slices: Z, and tifffile's generic page axes (I, Q)
Z_AXES = "ZQI"


@runtime_checkable
class SliceSource(Protocol):
    """A (Z, Y, X) stack of 2D grayscale slices, read one slice at a time.

    The contract every registered format keeps (checked by ``tests/io/test_sources_contract.py``
    for each of them):

    * ``n`` slices of ``shape`` ``(Y, X)``; slice ``i`` (``0 <= i < n``) read by the callable that
      :meth:`reader` gives is a 2D numpy array of that shape and of dtype ``dtype`` (a numpy
      dtype name: an integer or float type; bool is read as ``uint8``). Reading slice ``i``
      never reads the whole stack (a page of a TIFF, a chunk of a Zarr, a block of a dask array).
    * ``ids``: ``n`` unique slice names in stack order: the file stems of a folder, else
      ``z0000``, ``z0001``, ... (at least four digits).
    * ``voxel_size``: ``(z, y, x)`` positive floats from the input's metadata, or None where it
      declares none; ``unit`` the unit of that size (e.g. ``micrometer``), or None.
    * ``kind``: the format's name in :data:`tomoseg.io.sources.FORMATS` (recorded in
      ``stack.json``: a resumed job must be read the same way).
    * ``name``: a short title (the file or folder name; ``array`` for memory);
      ``where``: the input as messages name it (its path, or ``the input array``).
    * picklable: a source is sent as it is to worker processes and Ray actors, which open their
      own :meth:`reader` (so it holds paths and small metadata, or the array itself).
    * :meth:`resolved`: the same source with absolute paths, for processes on other nodes or in
      another working directory (itself when it holds no path).
    * :meth:`describe`: the JSON-able record of the input (``stack.json``'s ``input``): ``path``,
      ``kind``, ``slices``, ``shape``, ``dtype``, ``axes``, ``axes_shape``, ``channel``,
      ``time``, ``ids``, plus ``fingerprint`` for inputs without a path.

    Errors: a slice that cannot be read raises :class:`~tomoseg.errors.TomosegError` naming it.
    """

    kind: str
    ids: list[str]
    shape: tuple[int, int]
    dtype: str
    voxel_size: tuple[float, float, float] | None
    unit: str | None

    @property
    def n(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def where(self) -> str: ...

    def reader(self) -> AbstractContextManager[Callable[[int], np.ndarray]]: ...

    def describe(self) -> dict[str, Any]: ...

    def resolved(self) -> SliceSource: ...


class Format(Protocol):
    """A registered input format: one module of :mod:`tomoseg.io.sources`.

    ``claims(input)`` says whether the input is of this format (cheaply: no pixel is read);
    ``open(input, allow_gaps=..., channel=..., time=...)`` checks it and returns its
    :class:`SliceSource`, raising :class:`~tomoseg.errors.TomosegError` for a bad one.
    """

    kind: str
    description: str

    def claims(self, input: Any) -> bool: ...

    def open(
        self, input: Any, *, allow_gaps: bool, channel: int | None, time: int | None
    ) -> SliceSource: ...


@dataclass
class StackSource(ABC):
    """The fields and behaviour the file formats share; each format subclasses it with its
    :meth:`reader`. A file with more axes (an ImageJ hyperstack or OME-TIFF with Z, C and T, an
    OME-Zarr with ``t, c, z, y, x``) is read by its declared axes: ``axes`` and ``axes_shape``
    are the file's, ``channel`` and ``time`` the selected indices (None when the file has no such
    axis), and slice ``i`` is the plane at ``Z = i`` of that channel and time point."""

    kind: ClassVar[str] = ""

    path: Path
    ids: list[str]
    shape: tuple[int, int]
    dtype: str
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None
    axes: str = "ZYX"
    axes_shape: tuple[int, ...] = ()
    channel: int | None = None
    time: int | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def where(self) -> str:
        return str(self.path)

    def leading(self, i: int) -> tuple[int, ...]:
        """Indices of the axes before Y, X for slice ``i`` (Z = i, the chosen C and T, else 0)."""
        idx = []
        for a in self.axes[:-2]:
            if a in Z_AXES:
                idx.append(i)
            elif a == "C":
                idx.append(self.channel or 0)
            elif a == "T":
                idx.append(self.time or 0)
            else:
                idx.append(0)
        return tuple(idx)

    @abstractmethod
    def reader(self) -> AbstractContextManager[Callable[[int], np.ndarray]]:
        """Open the input once: a context manager yielding ``read(i) -> (Y, X) array`` (each
        format's subclass reads its own files; the base class cannot be instantiated)."""

    def resolved(self) -> StackSource:
        return replace(self, path=self.path.resolve(), files=[f.resolve() for f in self.files])

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path.resolve()),
            "kind": self.kind,
            "slices": self.n,
            "shape": [self.n, *self.shape],
            "dtype": self.dtype,
            "axes": self.axes,
            "axes_shape": list(self.axes_shape),
            "channel": self.channel,
            "time": self.time,
            "ids": self.ids,
        }


# ----------------------------------------------------------------------------- shared checks


def parse_voxel_size(value: Any) -> tuple[float, float, float] | None:
    """Validate a voxel size: three positive finite numbers (z, y, x), or ``"z,y,x"``; None passes.

    Raises:
        TomosegError: anything else.
    """
    if value is None:
        return None
    raw = value
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\sx]+", value.strip()) if v]
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
        raise TomosegError(f"voxel size must be three positive numbers (z, y, x), got {raw!r}")
    return vals  # type: ignore[return-value]


def plan_axes(
    axes: str,
    shape: tuple[int, ...],
    channel: int | None,
    time: int | None,
    where: str,
) -> tuple[str, int, int | None, int | None]:
    """Check the declared axes of a stack and the channel / time selection.

    Args:
        axes: one upper-case letter per axis, ending in ``YX`` (``?`` = unknown meaning).
        shape: the size of each axis.
        channel, time: the requested indices (None: the axis must be a singleton, if present).
        where: the input, for messages.

    Returns:
        ``(axes, slices, channel, time)``: the number of Z slices and the selected indices
        (None where the file has no such axis).

    Raises:
        TomosegError: C > 1 or T > 1 without a selection, a selection out of range, another axis
            of size > 1 (colour samples, unknown axes), or two slice axes.
    """
    sizes = dict(zip(axes, shape, strict=True))
    desc = f"axes {axes} ({', '.join(f'{a}={n}' for a, n in zip(axes, shape, strict=True))})"
    if not axes.endswith("YX"):
        raise TomosegError(f"{where} has {desc}; expected 2D grayscale slices (Y, X last)")
    picked: dict[str, int | None] = {}
    for letter, name, value, plural in (
        ("C", "channel", channel, "channels"),
        ("T", "time", time, "time points"),
    ):
        n = sizes.get(letter)
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
            raise TomosegError(f"{name}={value!r} is not an index (an integer >= 0)")
        if n is None:
            if value not in (None, 0):
                raise TomosegError(
                    f"{name}={value} is out of range: {where} has no {letter} axis ({desc})"
                )
            picked[name] = None
        elif value is None:
            if n > 1:
                raise TomosegError(f"{where} has {desc}: choose one with {name}=0..{n - 1}")
            picked[name] = 0
        elif value >= n:
            raise TomosegError(
                f"{name}={value} is out of range: {where} has {n} {plural} ({desc}); "
                f"choose 0..{n - 1}"
            )
        else:
            picked[name] = int(value)
    zs = [a for a in axes[:-2] if a in Z_AXES and sizes[a] > 1]
    if len(zs) > 1:
        raise TomosegError(f"{where} has {desc}: two slice axes, expected one Z axis")
    for a in axes[:-2]:
        if a not in Z_AXES + "CT" and sizes[a] > 1:
            what = "colour samples" if a == "S" else f"axis {a}"
            raise TomosegError(f"{where} has {desc}: {what} of size {sizes[a]} is not supported")
    nz = int(np.prod([sizes[a] for a in axes[:-2] if a in Z_AXES])) if axes[:-2] else 1
    return axes, nz, picked["channel"], picked["time"]


def plane(arr: np.ndarray, what: str) -> np.ndarray:
    """A read plane as (Y, X), the same as :func:`~tomoseg.io.images.read_image` gives (bool as
    uint8).

    Raises:
        TomosegError: not 2D after dropping leading length-1 axes.
    """
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise TomosegError(f"{what} is not a 2D grayscale slice (shape {arr.shape})")
    return arr.astype(np.uint8) if arr.dtype == bool else arr


def slice_ids(n: int) -> list[str]:
    """``z0000`` .. : the ids of ``n`` slices without names (at least four digits)."""
    return [f"z{z:0{max(4, len(str(n - 1)))}d}" for z in range(n)]
