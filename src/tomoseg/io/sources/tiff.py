"""Multi-page TIFF: plain stacks, ImageJ hyperstacks and OME-TIFF, read page by page by their
declared axes (tifffile's first series; of a flat pyramid, its full-resolution level).

A file cut short (an interrupted copy: its page chain points past the end of the file, or it
holds fewer pages than its ImageJ ``images``, OME ``SizeZ x SizeC x SizeT`` or tifffile
``shape`` declares) is refused at open, naming both counts and the byte where the file ends."""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tifffile

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.headers import check_plane
from tomoseg.io.images import TIFF_SUFFIXES, checked_pages
from tomoseg.io.sources.base import (
    ReadOptions,
    StackSource,
    parse_voxel_size,
    plan_axes,
    plane,
    slice_ids,
)
from tomoseg.utils.format import first_line, plural


@dataclass
class TiffSource(StackSource):
    """Slice ``i`` is one page of the file's first series (never the whole stack), or page
    ``pages[i]`` of the file for a stack written page by page (tifffile makes each such page a
    series of its own)."""

    kind: ClassVar[str] = "tiff"
    pages: list[int] | None = None

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        try:
            tf = tifffile.TiffFile(self.path)
        except (OSError, tifffile.TiffFileError, ValueError) as exc:
            raise TomosegError(f"cannot open {self.path}: {first_line(exc)}") from None
        with tf:
            pages = tf.series[0].pages if self.pages is None else tf.pages
            lead = self.axes_shape[:-2]

            def read_page(i: int) -> np.ndarray:
                k = int(np.ravel_multi_index(self.leading(i), lead)) if lead else 0
                k = k if self.pages is None else self.pages[i]
                page = pages[k]
                where = f"page {page.index} ({self.ids[i]}) of {self.path}"  # the file's count
                try:
                    arr = page.asarray()  # one page: never the whole stack
                except Exception as exc:  # tifffile raises many types for broken pages
                    if isinstance(exc, (MemoryError, KeyboardInterrupt)):
                        raise
                    raise TomosegError(f"{where} is unreadable: {first_line(exc)}") from None
                return plane(arr, f"page {k} of {self.path}")

            yield read_page


class TiffFormat:
    kind = "tiff"
    description = "a multi-page TIFF"
    containers = False

    def claims(self, input: Any) -> bool:
        return (
            isinstance(input, (str, os.PathLike))
            and Path(input).suffix.lower() in TIFF_SUFFIXES
            and not Path(input).is_dir()
        )

    def open(self, input: Any, options: ReadOptions) -> TiffSource:
        p, channel, time = Path(input), options.channel, options.time
        try:
            with _tifffile_quiet(), tifffile.TiffFile(p) as tf:
                if len(tf.pages) == 0:
                    raise TomosegError(f"TIFF {p} holds no page")
                key = tf.pages.first
                bits = int(key.bitspersample) * int(key.samplesperpixel)
                size = (str(p), int(key.imagelength), int(key.imagewidth), bits)
                check_plane(*size, whole=False)  # an empty page: not "cut short"
                check_complete(tf, p)
                checked_pages(tf, p, whole=False)  # every page's header, the odd page named
                check_plane(*size)  # one page is read at a time: it must fit in memory
                if not tf.series:
                    raise TomosegError(f"TIFF {p} holds no page")
                series = tf.series[0]
                axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
                dtype = str(series.dtype)
                voxel, unit = tiff_voxel(tf)
                ij = tf.imagej_metadata if tf.is_imagej else None
                npages = len(series.pages)
                reduced = sum(len(level.pages) for level in series.levels[1:])
                by_page = _page_by_page(tf)
                if by_page is not None:  # one series per page: read them as one stack
                    axes, shape = "I" + axes, (len(by_page), *shape)
                    npages = len(by_page)
                elif (
                    len(tf.pages) > npages + reduced
                    and not (tf.is_imagej or tf.is_ome)
                    and not _reduced_levels(tf, npages + reduced)
                ):
                    other = tf.pages[npages + reduced]
                    raise TomosegError(
                        f"page {npages + reduced} of {p} has shape {tuple(other.shape)} but the pages "
                        f"before it have {tuple(series.keyframe.shape)}; a stack's slices must "
                        "all have one shape"
                    )
        except TomosegError:
            raise
        except (OSError, tifffile.TiffFileError, ValueError, RuntimeError) as exc:
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
            axes=axes, axes_shape=shape, channel=ch, time=tm, pages=by_page,
        )  # fmt: skip


def _page_by_page(tf: tifffile.TiffFile) -> list[int] | None:
    """The page indices of a stack written page by page (``TiffWriter.write`` per slice: each
    page is a series of its own, with its reduced levels if any), when there are several such
    series of one shape and dtype; else None."""
    series = tf.series
    if len(series) < 2 or tf.is_imagej or tf.is_ome:
        return None
    first = series[0]
    if any(len(s.pages) != 1 or s.shape != first.shape or s.dtype != first.dtype for s in series):
        return None
    if sum(1 + sum(len(lv.pages) for lv in s.levels[1:]) for s in series) != len(tf.pages):
        return None
    index = {int(pg.offset): k for k, pg in enumerate(tf.pages)}
    found = [index.get(int(s.pages[0].offset)) for s in series]
    return None if None in found else found  # type: ignore[return-value]


@contextmanager
def _tifffile_quiet() -> Iterator[None]:
    """tifffile's log records (a broken page chain, invalid metadata) dropped while a file is
    opened: :func:`check_complete` and the checks after it report the fault in one line."""
    log = logging.getLogger("tifffile")
    drop = logging.Filter("tifffile.never")  # passes only records of that (absent) logger
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _reduced_levels(tf: tifffile.TiffFile, start: int) -> bool:
    """Whether the pages from ``start`` on are reduced-resolution copies of the stack before
    them (a flat pyramid that tifffile reads as other series): each group of ``start`` pages
    shares one shape, smaller in Y and X than the group before it."""
    n, total = start, len(tf.pages)
    if n == 0 or (total - n) % n:
        return False
    prev = tuple(tf.pages[0].shape)
    for k in range(n, total, n):
        shapes = {tuple(tf.pages[j].shape) for j in range(k, k + n)}
        shape = next(iter(shapes))
        if (
            len(shapes) != 1
            or len(shape) != len(prev)
            or not (shape[0] < prev[0] and shape[1] < prev[1])
        ):
            return False
        prev = shape
    return True


def check_complete(tf: tifffile.TiffFile, path: Path) -> None:
    """Refuse a TIFF cut short: its page chain points past the end of the file, its last page's
    data runs past it, or it holds fewer pages than its metadata declares (ImageJ ``images``,
    OME ``SizeZ x SizeC x SizeT``, tifffile's ``shape``). tifffile itself reads such a file as
    the pages it finds (often one), which would be a silent wrong volume.

    Raises:
        TomosegError: naming the declared and present page counts and the byte where the file
            ends.
    """
    size = int(tf.filehandle.size)
    pages = tf.pages
    found = len(pages)
    declared, by = _declared_pages(tf)
    chain = None  # where the next page should start, when the chain points past the end
    pos = pages.next_page_offset
    if pos is not None:
        fh = tf.filehandle
        fh.seek(pos)
        raw = fh.read(tf.tiff.offsetsize)
        if len(raw) < tf.tiff.offsetsize:
            chain = pos
        elif (nxt := int(struct.unpack(tf.tiff.offsetformat, raw)[0])) >= size:
            chain = nxt
    if chain is None and tf.is_imagej and found == 1 and declared > 1:
        first = pages.first  # ImageJ's one-page layout (stacks > 4 GB): planes follow page 0
        found = max(1, min(declared, (size - int(first.dataoffsets[0])) // max(first.nbytes, 1)))
    last = pages[len(pages) - 1] if len(pages) else None
    offsets = getattr(last, "dataoffsets", ()) or ()
    counts = getattr(last, "databytecounts", ()) or ()
    end = max((int(o) + int(c) for o, c in zip(offsets, counts, strict=False)), default=0)
    if chain is None and end <= size and declared <= found:
        return
    said = (
        f"its {by} declares {declared} pages but it holds {found}"
        if declared > found
        else (f"it holds {plural(found, 'page')}")
    )
    if chain is not None:
        where = f"; page {found} should start at byte {chain}"
    elif end > size:
        where = f"; page {found - 1}'s data runs to byte {end}"
    else:
        where = ""
    raise TomosegError(
        f"TIFF {path} is cut short (an interrupted copy?): {said}, and the file ends at byte "
        f"{size}{where}; copy it again from the original"
    )


def _declared_pages(tf: tifffile.TiffFile) -> tuple[int, str]:
    """(pages the file's metadata declares, which metadata) or (0, "") when it declares none."""
    ij = tf.imagej_metadata if tf.is_imagej else None
    if ij and int(ij.get("images", 1) or 1) > 1:
        return int(ij["images"]), "ImageJ metadata (images)"
    if tf.is_ome and tf.ome_metadata:
        n = _ome_planes(tf.ome_metadata)
        if n:
            return n, "OME metadata (SizeZ x SizeC x SizeT)"
    if tf.is_shaped:  # tifffile's own stacks: {"shape": [...]} in the first page's description
        shaped = [s for s in tf.series if s.kind == "shaped"]
        n = sum(int(np.prod(s.shape)) // max(int(np.prod(s.keyframe.shape)), 1) for s in shaped)
        if n > 1:
            return n, "tifffile metadata (shape)"
    return 0, ""


def _ome_planes(xml: str) -> int:
    """Planes the OME-XML declares in this file (SizeZ x SizeT x SizeC / samples, summed over
    its images); 0 when unknown or when its images live in other files too."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return 0
    if any(e.tag.endswith("UUID") and e.attrib.get("FileName") for e in root.iter()):
        return 0  # a multi-file OME dataset: the planes are spread over files
    total = 0
    for px in (e for e in root.iter() if e.tag.endswith("Pixels")):
        try:
            z, c, t = (int(px.attrib.get(f"Size{a}", 1)) for a in "ZCT")
        except ValueError:
            return 0
        channel = next((e for e in px if e.tag.endswith("Channel")), None)
        spp = int(channel.attrib.get("SamplesPerPixel", 1)) if channel is not None else 1
        total += z * t * max(c // max(spp, 1), 1)
    return total


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
