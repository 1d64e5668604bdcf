"""Multi-page TIFF: plain stacks, ImageJ hyperstacks and OME-TIFF, read page by page by their
declared axes (tifffile's first series)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tifffile

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.images import TIFF_SUFFIXES
from tomoseg.io.sources.base import StackSource, parse_voxel_size, plan_axes, plane, slice_ids
from tomoseg.utils.format import first_line


@dataclass
class TiffSource(StackSource):
    """Slice ``i`` is one page of the file's first series (never the whole stack)."""

    kind: ClassVar[str] = "tiff"

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        try:
            tf = tifffile.TiffFile(self.path)
        except (OSError, tifffile.TiffFileError, ValueError) as exc:
            raise TomosegError(f"cannot open {self.path}: {first_line(exc)}") from None
        with tf:
            pages = tf.series[0].pages
            lead = self.axes_shape[:-2]

            def read_page(i: int) -> np.ndarray:
                k = int(np.ravel_multi_index(self.leading(i), lead)) if lead else 0
                try:
                    arr = pages[k].asarray()  # one page: never the whole stack
                except Exception as exc:  # tifffile raises many types for broken pages
                    raise TomosegError(
                        f"page {k} ({self.ids[i]}) of {self.path} is unreadable: {first_line(exc)}"
                    ) from None
                return plane(arr, f"page {k} of {self.path}")

            yield read_page


class TiffFormat:
    kind = "tiff"
    description = "a multi-page TIFF"

    def claims(self, input: Any) -> bool:
        return (
            isinstance(input, (str, os.PathLike))
            and Path(input).suffix.lower() in TIFF_SUFFIXES
            and not Path(input).is_dir()
        )

    def open(
        self, input: Any, *, allow_gaps: bool, channel: int | None, time: int | None
    ) -> TiffSource:
        p = Path(input)
        try:
            with tifffile.TiffFile(p) as tf:
                if not tf.series or len(tf.pages) == 0:
                    raise TomosegError(f"TIFF {p} holds no page")
                series = tf.series[0]
                axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
                dtype = str(series.dtype)
                voxel, unit = tiff_voxel(tf)
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
            raise TomosegError(f"not a readable TIFF: {p} ({first_line(exc)})") from None
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
                stacklevel=3,
            )
            axes = "ZYX"
        axes, nz, ch, tm = plan_axes(axes, shape, channel, time, str(p))
        if int(np.prod(shape[:-2])) != npages:
            raise TomosegError(
                f"TIFF {p} declares axes {axes} {shape} but holds {npages} pages; "
                "it cannot be read slice by slice"
            )
        return TiffSource(
            p, slice_ids(nz), shape[-2:], dtype, voxel, unit,  # type: ignore[arg-type]
            axes=axes, axes_shape=shape, channel=ch, time=tm,
        )  # fmt: skip


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


_UNITS = {
    "micron": "micrometer",
    "\\u00B5m": "micrometer",
    "µm": "micrometer",
    "um": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
}


def ome_voxel(xml: str) -> tuple[tuple[float, float, float] | None, str | None]:
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


def tiff_voxel(tf: tifffile.TiffFile) -> tuple[tuple[float, float, float] | None, str | None]:
    """Voxel size from OME-XML (PhysicalSize*), else ImageJ metadata (spacing, unit) and the
    resolution tags, if present."""
    if tf.is_ome and tf.ome_metadata:
        voxel, unit = ome_voxel(tf.ome_metadata)
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
