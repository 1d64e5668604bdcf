"""Stacks read one slice at a time: folders of slices, multi-page TIFF, Zarr / OME-Zarr."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from tomoseg.errors import TomosegError
from tomoseg.io.images import TIFF_SUFFIXES, list_images, read_image

#: files of a ``segment_stack`` output folder (written by :mod:`tomoseg.inference.stack`)
STACK_FILE = "stack.json"
ZARR_NAME = "labels.zarr"
TIFF_DIR = "labels"

# ----------------------------------------------------------------------------- voxel size


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


# ----------------------------------------------------------------------------- inputs


@dataclass
class StackSource:
    """A (Z, Y, X) stack read one slice at a time."""

    kind: str  # "folder", "tiff" or "zarr"
    path: Path
    ids: list[str]
    shape: tuple[int, int]
    dtype: str
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None
    files: list[Path] = field(default_factory=list)
    array_path: str | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        """Context giving ``read(i) -> (Y, X) array``; raises TomosegError naming the slice."""
        if self.kind == "folder":

            def read(i: int) -> np.ndarray:
                return read_image(self.files[i])

            yield read
        elif self.kind == "tiff":
            try:
                tf = tifffile.TiffFile(self.path)
            except (OSError, tifffile.TiffFileError, ValueError) as exc:
                raise TomosegError(f"cannot open {self.path}: {_first_line(exc)}") from None
            with tf:

                def read_page(i: int) -> np.ndarray:
                    try:
                        arr = tf.pages[i].asarray()
                    except Exception as exc:  # tifffile raises many types for broken pages
                        raise TomosegError(
                            f"page {i} ({self.ids[i]}) of {self.path} is unreadable: "
                            f"{_first_line(exc)}"
                        ) from None
                    return _squeeze2d(arr, f"page {i} of {self.path}")

                yield read_page
        else:
            arr = _open_zarr_array(self.path)[0]

            def read_zarr(i: int) -> np.ndarray:
                try:
                    a = np.asarray(arr[(0,) * (arr.ndim - 3) + (i,)])
                except Exception as exc:  # corrupt chunk: zarr/numcodecs raise various types
                    raise TomosegError(
                        f"slice {i} of {self.path} is unreadable: {_first_line(exc)}"
                    ) from None
                return a

            yield read_zarr

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path.resolve()),
            "kind": self.kind,
            "slices": self.n,
            "shape": [self.n, *self.shape],
            "dtype": self.dtype,
            "ids": self.ids,
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _squeeze2d(arr: np.ndarray, what: str) -> np.ndarray:
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise TomosegError(f"{what} is not a 2D grayscale slice (shape {arr.shape})")
    return arr


def _is_zarr(p: Path) -> bool:
    return p.is_dir() and any((p / n).is_file() for n in (".zgroup", ".zarray", "zarr.json"))


def _open_zarr_array(path: Path):
    """(array, array path inside the store, voxel size or None, unit or None) of a Zarr input."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise TomosegError(f"cannot open Zarr {path}: {_first_line(exc)}") from None
    voxel, unit, sub = None, None, None
    if isinstance(node, zarr.Array):
        arr = node
    else:
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
        if ms:
            try:
                sub = ms[0]["datasets"][0]["path"]
                voxel, unit = _ngff_scale(ms[0])
            except (KeyError, IndexError, TypeError):
                sub = None
        if sub is None:
            keys = sorted(node.array_keys())
            if not keys:
                raise TomosegError(f"Zarr group {path} holds no array")
            sub = keys[0]
        try:
            arr = node[sub]
        except KeyError:
            raise TomosegError(f"Zarr group {path} has no array '{sub}'") from None
        if not isinstance(arr, zarr.Array):
            raise TomosegError(f"'{sub}' in Zarr group {path} is not an array")
    shape = arr.shape
    if len(shape) < 3 or any(s != 1 for s in shape[:-3]):
        raise TomosegError(f"Zarr array in {path} has shape {shape}; expected (Z, Y, X)")
    return arr, sub, voxel, unit


def _ngff_scale(ms: dict) -> tuple[tuple[float, float, float] | None, str | None]:
    """Voxel size (z, y, x) and unit from an NGFF multiscale's first dataset (None if absent)."""
    scale = None
    for t in ms["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = t.get("scale")
    for t in ms.get("coordinateTransformations", []) or []:
        if t.get("type") == "scale" and scale is not None:
            scale = [a * b for a, b in zip(scale, t["scale"], strict=False)]
    voxel = None
    if scale is not None and len(scale) >= 3:
        try:
            voxel = parse_voxel_size(scale[-3:])
        except TomosegError:
            voxel = None
    axes = ms.get("axes") or []
    unit = None
    if axes and isinstance(axes[-1], dict):
        unit = axes[-1].get("unit")
    return voxel, unit


def _tiff_voxel(tf: tifffile.TiffFile) -> tuple[tuple[float, float, float] | None, str | None]:
    """Voxel size from ImageJ metadata (spacing, unit) and the resolution tags, if present."""
    ij = tf.imagej_metadata or {}
    page = tf.pages[0]

    def pixel(tag: str) -> float | None:
        t = page.tags.get(tag)
        if t is None:
            return None
        num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
        return den / num if num else None

    z = ij.get("spacing")
    unit = ij.get("unit")
    unit = {
        "micron": "micrometer",
        "\\u00B5m": "micrometer",
        "µm": "micrometer",
        "um": "micrometer",
    }.get(unit, unit)
    y, x = pixel("YResolution"), pixel("XResolution")
    if not ij:  # plain TIFF resolution tags are usually 1 or a print DPI: ignore them
        return None, None
    try:
        return parse_voxel_size([z or 1.0, y or 1.0, x or 1.0]), unit
    except TomosegError:
        return None, None


def _check_gaps(ids: list[str], folder: Path) -> None:
    """Refuse numbered slice names with a hole (``z0004``, ``z0006``: ``z0005`` is missing)."""
    parts = [re.fullmatch(r"(.*?)(\d+)(\D*)", i) for i in ids]
    if len(ids) < 2 or not all(parts):
        return
    if len({(m.group(1), m.group(3)) for m in parts}) != 1:  # type: ignore[union-attr]
        return
    nums = [int(m.group(2)) for m in parts]  # type: ignore[union-attr]
    for a, b, ida in zip(nums, nums[1:], ids, strict=False):
        if b != a + 1:
            m = parts[0]
            width = len(m.group(2)) if m.group(2).startswith("0") else 0  # type: ignore[union-attr]
            missing = f"{m.group(1)}{a + 1:0{width}d}{m.group(3)}"  # type: ignore[union-attr]
            raise TomosegError(
                f"slice {missing} is missing from {folder} (the slice after {ida}); "
                "restore it, or pass allow_gaps=True if the slices are not consecutive"
            )


def open_source(input: str | os.PathLike[str], allow_gaps: bool = False) -> StackSource:
    """Inspect a stack input without reading it all (the first slice is read for its shape).

    Raises:
        TomosegError: missing or empty input, unknown kind, not a (Z, Y, X) stack.
    """
    p = Path(input)
    if not p.exists():
        raise TomosegError(f"input not found: {p}")
    if _is_zarr(p):
        arr, sub, voxel, unit = _open_zarr_array(p)
        nz, h, w = arr.shape[-3:]
        if nz == 0:
            raise TomosegError(f"Zarr array in {p} holds no slice")
        return StackSource("zarr", p, _ids(nz), (h, w), str(arr.dtype), voxel, unit, array_path=sub)
    if p.is_dir():
        files = list_images(p)  # natural order; raises on an empty folder
        ids = list(files)
        if not allow_gaps:
            _check_gaps(ids, p)
        first = read_image(files[ids[0]])
        return StackSource(
            "folder", p, ids, first.shape, str(first.dtype), files=list(files.values())
        )
    if p.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(p) as tf:
                n = len(tf.pages)
                if n == 0:
                    raise TomosegError(f"TIFF {p} holds no page")
                page = tf.pages[0]
                shape = tuple(int(s) for s in page.shape)
                dtype = str(page.dtype)
                voxel, unit = _tiff_voxel(tf)
        except (OSError, tifffile.TiffFileError, ValueError) as exc:
            raise TomosegError(f"not a readable TIFF: {p} ({_first_line(exc)})") from None
        while len(shape) > 2 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            raise TomosegError(f"pages of {p} are not 2D grayscale slices (shape {shape})")
        return StackSource("tiff", p, _ids(n), shape, dtype, voxel, unit)  # type: ignore[arg-type]
    raise TomosegError(
        f"input {p} is not a folder of slices, a multi-page TIFF or a Zarr array/group"
    )


def _ids(n: int) -> list[str]:
    return [f"z{z:0{max(4, len(str(n - 1)))}d}" for z in range(n)]


def read_stack_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``stack.json`` of a ``segment_stack`` output folder (None when there is none)."""
    f = Path(path) / STACK_FILE
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TomosegError(f"malformed {f}: {_first_line(exc)}") from None
    if not isinstance(info, dict):
        raise TomosegError(f"malformed {f}: expected a JSON object")
    return info
