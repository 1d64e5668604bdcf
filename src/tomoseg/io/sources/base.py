"""The contract of a slice source and the checks every format shares (axes, voxel size, ids)."""

from __future__ import annotations

import itertools
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.utils.files import check_memory
from tomoseg.utils.format import plural

#: axis letters that count slices: Z, and tifffile's generic page axes (I, Q)
Z_AXES = "ZQI"

#: axis names of metadata (NGFF, Zarr v3 ``dimension_names``, xarray, ilastik ``axistags``, N5
#: ``axes``) -> tomoseg's axis letter; other names read as ``?`` (unknown)
AXIS_LETTER = {"t": "T", "time": "T", "c": "C", "channel": "C", "z": "Z", "y": "Y", "x": "X"}

#: unit spellings of metadata -> the unit names tomoseg records (OME-NGFF's)
UNIT_NAMES = {
    "micron": "micrometer",
    "microns": "micrometer",
    "\\u00B5m": "micrometer",
    "µm": "micrometer",
    "um": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
}


def axis_letters(names: Any, ndim: int) -> str:
    """Axis letters from a list of axis names (None where the names do not fit ``ndim``
    axes: then ``ZYX`` for the last three axes and ``?`` before them)."""
    if (
        isinstance(names, (list, tuple))
        and len(names) == ndim
        and all(isinstance(n, str) or n is None for n in names)
    ):
        return "".join(AXIS_LETTER.get(str(n).lower(), "?") for n in names)
    return "?" * (ndim - 3) + "ZYX" if ndim >= 3 else "YX"[-ndim:] if ndim else ""


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


#: what ``missing`` may be: warn about slices with missing chunks, refuse them, or say nothing
MISSING_RULES = ("warn", "error", "ignore")


@dataclass(frozen=True)
class ReadOptions:
    """How a stack input is read (the same for every format; a format ignores what it has no use
    for, and refuses what cannot apply to it).

    Attributes:
        allow_gaps: accept numbered slice files with holes in the numbering (folders).
        channel: channel index (0-based) of a file with a C axis.
        time: time-point index (0-based) of a file with a T axis.
        dataset: the array inside a container (HDF5 dataset path, Zarr group member, N5
            dataset); None: the container's one obvious volume.
        transpose: read a stack whose declared axes are not in Z, Y, X order (x, y, z as N5,
            HiP-CT and neuroglancer conversions keep) by their names, each plane transposed as
            read; without it such an order is refused.
        missing: slices of a chunked store (Zarr, N5, HDF5) with chunks absent from the store
            (read as the fill value): ``warn`` (one warning naming them, counted in
            ``describe()``), ``error`` (refused), ``ignore`` (label volumes, whose writers leave
            all-background chunks out).
    """

    allow_gaps: bool = False
    channel: int | None = None
    time: int | None = None
    dataset: str | None = None
    transpose: bool = False
    missing: str = "warn"


class Format(Protocol):
    """A registered input format: one module of :mod:`tomoseg.io.sources`.

    ``claims(input)`` says whether the input is of this format (cheaply: no pixel is read, no
    optional library imported); ``open(input, options)`` checks it and returns its
    :class:`SliceSource`, raising :class:`~tomoseg.errors.TomosegError` for a bad one (or a
    missing optional library: naming the extra to install). ``containers``: whether the format
    holds several arrays (``dataset`` chooses one).
    """

    kind: str
    description: str
    containers: bool

    def claims(self, input: Any) -> bool: ...

    def open(self, input: Any, options: ReadOptions) -> SliceSource: ...


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
    dataset: str | None = None
    missing_chunks: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def where(self) -> str:
        return str(self.path)

    def index(self, i: int) -> tuple[int | slice, ...]:
        """The index of slice ``i`` in the file's array: Z = ``i`` (on the one slice axis), the
        chosen C and T, 0 on other length-1 axes, all of Y and X."""
        z = slice_axis(self.axes, self.axes_shape)
        idx: list[int | slice] = []
        for k, a in enumerate(self.axes):
            if a in "YX":
                idx.append(slice(None))
            elif k == z:
                idx.append(i)
            elif a == "C":
                idx.append(self.channel or 0)
            elif a == "T":
                idx.append(self.time or 0)
            else:
                idx.append(0)
        return tuple(idx)

    def leading(self, i: int) -> tuple[int, ...]:
        """Indices of the axes before Y, X for slice ``i`` (axes ending in Y, X: a TIFF's)."""
        return tuple(int(k) for k in self.index(i)[:-2])  # type: ignore[arg-type]

    def oriented(self, arr: np.ndarray, i: int) -> np.ndarray:
        """Slice ``i`` as read by :meth:`index` (its axes in the file's order), as (Y, X)."""
        a = plane(arr, f"slice {i} of {self.where}")
        return a.T if self.axes.index("X") < self.axes.index("Y") else a

    def holes(self, chunks: tuple[int, ...], stored: set[tuple[int, ...]] | None) -> dict[str, int]:
        """Chunks missing from a chunked store, per slice: ``{slice id: count}`` for the slices
        that touch a chunk absent from ``stored`` (on their C and T), others left out.

        Args:
            chunks: the store's chunk (storage unit: shard, block) shape, one size per axis.
            stored: the grid positions of the chunks present in the store (None: all).
        """
        grid = [-(-n // c) for n, c in zip(self.axes_shape, chunks, strict=True)]
        if stored is None or len(stored) >= int(np.prod(grid)):
            return {}
        z = slice_axis(self.axes, self.axes_shape)
        idx = self.index(0)
        ranges = [
            range(g) if k == z or isinstance(idx[k], slice) else [int(idx[k]) // c]  # type: ignore[arg-type]
            for k, (g, c) in enumerate(zip(grid, chunks, strict=True))
        ]
        per_cell: dict[int, int] = {}
        for cell in itertools.product(*ranges):
            if cell not in stored:
                key = cell[z] if z is not None else 0
                per_cell[key] = per_cell.get(key, 0) + 1
        cz = chunks[z] if z is not None else 1
        return {sid: per_cell[i // cz] for i, sid in enumerate(self.ids) if per_cell.get(i // cz)}

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
            "dataset": self.dataset,
            "ids": self.ids,
            "missing_chunks": missing_record(self.missing_chunks),
        }


def missing_record(per_slice: dict[str, int]) -> dict[str, Any]:
    """``describe()``'s count of missing chunks: ``slices`` concerned, ``chunks`` missing (summed
    over slices: a chunk spanning several slices counts once per slice) and ``per_slice``."""
    return {"slices": len(per_slice), "chunks": sum(per_slice.values()), "per_slice": per_slice}


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


def resolve_voxel_size(
    given: tuple[float, float, float] | None,
    unit: str | None,
    recorded: tuple[float, float, float] | None,
    recorded_unit: str | None,
) -> tuple[tuple[float, float, float], str | None]:
    """The voxel size and unit to use: the given size (in ``unit``, else ``micrometer``), else
    the recorded one (in ``unit``, else its own unit), else ``(1, 1, 1)`` with no unit: sizes in
    voxels, never silently taken for micrometres.

    Raises:
        TomosegError: a unit without any voxel size to go with it.
    """
    if given is not None:
        return given, unit or "micrometer"
    if recorded is not None:
        return recorded, unit or recorded_unit
    if unit:
        raise TomosegError(
            f"unit={unit!r} needs a voxel size, and the input records none: give "
            "voxel_size=Z,Y,X (e.g. 0.65,0.65,0.65)"
        )
    return (1.0, 1.0, 1.0), None


def slice_axis(axes: str, shape: tuple[int, ...]) -> int | None:
    """Position of the slice axis: the one Z-like axis (:data:`Z_AXES`) longer than 1, else the
    first Z-like axis; None when there is none (a single 2D plane)."""
    zs = [k for k, a in enumerate(axes) if a in Z_AXES]
    long = [k for k in zs if shape[k] > 1]
    return long[0] if long else (zs[0] if zs else None)


def plan_axes(
    axes: str,
    shape: tuple[int, ...],
    channel: int | None,
    time: int | None,
    where: str,
    transpose: bool = False,
) -> tuple[str, int, int | None, int | None]:
    """Check the declared axes of a stack and the channel / time selection.

    Slices are read along Z and each plane is (Y, X); C and T are indexed away, as are other
    axes of length 1 (ilastik's ``zyxc`` with one channel). Z, Y and X must come in that order
    (C, T and length-1 axes anywhere), unless ``transpose``: then any order is read by its names.

    Args:
        axes: one upper-case letter per axis (``?`` = unknown meaning).
        shape: the size of each axis.
        channel, time: the requested indices (None: the axis must be a singleton, if present).
        where: the input, for messages.
        transpose: accept Z, Y, X in another order (each plane transposed as read).

    Returns:
        ``(axes, slices, channel, time)``: the number of Z slices and the selected indices
        (None where the file has no such axis).

    Raises:
        TomosegError: no Y or X axis, Z / Y / X out of order without ``transpose``, C > 1 or
            T > 1 without a selection, a selection out of range, another axis of size > 1
            (colour samples, unknown axes), or two slice axes.
    """
    sizes = dict(zip(axes, shape, strict=True))
    desc = f"axes {axes} ({', '.join(f'{a}={n}' for a, n in zip(axes, shape, strict=True))})"
    if "Y" not in axes or "X" not in axes or axes.count("Y") + axes.count("X") != 2:
        raise TomosegError(f"{where} has {desc}; expected 2D grayscale slices (Y, X last)")
    z = slice_axis(axes, shape)
    spatial = "".join(
        "Z" if k == z else a for k, a in enumerate(axes) if a in "YX" or (k == z and shape[k] > 1)
    )
    if spatial not in ("YX", "ZYX") and not transpose:
        raise TomosegError(
            f"{where} has {desc}: its slices are not (Y, X) planes stacked along the first "
            "axis; pass transpose=True to read it by its axis names (slices along Z, each "
            "transposed to Y, X; slower where chunks are thin along Z)"
        )
    picked: dict[str, int | None] = {}
    for letter, name, value, noun in (
        ("C", "channel", channel, "channel"),
        ("T", "time", time, "time point"),
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
                f"{name}={value} is out of range: {where} has {plural(n, noun)} ({desc}); "
                f"choose 0..{n - 1}"
            )
        else:
            picked[name] = int(value)
    zs = [a for a in axes if a in Z_AXES and sizes[a] > 1]
    if len(zs) > 1:
        raise TomosegError(f"{where} has {desc}: two slice axes, expected one Z axis")
    for a in axes:
        if a not in Z_AXES + "CTYX" and sizes[a] > 1:
            what = "colour samples" if a == "S" else f"axis {a}"
            raise TomosegError(f"{where} has {desc}: {what} of size {sizes[a]} is not supported")
    nz = int(shape[z]) if z is not None else 1
    check_stack_size(nz, (sizes["Y"], sizes["X"]), where)
    return axes, nz, picked["channel"], picked["time"]


#: the most slices a stack may have (its slice ids are listed in memory and in ``stack.json``;
#: a FIB-SEM or tomography stack has thousands)
MAX_SLICES = 1_000_000
#: bytes per pixel a slice needs while it is segmented (read, normalised float32, class scores)
SLICE_BYTES_PER_PIXEL = 16


def check_stack_size(nz: int, yx: tuple[int, ...], where: str) -> None:
    """Refuse a stack whose declared size (a file's header: a Zarr ``.zarray``, TIFF tags) is
    beyond what can be read, before anything is allocated for it.

    Raises:
        TomosegError: more than :data:`MAX_SLICES` slices, or one slice that would not fit in the
            machine's memory (:data:`SLICE_BYTES_PER_PIXEL` per pixel).
    """
    if nz > MAX_SLICES:
        raise TomosegError(
            f"{where} declares {nz} slices, more than the {MAX_SLICES} a stack may have"
        )
    h, w = (int(n) for n in yx)
    check_memory(h * w * SLICE_BYTES_PER_PIXEL, f"one slice of {where} ({h} x {w} pixels)")


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


def stored_keys(folder: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Relative ``/``-separated paths of the files under ``folder`` (a chunked store's keys),
    without hidden files (``.zarray``, ...) and the metadata files named in ``skip``; one
    directory listing per folder, no file opened."""
    keys: list[str] = []
    todo = [(str(folder), "")]
    while todo:
        path, prefix = todo.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(".") or e.name in skip:
                continue
            if e.is_dir(follow_symlinks=False):
                todo.append((e.path, f"{prefix}{e.name}/"))
            else:
                keys.append(prefix + e.name)
    return keys


def check_missing(src: Any, rule: str) -> None:
    """Apply the ``missing`` rule to a source's slices with missing chunks
    (``src.missing_chunks``, found by its format when it opened the input).

    Raises:
        TomosegError: ``rule`` not one of :data:`MISSING_RULES`; slices with missing chunks and
            ``rule="error"``.

    Warns:
        TomosegWarning: slices with missing chunks and ``rule="warn"``, naming them.
    """
    if rule not in MISSING_RULES:
        raise TomosegError(f"missing={rule!r}: must be warn, error or ignore")
    holes: dict[str, int] = getattr(src, "missing_chunks", None) or {}
    if rule == "ignore" or not holes:
        return
    shown = ", ".join(f"{sid} ({plural(n, 'chunk')})" for sid, n in list(holes.items())[:8])
    more = f" and {len(holes) - 8} more" if len(holes) > 8 else ""
    what = f"{plural(len(holes), 'slice')} of {src.where}"
    what += " lack" if len(holes) > 1 else " lacks"
    if rule == "error":
        raise TomosegError(
            f"{what} chunks in the store (an interrupted copy?): {shown}{more}; copy it "
            "again, or pass missing='warn' to read them as the fill value"
        )
    warnings.warn(
        f"{what} chunks in the store, read as the fill value: {shown}{more} (an "
        "interrupted copy, or chunks left out by a writer because they held only the fill "
        "value); missing='error' refuses such an input",
        TomosegWarning,
        stacklevel=3,
    )


def need(module: str, what: str) -> Any:
    """Import an optional reader library, or say which extra installs it.

    Raises:
        TomosegError: the library is not installed (naming ``tomoseg[formats]``).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TomosegError(
            f"reading {what} needs the Python package {module.split('.')[0]}: "
            "pip install 'tomoseg[formats]'"
        ) from None


def pick_dataset(found: dict[str, tuple[int, ...]], preferred: tuple[str, ...], where: str) -> str:
    """The array of a container to read when no ``dataset`` is given: the first of
    ``preferred`` present (Data Exchange's ``exchange/data``, ilastik's ``exported_data``,
    ...), else the one array with 3 or more axes, else the one 2D array.

    Args:
        found: array path (without a leading ``/``) -> shape, every array of the container.
        preferred: paths read by default when present, in order.
        where: the container, for messages.

    Raises:
        TomosegError: no array, or several and none obvious (listing them and ``dataset``).
    """
    for name in preferred:
        if name in found:
            return name
    pool = [k for k, s in found.items() if len(s) >= 3] or [
        k for k, s in found.items() if len(s) == 2
    ]
    if len(pool) == 1:
        return pool[0]
    if not pool:
        raise TomosegError(f"{where} holds no image array (2D or more)")
    listing = ", ".join(f"/{k} {tuple(found[k])}" for k in pool[:6])
    more = f" and {len(pool) - 6} more" if len(pool) > 6 else ""
    raise TomosegError(
        f"{where} holds {len(pool)} arrays: {listing}{more}; choose one with dataset='/{pool[0]}'"
    )
