"""Reading 2D images and masks (PNG, JPEG, TIFF) with their dtype, and folders of them.

Label files (masks, truths, predictions) are read here on every path, so they are lossless on
every path (:func:`read_mask` refuses JPEG); how their ids are read (0/255 storage, ids from 1,
instance labels, the number of classes) is decided by :mod:`tomoseg.io.labels`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from tomoseg.errors import TomosegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
#: lossy formats: fine for images, refused for label files
LOSSY_SUFFIXES = (".jpg", ".jpeg")


# ----------------------------------------------------------------------------- reading


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``slice2`` before ``slice10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _read_raw(path: Path, lossless: bool = False) -> np.ndarray:
    """Read a file into an array without interpreting it; raise TomosegError if unreadable
    (or, with ``lossless``, if it is a JPEG whatever its name)."""
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
                if lossless and tf.pages and tf.pages[0].compression in _LOSSY_TIFF:
                    raise _lossy(path)
                return np.asarray(tf.asarray())
        with Image.open(path) as im:
            if lossless and im.format == "JPEG":
                raise _lossy(path)
            return np.asarray(im)
    except PermissionError:
        raise TomosegError(f"cannot read {path}: permission denied") from None
    except (UnidentifiedImageError, tifffile.TiffFileError, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TomosegError(f"not a readable image: {path} ({reason})") from None


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
