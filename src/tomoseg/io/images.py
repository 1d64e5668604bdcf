"""Reading 2D images and masks (PNG, JPEG, TIFF) with their dtype, and folders of them.

Label files (masks, truths, predictions) are read here on every path, so they are lossless on
every path (:func:`read_mask` refuses JPEG); how their ids are read (0/255 storage, ids from 1,
instance labels, the number of classes) is decided by :mod:`tomoseg.io.labels`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import UnidentifiedImageError

from tomoseg.errors import TomosegError
from tomoseg.io.headers import (
    check_plane,
    check_tiff_page,
    open_pil,
    page_name,
    route_tifffile_log,
)
from tomoseg.utils.format import first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
#: lossy formats: fine for images, refused for label files
LOSSY_SUFFIXES = (".jpg", ".jpeg")

route_tifffile_log()  # tifffile's complaints about a file: debug records, not terminal lines


# ----------------------------------------------------------------------------- reading


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``slice2`` before ``slice10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _read_raw(path: Path, lossless: bool = False) -> np.ndarray:
    """Read a file into an array without interpreting it; raise TomosegError if unreadable
    (or, with ``lossless``, if it is a JPEG whatever its name). Every header is checked before
    a pixel is decoded (:mod:`tomoseg.io.headers`: empty, impossible or too large for memory);
    a TIFF page that cannot be decoded is named."""
    if not path.exists():
        raise TomosegError(f"file not found: {path}")
    if not path.is_file():
        raise TomosegError(f"not a file: {path}")
    suffix = path.suffix.lower()
    if lossless and suffix in LOSSY_SUFFIXES:
        raise _lossy(path)
    try:
        if suffix in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tf:
                pages, shape = checked_pages(tf, path)
                if lossless and tf.pages.first.compression in _LOSSY_TIFF:
                    raise _lossy(path)
                arr = _decode_pages(pages, path)
                return arr.reshape(shape) if shape and arr.size == math.prod(shape) else arr
        with open_pil(path) as im:
            if lossless and im.format == "JPEG":
                raise _lossy(path)
            return np.asarray(im)
    except PermissionError:
        raise TomosegError(f"cannot read {path}: permission denied") from None
    except MemoryError:
        raise TomosegError(f"not enough memory to read {path}") from None
    except (
        UnidentifiedImageError,
        tifffile.TiffFileError,
        ValueError,
        OSError,
        RuntimeError,
    ) as exc:
        if isinstance(exc, TomosegError):
            raise
        raise TomosegError(f"not a readable image: {path} ({first_line(exc)})") from None


def checked_pages(
    tf: tifffile.TiffFile, path: Path, whole: bool = True
) -> tuple[list[Any], tuple[int, ...] | None]:
    """The pages of a TIFF's first series and its shape (None when tifffile cannot group the
    pages), each header checked (:func:`check_tiff_page`; the memory bound counts them all
    together when ``whole``).

    Raises:
        TomosegError: no page, a page of another shape than the first (named), a bad header.
    """
    size = path.stat().st_size
    try:
        series = tf.series[0] if tf.series else None
        pages = list(series.pages) if series is not None else []
        shape = tuple(int(n) for n in series.shape) if series is not None else None
    except (RuntimeError, ValueError, IndexError, tifffile.TiffFileError):
        pages, shape = [], None  # tifffile could not group the pages: find the odd one below
    if not pages or any(p is None for p in pages):
        pages, shape = _plain_pages(tf, path), None
    n = len(pages)
    first = getattr(pages[0], "keyframe", None) or pages[0]
    for p in pages:
        where = page_name(path, p.index, len(tf.pages))
        if isinstance(p, tifffile.TiffFrame):  # its own header, not its keyframe's
            try:
                p = p.aspage()
            except (RuntimeError, ValueError, tifffile.TiffFileError) as exc:
                raise TomosegError(f"{where} is unreadable: {first_line(exc)}") from None
        _same_size(p, first, path)
        check_tiff_page(p, where, size, whole=False)
    if whole:
        bits = int(first.bitspersample) * int(first.samplesperpixel)
        check_plane(str(path), n * int(first.imagelength), int(first.imagewidth), bits)
    return pages, shape


def _plain_pages(tf: tifffile.TiffFile, path: Path) -> list[Any]:
    """Every page of a TIFF read one by one (no series), refusing the first of another shape."""
    tf.pages.useframes = False
    tf.pages.set_keyframe(0)
    out = []
    total = len(tf.pages)
    for i in range(total):
        try:
            page = tf.pages[i]
        except (RuntimeError, ValueError, tifffile.TiffFileError) as exc:
            raise TomosegError(
                f"{page_name(path, i, total)} is unreadable: {first_line(exc)}"
            ) from None
        if out:
            _same_size(page, out[0], path)
        out.append(page)
    if not out:
        raise TomosegError(f"TIFF {path} holds no page")
    return out


def _same_size(page: Any, first: Any, path: Path) -> None:
    """Refuse a page whose size differs from the first page's, naming it."""
    if (page.imagelength, page.imagewidth) != (first.imagelength, first.imagewidth):
        raise TomosegError(
            f"page {page.index} of {path} is {page.imagewidth}x{page.imagelength} pixels but "
            f"page 0 is {first.imagewidth}x{first.imagelength}: it is corrupt, or the file "
            "is not one stack"
        )


def _decode_pages(pages: list[Any], path: Path) -> np.ndarray:
    """Decode checked pages (one page: (H, W) or (H, W, S); several: stacked), naming the
    page that fails."""
    arrays = []
    for p in pages:
        try:
            arrays.append(p.asarray())
        except Exception as exc:  # tifffile and imagecodecs raise many types for broken data
            if isinstance(exc, (MemoryError, KeyboardInterrupt)):
                raise
            where = page_name(path, p.index, len(pages))
            raise TomosegError(f"{where} is unreadable: {first_line(exc)}") from None
    return arrays[0] if len(arrays) == 1 else np.stack(arrays)


_LOSSY_TIFF = {6, 7, 34892, 50001}  # JPEG (old, new), lossy JPEG DNG, WebP compressions


def _lossy(path: Path) -> TomosegError:
    return TomosegError(
        f"masks must be lossless, PNG or TIFF: {path} is a JPEG, whose compression changes "
        "class ids along every edge (save it again as PNG or TIFF from the original)"
    )


def _to_gray(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Turn an (H, W, C) array whose colour channels are equal into (H, W); refuse otherwise."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if what == "mask":
            raise TomosegError(
                f"mask is RGB, expected one channel of class ids: {path} "
                "(save masks as single-channel integer images)"
            )
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise TomosegError(
                f"image is colour (its RGB channels differ), expected grayscale: {path}"
            )
        return np.ascontiguousarray(rgb[..., 0])
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha (PNG "LA")
        return np.ascontiguousarray(arr[..., 0])
    while arr.ndim > 2 and arr.shape[0] == 1:  # a one-page stack is a slice
        arr = arr[0]
    return arr


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one 2D grayscale image with its dtype preserved.

    Args:
        path: PNG, JPEG or TIFF file. A multi-page TIFF holding more than one page is refused here
            (use :func:`read_stack`).

    Returns:
        Array of shape (H, W) in the file's dtype (uint8, uint16, float32, ...).

    Raises:
        TomosegError: missing/unreadable file, not an image, colour image, 3D data.

    NaN and infinite pixels pass through (they mean "outside the field of view": see
    :mod:`tomoseg.data.normalization`); every stack reader does the same.
    """
    p = Path(path)
    arr = _to_gray(_read_raw(p), p, "image")
    if arr.ndim != 2:
        raise TomosegError(
            f"expected a 2D slice but {p} holds an array of shape {arr.shape} "
            "(a stack? read it with read_stack / segment-stack)"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TomosegError(f"unsupported pixel type {arr.dtype} in {p}")
    return arr


def read_stack(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a multi-page TIFF (or a single 2D image) as a (Z, H, W) stack, dtype preserved.

    Args:
        path: TIFF file with one or more pages, or any 2D image file.

    Returns:
        Array of shape (Z, H, W).
    """
    p = Path(path)
    arr = _to_gray(_read_raw(p), p, "image")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise TomosegError(f"expected a (Z, H, W) stack but {p} has shape {arr.shape}")
    return arr


def read_mask(path: str | os.PathLike[str], n_classes: int | None = None) -> np.ndarray:
    """Read a label mask of integer class ids.

    Every label file of tomoseg (training masks, truths, predictions to score) is read here.

    Args:
        path: PNG or TIFF file holding one channel of integers (lossless: JPEG is refused).
        n_classes: if given, every value must lie in ``0..n_classes-1``.

    Returns:
        Array of shape (H, W), dtype uint8 (int32 when ids exceed 255, as napari's int32 and
        uint32 labels do).

    Raises:
        TomosegError: JPEG (lossy) file, RGB mask, float mask, 3D mask, values out of range.
    """
    p = Path(path)
    arr = _to_gray(_read_raw(p, lossless=True), p, "mask")
    if arr.ndim != 2:
        raise TomosegError(f"expected a 2D mask but {p} holds an array of shape {arr.shape}")
    return as_mask(arr, p, n_classes)


def as_mask(arr: np.ndarray, where: object, n_classes: int | None = None) -> np.ndarray:
    """Check a 2D label array read from ``where`` (a file, a slice of a volume) and give it the
    dtype of :func:`read_mask`: uint8, int32 when ids exceed 255, int64 beyond int32.

    Raises:
        TomosegError: float or other non-integer values, negative ids, ids out of
            ``0..n_classes-1``.
    """
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TomosegError(f"mask must hold integer class ids, found {arr.dtype} values: {where}")
    if not arr.size:
        raise TomosegError(f"mask is empty (shape {arr.shape}): {where}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (n_classes is not None and hi >= n_classes):
        limit = f"0..{n_classes - 1}" if n_classes is not None else ">= 0"
        raise TomosegError(f"mask values {lo}..{hi} outside {limit} in {where}")
    dtype = np.uint8 if hi < 256 else np.int32 if hi < 2**31 else np.int64
    return arr.astype(dtype, copy=False)


# ----------------------------------------------------------------------------- class ids


def unique_ids(masks: Iterable[np.ndarray]) -> set[int]:
    """The class ids found in some label arrays."""
    found: set[int] = set()
    for m in masks:
        found.update(int(v) for v in np.unique(np.asarray(m)))
    return found


def list_images(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Map file stem -> path for every image file in a folder, in natural sort order.

    Raises:
        TomosegError: folder missing, empty of images, or two files sharing a stem.
    """
    d = Path(folder)
    if not d.is_dir():
        raise TomosegError(f"folder not found: {d}")
    found: dict[str, Path] = {}
    for f in sorted(d.iterdir(), key=lambda q: natural_key(q.name)):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
            if f.stem in found:
                raise TomosegError(
                    f"two files share the id '{f.stem}' in {d}: {found[f.stem].name}, {f.name}"
                )
            found[f.stem] = f
    if not found:
        raise TomosegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {d}")
    return found


# ----------------------------------------------------------------------------- bands of rows


@dataclass(frozen=True)
class RowReader:
    """A 2D image read by bands of rows (:func:`image_rows`).

    Attributes:
        shape: (H, W) of the image.
        dtype: its numpy dtype name.
        rows: ``rows(y0, y1)`` -> rows ``[y0, y1)`` as a (y1 - y0, W) array (bool as uint8).
    """

    shape: tuple[int, int]
    dtype: str
    rows: Any


@contextmanager
def image_rows(path: str | os.PathLike[str]) -> Iterator[RowReader | None]:
    """Open a 2D image to be read by bands of rows where its format allows it, else None.

    A one-page grayscale TIFF is read by bands: through a memory map when its pixels are stored
    uncompressed in one block (rows read from where they lie, not memory-mapped: mapped pages
    would count in the process's memory), through tifffile's Zarr store of its strips
    or tiles otherwise (``TiffPage.aszarr``: only the strips or tiles a band touches are
    decoded). PNG and JPEG cannot be (Pillow decodes whole images), nor a TIFF page stored as
    one compressed strip: None, and the caller reads the image whole (:func:`read_image`).

    Yields:
        A :class:`RowReader`, or None.

    Raises:
        TomosegError: a header that is refused (:func:`check_tiff_page`), a band that cannot be
            decoded (naming the file).
    """
    p = Path(path)
    if p.suffix.lower() not in TIFF_SUFFIXES or not p.is_file():
        yield None
        return
    try:
        tf = tifffile.TiffFile(p)
    except (OSError, ValueError, RuntimeError, tifffile.TiffFileError):
        yield None  # read_image says what is wrong
        return
    with tf:
        page = tf.pages.first
        if len(tf.pages) != 1 or int(page.samplesperpixel) != 1 or len(page.shape) != 2:
            yield None
            return
        check_tiff_page(page, str(p), p.stat().st_size, whole=False)
        if page.is_memmappable:  # uncompressed in one block: rows read where they lie
            data: Any = _Contiguous(p, int(page.dataoffsets[0]), page.shape, page.dtype, tf)
        elif len(page.dataoffsets) > 1:
            import zarr

            data = zarr.open(page.aszarr(), mode="r")
        else:
            yield None
            return

        def rows(y0: int, y1: int) -> np.ndarray:
            try:
                arr = np.asarray(data[y0:y1])
            except Exception as exc:  # tifffile and imagecodecs raise many types
                if isinstance(exc, (MemoryError, KeyboardInterrupt)):
                    raise
                raise TomosegError(
                    f"rows {y0}..{y1 - 1} of {p} are unreadable: {first_line(exc)}"
                ) from None
            return arr.astype(np.uint8) if arr.dtype == bool else arr

        yield RowReader((int(page.shape[0]), int(page.shape[1])), str(page.dtype), rows)


class _Contiguous:
    """Rows of an uncompressed image stored in one block of a file, read with ``os.pread``
    (indexing ``[y0:y1]`` gives a (y1 - y0, W) array)."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: Any, tf: Any):
        self.path, self.offset, self.shape = path, offset, (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype).newbyteorder(tf.byteorder)

    def __getitem__(self, rows: slice) -> np.ndarray:
        y0, y1, _ = rows.indices(self.shape[0])
        row = self.shape[1] * self.dtype.itemsize
        with open(self.path, "rb") as f:
            raw = os.pread(f.fileno(), (y1 - y0) * row, self.offset + y0 * row)
        if len(raw) != (y1 - y0) * row:
            raise OSError(f"the file ends before row {y1 - 1}")
        arr = np.frombuffer(raw, self.dtype).reshape(y1 - y0, self.shape[1])
        return arr.astype(self.dtype.newbyteorder("="), copy=False)
