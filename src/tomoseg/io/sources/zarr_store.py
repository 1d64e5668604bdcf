"""Zarr v2 / v3 arrays and Zarr / OME-Zarr groups (``dataset``, else the first multiscale level,
else the first array), read by their declared axes: NGFF ``axes``, Zarr v3 ``dimension_names``,
xarray's ``_ARRAY_DIMENSIONS``. Chunks absent from the store are found at open (a listing of the
array's folder, no chunk read) and counted per slice (``missing``).

A store's metadata is input: the NGFF ``multiscales`` are checked by :class:`NgffMultiscale`
(pydantic) and a dataset path may not leave the store; the declared shape and chunk size are
checked (:func:`~tomoseg.io.sources.base.check_stack_size`, :func:`check_memory`) before anything
is allocated for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tomoseg.errors import TomosegError
from tomoseg.io.sources.base import (
    ReadOptions,
    StackSource,
    axis_letters,
    parse_voxel_size,
    plan_axes,
    slice_ids,
    stored_keys,
)
from tomoseg.utils.files import check_memory, confined, validated
from tomoseg.utils.format import first_line


class NgffTransform(BaseModel):
    """An NGFF coordinate transformation (only ``scale`` is read)."""

    model_config = ConfigDict(extra="allow")
    type: str
    scale: list[float] | None = Field(default=None, max_length=8)


class NgffDataset(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str
    coordinateTransformations: list[NgffTransform] = Field(default=[], max_length=8)  # noqa: N815


class NgffAxis(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = "?"
    unit: str | None = None


class NgffMultiscale(BaseModel):
    """The first entry of an OME-NGFF ``multiscales`` attribute (0.3: axes as names; 0.4+: as
    objects), as far as tomoseg reads it."""

    model_config = ConfigDict(extra="allow")
    datasets: list[NgffDataset] = Field(min_length=1)
    axes: list[NgffAxis | str] | None = Field(default=None, max_length=8)
    coordinateTransformations: list[NgffTransform] | None = Field(default=None, max_length=8)  # noqa: N815


@dataclass
class ZarrSource(StackSource):
    """Slice ``i`` is the plane at Z = ``i`` (of the chosen C and T) of the array at
    ``array_path`` in the store (its chunks only)."""

    kind: ClassVar[str] = "zarr"
    array_path: str | None = None

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        arr = open_zarr_array(self.path, self.array_path)[0]

        def read_zarr(i: int) -> np.ndarray:
            try:
                a = np.asarray(arr[self.index(i)])
            except Exception as exc:  # corrupt chunk: zarr/numcodecs raise various types
                raise TomosegError(
                    f"slice {i} of {self.path} is unreadable: {first_line(exc)}"
                ) from None
            return self.oriented(a, i)

        yield read_zarr

    def attrs(self) -> dict[str, Any]:
        """The group's attributes (empty for a bare array or an unreadable store)."""
        import zarr

        try:
            return dict(zarr.open_group(str(self.path), mode="r").attrs)
        except Exception:  # not a group
            return {}


def is_zarr(p: Path) -> bool:
    """Whether ``p`` is a Zarr v2 or v3 array or group (a folder with its metadata file)."""
    return p.is_dir() and any((p / n).is_file() for n in (".zgroup", ".zarray", "zarr.json"))


class ZarrFormat:
    kind = "zarr"
    description = "a Zarr array/group"
    containers = True

    def claims(self, input: Any) -> bool:
        return isinstance(input, (str, os.PathLike)) and is_zarr(Path(input))

    def open(self, input: Any, options: ReadOptions) -> ZarrSource:
        p = Path(input)
        arr, sub, voxel, unit, axes = open_zarr_array(p, options.dataset)
        shape = tuple(int(n) for n in arr.shape)
        axes, nz, ch, tm = plan_axes(
            axes, shape, options.channel, options.time, f"Zarr {p}", options.transpose
        )
        try:  # a slice is read by decoding whole chunks: their size is declared too
            chunk = int(np.prod(arr.chunks, dtype=np.float64)) * arr.dtype.itemsize
        except (AttributeError, NotImplementedError, TypeError):
            # zarr raises for irregular chunk grids: no one chunk size to check here (the
            # slice's own memory check in plan_axes still holds)
            chunk = 0
        check_memory(chunk, f"one chunk of Zarr {p} ({arr.chunks})")
        if nz == 0:
            raise TomosegError(f"Zarr array in {p} holds no slice")
        sizes = dict(zip(axes, shape, strict=True))
        src = ZarrSource(
            p, slice_ids(nz), (sizes["Y"], sizes["X"]), str(arr.dtype), voxel, unit,
            axes=axes, axes_shape=shape, channel=ch, time=tm, array_path=sub,
            dataset=options.dataset and sub,
        )  # fmt: skip
        if options.missing != "ignore":
            src.missing_chunks = src.holes(*_stored_chunks(arr))
        return src


def _stored_chunks(arr: Any) -> tuple[tuple[int, ...], set[tuple[int, ...]] | None]:
    """(storage unit shape, grid positions of the units in the store) of a Zarr array on a local
    file system (shards when sharded, else chunks); None (all) when the store is another."""
    unit = tuple(int(n) for n in arr.metadata.chunk_grid.chunk_shape)
    root = getattr(arr.store, "root", None)
    if root is None:
        return unit, None
    folder = Path(root) / arr.path if arr.path else Path(root)
    meta = arr.metadata
    enc = getattr(meta, "chunk_key_encoding", None)  # Zarr v3; v2: dimension_separator
    sep = enc.separator if enc is not None else (meta.dimension_separator or ".")
    prefix = "c" if enc is not None and enc.name == "default" else ""
    stored = set()
    for key in stored_keys(folder, skip=("zarr.json",)):
        if prefix:  # v3 default keys: c/1/0/0 (c alone for a 0-d array)
            if not key.startswith(prefix):
                continue
            key = key[len(prefix) :].lstrip(sep)
        try:
            stored.add(tuple(int(c) for c in key.split(sep)))
        except ValueError:
            continue  # not a chunk (a child group's files, a stray file)
    return unit, stored


def open_zarr_array(path: Path, dataset: str | None = None):
    """(array, array path in the store, voxel size or None, unit or None, axes) of a Zarr input.

    ``dataset`` names the array of a group to read (default: the first multiscale level of an
    OME-Zarr, else the first array). ``axes`` has one upper-case letter per array axis: from
    the NGFF ``multiscales`` axes of a group, the array's Zarr v3 ``dimension_names`` or its
    ``_ARRAY_DIMENSIONS`` (xarray, Zarr v2), else ``ZYX`` for the last three axes and ``?``
    (unknown) before them.

    Raises:
        TomosegError: not openable, a group without an array, no array at ``dataset``, fewer
            than two axes.
    """
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise TomosegError(f"cannot open Zarr {path}: {first_line(exc)}") from None
    voxel, unit, sub, names = None, None, None, None
    if isinstance(node, zarr.Array):
        if dataset not in (None, "", "/"):
            raise TomosegError(f"dataset={dataset!r}: Zarr {path} is an array, not a group")
        arr = node
    else:
        attrs = dict(node.attrs)
        ome = attrs.get("ome")
        ms = attrs.get("multiscales") or (ome.get("multiscales") if isinstance(ome, dict) else None)
        if dataset is not None:
            sub = dataset.strip("/")
            if sub:
                confined(path, sub, f"dataset={dataset!r}")
        elif ms:
            where = f"Zarr {path} (NGFF metadata)"
            if not isinstance(ms, list):
                raise TomosegError(f"malformed {where}: multiscales: must be a list")
            first = validated(NgffMultiscale, ms[0], f"{where} multiscales.0")
            sub = first.datasets[0].path
            confined(path, sub, f"{where} multiscales.0.datasets.0.path")
            names = _ngff_axis_names(first)
            voxel, unit = _ngff_scale(first, names)
        if sub is None:
            keys = sorted(node.array_keys())
            if not keys:
                raise TomosegError(f"Zarr group {path} holds no array")
            sub = keys[0]
        try:
            arr = node[sub]
        except Exception:  # KeyError, or the store's own errors for odd keys
            keys = ", ".join(sorted(node.array_keys())[:6]) or "none"
            raise TomosegError(
                f"Zarr group {path} has no array '{sub}' (its arrays: {keys})"
            ) from None
        if not isinstance(arr, zarr.Array):
            raise TomosegError(f"'{sub}' in Zarr group {path} is not an array")
    shape = tuple(int(n) for n in arr.shape)
    if names is None:
        dims = getattr(arr.metadata, "dimension_names", None)  # Zarr v3
        if not dims or not any(isinstance(d, str) for d in dims):
            dims = dict(arr.attrs).get("_ARRAY_DIMENSIONS")  # xarray on Zarr v2
        if isinstance(dims, (list, tuple)) and all(isinstance(d, str | None) for d in dims):
            names = list(dims)
    axes = axis_letters(names, len(shape))
    if len(shape) < 2:
        raise TomosegError(f"Zarr array in {path} has shape {shape}; expected (Z, Y, X)")
    return arr, sub, voxel, unit, axes


def _ngff_axis_names(ms: NgffMultiscale) -> list[str] | None:
    """Axis names of an NGFF multiscale (0.4: objects with ``name``; 0.3: strings)."""
    if not ms.axes:
        return None
    return [a.name if isinstance(a, NgffAxis) else a for a in ms.axes]


def _ngff_scale(
    ms: NgffMultiscale, names: list[str] | None = None
) -> tuple[tuple[float, float, float] | None, str | None]:
    """Voxel size (z, y, x) and unit from an NGFF multiscale's first dataset (None if absent)."""
    scale = None
    for t in ms.datasets[0].coordinateTransformations:
        if t.type == "scale":
            scale = t.scale
    for t in ms.coordinateTransformations or []:
        if t.type == "scale" and scale is not None and t.scale is not None:
            scale = [a * b for a, b in zip(scale, t.scale, strict=False)]
    voxel = None
    if scale is not None and names and len(names) == len(scale):
        by = {str(n).lower(): v for n, v in zip(names, scale, strict=True)}
        zyx = [by.get(a, 1.0) for a in "zyx"]
    else:
        zyx = scale[-3:] if scale is not None and len(scale) >= 3 else None
    if zyx is not None:
        try:
            voxel = parse_voxel_size(zyx)
        except TomosegError:
            voxel = None
    axes = ms.axes or []
    unit = None
    if axes and isinstance(axes[-1], NgffAxis):
        unit = axes[-1].unit
    return voxel, unit
