"""N5 datasets and containers via tensorstore (the ``formats`` extra; zarr 3 reads no N5).

An N5 dataset is a folder whose ``attributes.json`` holds ``dimensions`` and ``blockSize``;
N5 lists them fastest axis first (x, y, z), so the array is read reversed, as (Z, Y, X). A
container (``attributes.json`` without ``dimensions``) is read at ``dataset``, else at its one
dataset with 3 or more axes (or its one ``s0``: a multiscale's full resolution).

Axes: an ``axes`` attribute (names in ``dimensions`` order, as n5-viewer and BigDataViewer
write), else x, y, z. Voxel size: ``pixelResolution`` (``{"dimensions": [x, y, z], "unit":
"um"}``) or ``resolution`` (x, y, z) with ``units``. Blocks absent from the folder (read as 0)
are counted per slice (``missing``).
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
    stored_keys,
)
from tomoseg.utils.files import load_json
from tomoseg.utils.format import first_line

ATTRS = "attributes.json"


@dataclass
class N5Source(StackSource):
    """Slice ``i`` is the plane at Z = ``i`` of the dataset at ``path / dataset`` (the blocks it
    touches only)."""

    kind: ClassVar[str] = "n5"

    @property
    def folder(self) -> Path:
        return self.path / self.dataset if self.dataset else self.path

    @property
    def where(self) -> str:
        return str(self.folder)

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        arr = _open(self.folder)

        def read(i: int) -> np.ndarray:
            try:
                a = np.asarray(arr[self.index(i)].read().result())
            except Exception as exc:  # tensorstore raises ValueError, RuntimeError, ...
                raise TomosegError(
                    f"slice {self.ids[i]} of {self.where} is unreadable: {first_line(exc)}"
                ) from None
            return self.oriented(a, i)

        yield read


def _attrs(folder: Path) -> dict[str, Any]:
    try:
        value = load_json(folder / ATTRS)
    except (OSError, ValueError):  # TomosegError (unbounded JSON) is a ValueError
        return {}
    return value if isinstance(value, dict) else {}


def _open(folder: Path) -> Any:
    """The N5 dataset as a tensorstore array with its axes reversed ((Z, Y, X) for 3D)."""
    ts = need("tensorstore", "N5")
    spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(folder.resolve())}}
    try:
        return ts.open(spec, read=True).result().T
    except Exception as exc:  # ValueError for bad metadata, others for I/O
        raise TomosegError(f"cannot read N5 {folder}: {first_line(exc)}") from None


class N5Format:
    kind = "n5"
    description = "an N5 dataset/container"
    containers = True

    def claims(self, input: Any) -> bool:
        return isinstance(input, (str, os.PathLike)) and (Path(input) / ATTRS).is_file()

    def open(self, input: Any, options: ReadOptions) -> N5Source:
        p = Path(input)
        name = None
        if options.dataset is not None:
            name = options.dataset.strip("/")
            if not isinstance(_attrs(p / name).get("dimensions"), list):
                listing = ", ".join(f"/{k}" for k in list(_datasets(p))[:6]) or "none"
                raise TomosegError(f"N5 {p} has no dataset '/{name}' (its datasets: {listing})")
        elif not isinstance(_attrs(p).get("dimensions"), list):
            found = _datasets(p)
            s0 = tuple(k for k in found if k.rsplit("/", 1)[-1] == "s0")
            name = pick_dataset(found, s0 if len(s0) == 1 else (), f"N5 {p}")
        folder = p / name if name else p
        attrs = _attrs(folder)
        arr = _open(folder)
        shape = tuple(int(n) for n in arr.shape)
        names = attrs.get("axes")
        axes = axis_letters(list(reversed(names)) if isinstance(names, list) else None, len(shape))
        where = f"N5 {folder}"
        axes, nz, ch, tm = plan_axes(
            axes, shape, options.channel, options.time, where, options.transpose
        )
        if nz == 0 or 0 in shape:
            raise TomosegError(f"{where} is empty (shape {shape})")
        voxel, unit = _resolution(attrs, axes)
        sizes = dict(zip(axes, shape, strict=True))
        src = N5Source(
            p, slice_ids(nz), (sizes["Y"], sizes["X"]), np.dtype(arr.dtype.numpy_dtype).name,
            voxel, unit, axes=axes, axes_shape=shape, channel=ch, time=tm, dataset=name,
        )  # fmt: skip
        if options.missing != "ignore":
            block = tuple(int(n) for n in reversed(attrs.get("blockSize", [])))
            if len(block) == len(shape):
                src.missing_chunks = src.holes(block, _stored_blocks(folder))
        return src


def _datasets(root: Path, depth: int = 4) -> dict[str, tuple[int, ...]]:
    """The datasets under a container: path -> shape (Z, Y, X order), ``depth`` levels down."""
    found: dict[str, tuple[int, ...]] = {}
    for base, dirs, _ in os.walk(root):
        rel = Path(base).relative_to(root)
        dims = _attrs(Path(base)).get("dimensions") if base != str(root) else None
        if isinstance(dims, list):
            found[rel.as_posix()] = tuple(int(n) for n in reversed(dims))
            dirs[:] = []  # a dataset's sub-folders are its blocks
        elif len(rel.parts) >= depth:
            dirs[:] = []
    return dict(sorted(found.items()))


def _stored_blocks(folder: Path) -> set[tuple[int, ...]]:
    """Grid positions (reversed: Z, Y, X order) of the blocks present in a dataset folder."""
    stored = set()
    for key in stored_keys(folder, skip=(ATTRS,)):
        try:
            stored.add(tuple(int(k) for k in reversed(key.split("/"))))
        except ValueError:
            continue
    return stored


def _resolution(
    attrs: dict[str, Any], axes: str
) -> tuple[tuple[float, float, float] | None, str | None]:
    """Voxel size (z, y, x) and unit from ``pixelResolution`` or ``resolution`` + ``units``."""
    pr = attrs.get("pixelResolution")
    if isinstance(pr, dict):
        vals, unit = pr.get("dimensions"), pr.get("unit")
    else:
        vals = attrs.get("resolution")
        units = attrs.get("units")
        unit = units[0] if isinstance(units, list) and units else None
    if not isinstance(vals, list) or len(vals) != len(axes):
        return None, None
    by = dict(zip(axes, (float(v) for v in reversed(vals)), strict=True))
    try:
        voxel = parse_voxel_size([by.get(a, 1.0) for a in "ZYX"])
    except TomosegError:
        return None, None
    return voxel, UNIT_NAMES.get(unit, unit) if isinstance(unit, str) else None
