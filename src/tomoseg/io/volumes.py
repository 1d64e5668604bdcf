"""Stacks read one slice at a time: folders of slices, multi-page TIFF, Zarr / OME-Zarr."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from tomoseg.errors import TomosegError, TomosegWarning
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
    """A (Z, Y, X) stack read one slice at a time.

    A file with more axes (an ImageJ hyperstack or OME-TIFF with Z, C and T, an OME-Zarr with
    ``t, c, z, y, x``) is read by its declared axes: ``axes`` and ``axes_shape`` are the file's,
    ``channel`` and ``time`` the selected indices (None when the file has no such axis), and
    slice ``i`` is the plane at ``Z = i`` of that channel and time point.
    """

    kind: str  # "folder", "tiff" or "zarr"
    path: Path
    ids: list[str]
    shape: tuple[int, int]
    dtype: str
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None
    files: list[Path] = field(default_factory=list)
    array_path: str | None = None
    axes: str = "ZYX"
    axes_shape: tuple[int, ...] = ()
    channel: int | None = None
    time: int | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def _leading(self, i: int) -> tuple[int, ...]:
        """Indices of the axes before Y, X for slice ``i`` (Z = i, the chosen C and T, else 0)."""
        idx = []
        for a in self.axes[:-2]:
            if a in _Z_AXES:
                idx.append(i)
            elif a == "C":
                idx.append(self.channel or 0)
            elif a == "T":
                idx.append(self.time or 0)
            else:
                idx.append(0)
        return tuple(idx)

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
                pages = tf.series[0].pages
                lead = self.axes_shape[:-2]

                def read_page(i: int) -> np.ndarray:
                    k = int(np.ravel_multi_index(self._leading(i), lead)) if lead else 0
                    try:
                        arr = pages[k].asarray()  # one page: never the whole stack
                    except Exception as exc:  # tifffile raises many types for broken pages
                        raise TomosegError(
                            f"page {k} ({self.ids[i]}) of {self.path} is unreadable: "
                            f"{_first_line(exc)}"
                        ) from None
                    return _plane(arr, f"page {k} of {self.path}")

                yield read_page
        else:
            arr = _open_zarr_array(self.path)[0]

            def read_zarr(i: int) -> np.ndarray:
                try:
                    a = np.asarray(arr[self._leading(i)])
                except Exception as exc:  # corrupt chunk: zarr/numcodecs raise various types
                    raise TomosegError(
                        f"slice {i} of {self.path} is unreadable: {_first_line(exc)}"
                    ) from None
                return _plane(a, f"slice {i} of {self.path}")

            yield read_zarr

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


#: axis letters that count slices: Z, and tifffile's generic page axes (I, Q)
_Z_AXES = "ZQI"


def _plan_axes(
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
    zs = [a for a in axes[:-2] if a in _Z_AXES and sizes[a] > 1]
    if len(zs) > 1:
        raise TomosegError(f"{where} has {desc}: two slice axes, expected one Z axis")
    for a in axes[:-2]:
        if a not in _Z_AXES + "CT" and sizes[a] > 1:
            what = "colour samples" if a == "S" else f"axis {a}"
            raise TomosegError(f"{where} has {desc}: {what} of size {sizes[a]} is not supported")
    nz = int(np.prod([sizes[a] for a in axes[:-2] if a in _Z_AXES])) if axes[:-2] else 1
    return axes, nz, picked["channel"], picked["time"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _plane(arr: np.ndarray, what: str) -> np.ndarray:
    """A read plane as (Y, X), the same as :func:`read_image` gives (bool as uint8)."""
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise TomosegError(f"{what} is not a 2D grayscale slice (shape {arr.shape})")
    return arr.astype(np.uint8) if arr.dtype == bool else arr


def _is_zarr(p: Path) -> bool:
    return p.is_dir() and any((p / n).is_file() for n in (".zgroup", ".zarray", "zarr.json"))


def _open_zarr_array(path: Path):
    """(array, array path in the store, voxel size or None, unit or None, axes) of a Zarr input.

    ``axes`` has one upper-case letter per array axis: from the NGFF ``multiscales`` axes of a
    group, or an array's ``_ARRAY_DIMENSIONS`` (xarray), else ``ZYX`` for the last three axes and
    ``?`` (unknown) before them.
    """
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise TomosegError(f"cannot open Zarr {path}: {_first_line(exc)}") from None
    voxel, unit, sub, names = None, None, None, None
    if isinstance(node, zarr.Array):
        arr = node
    else:
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
        if ms:
            try:
                sub = ms[0]["datasets"][0]["path"]
                names = _ngff_axis_names(ms[0])
                voxel, unit = _ngff_scale(ms[0], names)
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
    shape = tuple(int(n) for n in arr.shape)
    if names is None:
        dims = dict(arr.attrs).get("_ARRAY_DIMENSIONS")
        if isinstance(dims, list) and all(isinstance(d, str) for d in dims):
            names = dims
    if names is not None and len(names) == len(shape):
        axes = "".join(_AXIS_LETTER.get(str(n).lower(), "?") for n in names)
    elif len(shape) >= 3:
        axes = "?" * (len(shape) - 3) + "ZYX"
    else:
        axes = "YX"[-len(shape) :]
    if len(shape) < 2:
        raise TomosegError(f"Zarr array in {path} has shape {shape}; expected (Z, Y, X)")
    return arr, sub, voxel, unit, axes


_AXIS_LETTER = {"t": "T", "time": "T", "c": "C", "channel": "C", "z": "Z", "y": "Y", "x": "X"}


def _ngff_axis_names(ms: dict) -> list[str] | None:
    """Axis names of an NGFF multiscale (0.4: dicts with ``name``; 0.3: strings)."""
    axes = ms.get("axes")
    if not axes:
        return None
    return [a.get("name", "?") if isinstance(a, dict) else str(a) for a in axes]


def _ngff_scale(
    ms: dict, names: list[str] | None = None
) -> tuple[tuple[float, float, float] | None, str | None]:
    """Voxel size (z, y, x) and unit from an NGFF multiscale's first dataset (None if absent)."""
    scale = None
    for t in ms["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = t.get("scale")
    for t in ms.get("coordinateTransformations", []) or []:
        if t.get("type") == "scale" and scale is not None:
            scale = [a * b for a, b in zip(scale, t["scale"], strict=False)]
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
    axes = ms.get("axes") or []
    unit = None
    if axes and isinstance(axes[-1], dict):
        unit = axes[-1].get("unit")
    return voxel, unit


_UNITS = {
    "micron": "micrometer",
    "\\u00B5m": "micrometer",
    "µm": "micrometer",
    "um": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
}


def _ome_voxel(xml: str) -> tuple[tuple[float, float, float] | None, str | None]:
    """Voxel size (z, y, x) and unit from OME-XML ``Pixels`` PhysicalSize{Z,Y,X}[Unit] (OME
    default unit: micrometer); None where the file gives no physical size."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None or not any(f"PhysicalSize{a}" in pixels.attrib for a in "XYZ"):
        return None, None
    try:
        zyx = [float(pixels.attrib.get(f"PhysicalSize{a}", 1.0)) for a in "ZYX"]
        voxel = parse_voxel_size(zyx)
    except (TomosegError, ValueError):
        return None, None
    unit = pixels.attrib.get("PhysicalSizeXUnit", "µm")
    return voxel, _UNITS.get(unit, unit)


def _tiff_voxel(tf: tifffile.TiffFile) -> tuple[tuple[float, float, float] | None, str | None]:
    """Voxel size from OME-XML (PhysicalSize*), else ImageJ metadata (spacing, unit) and the
    resolution tags, if present."""
    if tf.is_ome and tf.ome_metadata:
        voxel, unit = _ome_voxel(tf.ome_metadata)
        if voxel is not None:
            return voxel, unit
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
    unit = _UNITS.get(unit, unit)
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


def open_source(
    input: str | os.PathLike[str],
    allow_gaps: bool = False,
    *,
    channel: int | None = None,
    time: int | None = None,
) -> StackSource:
    """Inspect a stack input without reading it all (the first slice is read for its shape).

    Multi-page TIFF (ImageJ hyperstacks, OME-TIFF) and Zarr / OME-Zarr are read by their
    declared axes (the TIFF's first series, the NGFF ``axes``): Z gives the slices, and a C or T
    axis of size > 1 needs ``channel`` / ``time`` to choose one.

    Args:
        input: folder of 2D slices, TIFF file, Zarr array or (OME-)Zarr group.
        allow_gaps: accept numbered slice files with holes in the numbering.
        channel: channel index (0-based) of a file with a C axis.
        time: time-point index (0-based) of a file with a T axis.

    Raises:
        TomosegError: missing or empty input, unknown kind, not a (Z, Y, X) stack, C or T > 1
            without a selection, a selection out of range.
    """
    p = Path(input)
    if not p.exists():
        raise TomosegError(f"input not found: {p}")
    if _is_zarr(p):
        arr, sub, voxel, unit, axes = _open_zarr_array(p)
        shape = tuple(int(n) for n in arr.shape)
        axes, nz, ch, tm = _plan_axes(axes, shape, channel, time, f"Zarr {p}")
        if nz == 0:
            raise TomosegError(f"Zarr array in {p} holds no slice")
        h, w = shape[-2:]
        return StackSource(
            "zarr", p, _ids(nz), (h, w), str(arr.dtype), voxel, unit, array_path=sub,
            axes=axes, axes_shape=shape, channel=ch, time=tm,
        )  # fmt: skip
    if p.is_dir():
        files = list_images(p)  # natural order; raises on an empty folder
        ids = list(files)
        if not allow_gaps:
            _check_gaps(ids, p)
        first = read_image(files[ids[0]])
        _plan_axes("ZYX", (len(ids), *first.shape), channel, time, f"folder {p}")
        return StackSource(
            "folder", p, ids, first.shape, str(first.dtype), files=list(files.values()),
            axes="ZYX", axes_shape=(len(ids), *first.shape),
        )  # fmt: skip
    if p.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(p) as tf:
                if not tf.series or len(tf.pages) == 0:
                    raise TomosegError(f"TIFF {p} holds no page")
                series = tf.series[0]
                axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
                dtype = str(series.dtype)
                voxel, unit = _tiff_voxel(tf)
                ij = tf.imagej_metadata if tf.is_imagej else None
                npages = len(series.pages)
                if len(tf.pages) > npages and not (tf.is_imagej or tf.is_ome):
                    other = tf.pages[npages]
                    raise TomosegError(
                        f"page {npages} of {p} has shape {tuple(other.shape)} but the pages "
                        f"before it have {tuple(series.keyframe.shape)}; a stack's slices must "
                        "all have one shape"
                    )
        except (OSError, tifffile.TiffFileError, ValueError) as exc:
            raise TomosegError(f"not a readable TIFF: {p} ({_first_line(exc)})") from None
        if axes.endswith("S") and shape[-1] > 1:
            raise TomosegError(
                f"pages of {p} are not 2D grayscale slices (axes {axes}, shape {shape})"
            )
        if axes.endswith("S"):  # one sample per pixel
            axes, shape = axes[:-1], shape[:-1]
        if axes == "CYX" and shape[0] > 1 and channel is None and _plain_imagej_stack(ij):
            n = shape[0]
            warnings.warn(
                f"{p} declares {n} ImageJ channels and no other axis, as tifffile writes a plain "
                f"3D array (imagej=True): read as {n} Z slices; pass channel=0..{n - 1} to read "
                "one channel instead",
                TomosegWarning,
                stacklevel=2,
            )
            axes = "ZYX"
        axes, nz, ch, tm = _plan_axes(axes, shape, channel, time, str(p))
        if int(np.prod(shape[:-2])) != npages:
            raise TomosegError(
                f"TIFF {p} declares axes {axes} {shape} but holds {npages} pages; "
                "it cannot be read slice by slice"
            )
        return StackSource(
            "tiff", p, _ids(nz), shape[-2:], dtype, voxel, unit,  # type: ignore[arg-type]
            axes=axes, axes_shape=shape, channel=ch, time=tm,
        )  # fmt: skip
    raise TomosegError(
        f"input {p} is not a folder of slices, a multi-page TIFF or a Zarr array/group"
    )


def _plain_imagej_stack(ij: dict | None) -> bool:
    """ImageJ metadata as tifffile writes it for a plain 3D array: ``channels`` = ``images``,
    no ``slices`` or ``frames``, grayscale display (a real multi-channel image is composite)."""
    if not ij:
        return False
    return (
        ij.get("channels") == ij.get("images")
        and "slices" not in ij
        and "frames" not in ij
        and ij.get("mode", "grayscale") == "grayscale"
    )


def _ids(n: int) -> list[str]:
    return [f"z{z:0{max(4, len(str(n - 1)))}d}" for z in range(n)]


def read_stack_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``stack.json`` of a ``segment_stack`` output folder (None when there is none).

    Raises:
        TomosegError: unreadable, not JSON, or not a mapping (:func:`tomoseg.io.jobs.read_record`).
    """
    from tomoseg.io.jobs import read_record

    return read_record(Path(path) / STACK_FILE)
