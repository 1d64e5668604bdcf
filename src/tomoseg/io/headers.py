"""What an image file's header claims, checked before any pixel is decoded: the one rule of
every image reader (:mod:`tomoseg.io.images` for PNG, JPEG and TIFF slices, masks and truths;
the TIFF stack source).

A header is refused, with one line naming the file (and the page of a TIFF), when

* it declares an empty image (0 rows or 0 columns);
* the pixels it declares cannot come out of the bytes the file holds: a TIFF page's strips or
  tiles reaching past the end of the file; more decoded bytes than the stored bytes give at the
  compression's largest possible ratio (uncompressed 1:1, PackBits 64:1, deflate 1032:1 as in
  PNG and zlib TIFF (a 258-byte match coded in 2 bits at best, RFC 1951), LZW 2048:1, above its
  ~1365:1 with 12-bit codes); other compressions (JPEG, zstd, LZMA) have no such bound;
* reading it whole would need more memory than the machine has available (the decoded pixels
  and one copy: Pillow's decoded image and the numpy array made of it), the bound that replaces
  Pillow's fixed decompression-bomb limit (179 Mpx) for files the user names: a legitimate
  13400x13400 PNG is read, a crafted PNG bomb is refused before it is decoded. A TIFF page read
  by bands of rows (:func:`tomoseg.io.images.image_rows`) is not held whole and is not bound
  by it.

tifffile reports what it finds odd in a file through the ``tifffile`` logger; those records
go to tomoseg's logger at debug level (:func:`route_tifffile_log`), never to the terminal: the
checks here and the readers' errors say what is wrong in one line.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from tomoseg.errors import TomosegError
from tomoseg.utils.memory import available_memory, human_bytes

#: largest decoded/stored ratio of each TIFF compression tag (1 none, 5 LZW, 8 and 32946 deflate,
#: 32773 PackBits); compressions not listed have no bound checked
MAX_RATIO: dict[int, float] = {1: 1.0, 5: 2048.0, 8: 1032.0, 32946: 1032.0, 32773: 64.0}
#: deflate (PNG's IDAT stream)
DEFLATE_RATIO = 1032.0
#: bytes of memory needed to read an image whole, per decoded byte (the decoder's and numpy's)
READ_COPIES = 2
#: share of the available memory that one image may take
MEMORY_SHARE = 0.8
#: lowest bits per pixel in the file of each Pillow mode (a PNG "L" or "P" may hold 1-bit pixels)
_PIL_BITS = {"1": 1, "L": 1, "P": 1, "LA": 16, "I;16": 16, "I;16B": 16, "I": 16, "F": 32}
#: bits per pixel of each Pillow mode once decoded (Pillow keeps 1-bit images as bytes and
#: RGB with a padding byte)
_PIL_MEMORY_BITS = {"1": 8, "L": 8, "P": 8, "LA": 32, "I;16": 16, "I;16B": 16, "I": 32, "F": 32}


def plane_bytes(height: int, width: int, bits: int) -> int:
    """Decoded bytes of a (height, width) plane of ``bits`` bits per pixel (rows padded to
    whole bytes, as TIFF and PNG store them)."""
    return int(height) * math.ceil(int(width) * int(bits) / 8)


def check_plane(
    where: str,
    height: int,
    width: int,
    bits: int,
    *,
    stored: int | None = None,
    max_ratio: float | None = None,
    whole: bool = True,
    available: int | None = None,
    memory_bits: int | None = None,
) -> None:
    """The header checks of one plane (see the module's docstring).

    Args:
        where: the file (and page) as messages name it.
        height, width: the size the header declares, in pixels.
        bits: bits per pixel (all samples).
        stored: bytes of image data the file holds for it (None: unknown).
        max_ratio: the compression's largest decoded/stored ratio (None: no bound).
        whole: the plane is to be decoded whole (False: read by bands, no memory bound).
        available: bytes of memory available (default: :func:`available_memory`).
        memory_bits: bits per pixel once decoded in memory (default: ``bits``).

    Raises:
        TomosegError: an empty plane, a size the stored bytes cannot hold, or more memory than
            is available.
    """
    size = f"{width}x{height}"
    if height <= 0 or width <= 0:
        raise TomosegError(f"{where} is empty: its header declares {size} pixels")
    decoded = plane_bytes(height, width, bits)
    if stored is not None and max_ratio is not None and decoded > stored * max_ratio + 4096:
        raise TomosegError(
            f"{where}: its header declares {size} pixels (at least {human_bytes(decoded)}) but "
            f"the file holds {stored} bytes of image data, at most {human_bytes(stored * max_ratio)} "
            "decoded: the file is truncated or its header is corrupt"
        )
    if whole:
        decoded = plane_bytes(height, width, memory_bits or bits)
        need = READ_COPIES * decoded
        avail = available_memory() if available is None else available
        if need > MEMORY_SHARE * avail:
            raise TomosegError(
                f"{where} is a {size} image ({width * height / 1e6:.1f} Mpx, "
                f"{human_bytes(decoded)} of pixels): reading it needs about {human_bytes(need)} "
                f"of memory and {human_bytes(avail)} are available (save it as a tiled or "
                "striped TIFF, which is read by bands, or crop it)"
            )


# ----------------------------------------------------------------------------- Pillow

_PIL_LOCK = threading.Lock()


@contextmanager
def open_pil(path: Path, *, whole: bool = True) -> Iterator[Image.Image]:
    """``PIL.Image.open`` (the header only) with Pillow's decompression-bomb limit lifted for
    this file, its header checked by :func:`check_plane` instead.

    Raises:
        TomosegError: as :func:`check_plane`; PIL's own errors pass through.
    """
    with _PIL_LOCK:  # the limit is a module global: lifted for this open only
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        w, h = im.size
        bands = len(im.getbands())
        bits = _PIL_BITS.get(im.mode, 8 * bands)
        ratio = DEFLATE_RATIO if im.format == "PNG" else None
        check_plane(
            str(path), h, w, bits, stored=os.path.getsize(path), max_ratio=ratio, whole=whole,
            memory_bits=_PIL_MEMORY_BITS.get(im.mode, 32),
        )  # fmt: skip
        yield im


# ----------------------------------------------------------------------------- TIFF


def check_tiff_page(page: Any, where: str, file_size: int, *, whole: bool = True) -> None:
    """The header checks of one TIFF page (a tifffile ``TiffPage`` or ``TiffFrame``): its size, its strips or
    tiles inside the file, the size its compression can give; sparse segments (offset and byte
    count 0, filled by readers) are not counted.

    Raises:
        TomosegError: naming ``where`` (the file and page) and what is wrong.
    """
    key = getattr(page, "keyframe", None) or page  # a TiffFrame's header fields are its keyframe's
    h, w = int(key.imagelength), int(key.imagewidth)
    bits = int(key.bitspersample) * int(key.samplesperpixel)
    if h <= 0 or w <= 0:
        check_plane(where, h, w, bits)  # raises
    segments = list(zip(page.dataoffsets, page.databytecounts, strict=False))
    real = [(int(o), int(n)) for o, n in segments if o or n]
    for offset, count in real:
        if offset + count > file_size:
            raise TomosegError(
                f"{where}: its image data reaches byte {offset + count} but the file ends at "
                f"byte {file_size}: the file is truncated (copy it again)"
            )
    stored = sum(n for _, n in real)
    share = len(real) / len(segments) if segments else 1.0
    ratio = MAX_RATIO.get(int(key.compression))
    check_plane(
        where, max(1, round(h * share)), w, bits, stored=stored, max_ratio=ratio, whole=False
    )
    if whole:
        check_plane(where, h, w, bits)


def page_name(path: Path, index: int, pages: int) -> str:
    """``path`` for a one-page file, ``page 3 of path`` otherwise (0-based, as tifffile counts)."""
    return str(path) if pages <= 1 else f"page {index} of {path}"


# ----------------------------------------------------------------------------- tifffile's log


class _ToDebug(logging.Handler):
    """Forwards tifffile's records to the ``tomoseg.io`` logger at debug level."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("tomoseg.io").debug("tifffile: %s", record.getMessage())


def route_tifffile_log() -> None:
    """Send the ``tifffile`` logger's records (warnings about odd files: a shaped series that
    does not match its pages, a broken page chain) to tomoseg's logger at debug level instead of
    the terminal. Idempotent."""
    tlog = logging.getLogger("tifffile")
    if not any(isinstance(h, _ToDebug) for h in tlog.handlers):
        tlog.addHandler(_ToDebug())
    tlog.propagate = False
