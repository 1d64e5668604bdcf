"""An in-memory (Z, Y, X) array: numpy, or any lazy array read block by block (dask, a napari
layer's data, a ``zarr.Array``): slice ``i`` is ``np.asarray(array[i])``. dask is never imported
here: a dask array is recognised by its ``shape``, ``dtype`` and ``__array__``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io.sources.base import ReadOptions, missing_record, plan_axes, plane, slice_ids
from tomoseg.utils.format import first_line


@dataclass
class ArraySource:
    """A (Z, Y, X) array in memory (or lazily computed); pickled whole to worker processes."""

    kind: ClassVar[str] = "array"

    array: Any = field(repr=False)
    ids: list[str]
    shape: tuple[int, int]
    dtype: str
    fingerprint: str
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def name(self) -> str:
        return "array"

    @property
    def where(self) -> str:
        return "the input array"

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        def read(i: int) -> np.ndarray:
            try:
                a = np.asarray(self.array[i])
            except Exception as exc:  # a lazy array computes here: any error of its graph
                raise TomosegError(
                    f"slice {i} of the input array is unreadable: {first_line(exc)}"
                ) from None
            return plane(a, f"slice {i} of the input array")

        yield read

    def resolved(self) -> ArraySource:
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "path": None,
            "kind": self.kind,
            "slices": self.n,
            "shape": [self.n, *self.shape],
            "dtype": self.dtype,
            "axes": "ZYX",
            "axes_shape": [self.n, *self.shape],
            "channel": None,
            "time": None,
            "dataset": None,
            "ids": self.ids,
            "missing_chunks": missing_record({}),
            "fingerprint": self.fingerprint,
        }


def is_array(input: Any) -> bool:
    """numpy arrays and array-likes with ``shape``, ``dtype`` and ``__array__`` (dask, ...);
    never a path."""
    if isinstance(input, (str, bytes, os.PathLike)):
        return False
    return isinstance(input, np.ndarray) or all(
        hasattr(input, a) for a in ("shape", "dtype", "__array__", "__getitem__")
    )


def fingerprint(array: Any) -> str:
    """sha256 of the shape, dtype and the first, middle and last slices: what ``stack.json``
    records of an array input, so a resume with another array of the same shape is refused
    (three slices are read, not the whole array)."""
    h = hashlib.sha256(f"{tuple(array.shape)} {np.dtype(array.dtype).str}".encode())
    n = int(array.shape[0])
    for i in sorted({0, n // 2, n - 1}):
        h.update(np.ascontiguousarray(np.asarray(array[i])).tobytes())
    return h.hexdigest()


class ArrayFormat:
    kind = "array"
    description = "a (Z, Y, X) array"
    containers = False

    def claims(self, input: Any) -> bool:
        return is_array(input)

    def open(self, input: Any, options: ReadOptions) -> ArraySource:
        shape = tuple(int(n) for n in input.shape)
        if len(shape) != 3:
            raise TomosegError(f"input must be a (Z, Y, X) array, got shape {shape}")
        dt = np.dtype(input.dtype)
        if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating) or dt.kind == "b"):
            raise TomosegError(f"input must hold integers or floats, got {dt}")
        _, nz, _, _ = plan_axes("ZYX", shape, options.channel, options.time, "the input array")
        if nz == 0 or 0 in shape:
            raise TomosegError(f"the input array is empty (shape {shape})")
        dtype = "uint8" if dt.kind == "b" else str(dt)
        return ArraySource(input, slice_ids(nz), shape[1:], dtype, fingerprint(input))  # type: ignore[arg-type]
