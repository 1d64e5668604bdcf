"""Reading 2D images and masks (PNG, JPEG, TIFF) with their dtype, and folders of them.

Two rules for label files (masks, truths, predictions) hold on every path, because every path
reads them here: they must be lossless (:func:`read_mask` refuses JPEG), and the number of
classes and a 0/255 storage of binary masks are decided from all the label files of a job
together (:func:`resolve_class_ids`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from tomoseg.errors import TomosegError, TomosegWarning

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
        Array of shape (H, W), dtype uint8 (or int32 when ids exceed 255).

    Raises:
        TomosegError: JPEG (lossy) file, RGB mask, float mask, 3D mask, values out of range.
    """
    p = Path(path)
    arr = _to_gray(_read_raw(p, lossless=True), p, "mask")
    if arr.ndim != 2:
        raise TomosegError(f"expected a 2D mask but {p} holds an array of shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TomosegError(f"mask must hold integer class ids, found {arr.dtype} values: {p}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (n_classes is not None and hi >= n_classes):
        limit = f"0..{n_classes - 1}" if n_classes is not None else ">= 0"
        raise TomosegError(f"mask values {lo}..{hi} outside {limit} in {p}")
    return arr.astype(np.uint8 if hi < 256 else np.int32, copy=False)


# ----------------------------------------------------------------------------- class ids


def unique_ids(masks: Iterable[np.ndarray]) -> set[int]:
    """The class ids found in some label arrays."""
    found: set[int] = set()
    for m in masks:
        found.update(int(v) for v in np.unique(np.asarray(m)))
    return found


@dataclass(frozen=True)
class ClassIds:
    """How the label files of one job are to be read (see :func:`resolve_class_ids`).

    Attributes:
        n_classes: K; every id read lies in ``0..K-1`` (or is the ignore label).
        stored_255: the groups (e.g. ``"truth"``) holding binary masks stored as 0/255, read
            as 0/1.
    """

    n_classes: int
    stored_255: frozenset[str] = frozenset()
    ignore_label: int | None = None

    def apply(self, group: str, mask: np.ndarray, where: object = None) -> np.ndarray:
        """A mask of ``group`` as class ids: 0/255 storage read as 0/1, ids checked.

        Raises:
            TomosegError: an id outside ``0..K-1`` (naming ``where``).
        """
        m = np.asarray(mask)
        if group in self.stored_255:
            m = (m == 255).astype(np.uint8)
        ids = unique_ids([m]) - ({self.ignore_label} if self.ignore_label is not None else set())
        bad = sorted(i for i in ids if not 0 <= i < self.n_classes)
        if bad:
            raise TomosegError(
                f"mask values {', '.join(map(str, bad[:5]))} outside 0..{self.n_classes - 1} "
                f"in {where or group}"
            )
        return m

    def read(self, group: str, path: str | os.PathLike[str]) -> np.ndarray:
        """:func:`read_mask` then :meth:`apply`."""
        return self.apply(group, read_mask(path), path)


def resolve_class_ids(
    ids: Mapping[str, Iterable[int]],
    n_classes: int | None = None,
    *,
    ignore_label: int | None = None,
    where: Mapping[str, str] | None = None,
) -> ClassIds:
    """Decide the class ids of a job from all its label files together: the one rule of
    ``score``, ``evaluate``, ``check``, ``train`` and :func:`tomoseg.score`.

    * A group (a folder of masks, or the truth or prediction array) whose ids are exactly
      {0, 255} (or {255}) is a binary mask stored as 0/255 (an image editor's default): it is
      read as 0/1 and a :class:`~tomoseg.errors.TomosegWarning` says so. Not when 255 is a
      valid class id (``n_classes > 255``) or the ignore label.
    * With ``n_classes`` (from ``dataset.json``, ``classes`` or the run), every id must lie in
      ``0..K-1``.
    * Without it, K is the largest id of all groups together + 1 (at least 2); ids that leave
      most of ``0..K-1`` unused (e.g. {0, 1, 255}) are refused: give the classes.

    Args:
        ids: group name (``truth``, ``prediction``, ``masks``) -> the ids found in its files.
        n_classes: K when known.
        ignore_label: an id that marks unlabelled pixels (not a class).
        where: group name -> the folder, for messages (default: the group name).

    Returns:
        The :class:`ClassIds` to read the files with.

    Raises:
        TomosegError: ids out of range, or sparse ids without ``n_classes``.
    """
    where = dict(where or {})
    stored: set[str] = set()
    effective: dict[str, set[int]] = {}
    for group, vals in ids.items():
        v = {int(i) for i in vals} - ({ignore_label} if ignore_label is not None else set())
        if (
            255 in v
            and v <= {0, 255}
            and (n_classes is None or n_classes <= 255)
            and ignore_label != 255
        ):
            stored.add(group)
            warnings.warn(
                f"{where.get(group, group)} holds binary masks stored as 0/255: read as class "
                "ids 0/1",
                TomosegWarning,
                stacklevel=2,
            )
            v = {1 if i == 255 else i for i in v}
        effective[group] = v
    every = set().union(*effective.values()) if effective else set()
    if n_classes is None:
        k = max(max(every, default=0) + 1, 2)
        if k > 16 and len(every) * 2 < k:
            listed = ", ".join(map(str, sorted(every)[:8]))
            raise TomosegError(
                f"class ids {listed} of {' and '.join(where.get(g, g) for g in ids)} would make "
                f"{k} classes, most of them unused; give the class names (classes, or a "
                "dataset.json) to say how many classes there are"
            )
        n_classes = k
    for group, v in effective.items():
        bad = sorted(i for i in v if not 0 <= i < n_classes)
        if bad:
            raise TomosegError(
                f"mask values {', '.join(map(str, bad[:5]))} outside 0..{n_classes - 1} in "
                f"{where.get(group, group)} (the class ids of {n_classes} classes)"
            )
    return ClassIds(int(n_classes), frozenset(stored), ignore_label)


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
