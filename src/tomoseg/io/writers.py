"""Atomic writers (text, JSON, images, masks) and output-folder preparation."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from tomoseg.errors import TomosegError
from tomoseg.io.images import TIFF_SUFFIXES
from tomoseg.utils.format import nan_to_none

# ----------------------------------------------------------------------------- atomic writing


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the new one, never a
    half-written file.

    Returns:
        The final path.
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp" + dst.suffix, dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, dst)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return dst


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda t: t.write_text(text))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write JSON, with NaN and infinities written as ``null``."""
    return write_text(path, json.dumps(nan_to_none(obj), indent=2) + "\n")


def write_image(path: str | os.PathLike[str], arr: np.ndarray) -> Path:
    """Atomically write a 2D (or RGB) array as PNG/JPEG (via Pillow) or TIFF (via tifffile)."""
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES:
        return atomic_write(p, lambda t: tifffile.imwrite(t, arr))
    fmt = "JPEG" if p.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    return atomic_write(p, lambda t: Image.fromarray(arr).save(t, format=fmt))


def write_mask(path: str | os.PathLike[str], mask: np.ndarray) -> Path:
    """Atomically write a class-id mask (uint8 PNG by default, uint16 where ids exceed 255)."""
    m = np.asarray(mask)
    dtype = np.uint8 if int(m.max(initial=0)) < 256 else np.uint16
    return write_image(path, m.astype(dtype, copy=False))


def prepare_output_dir(
    out: str | os.PathLike[str], overwrite: bool, result_names: Iterable[str]
) -> Path:
    """Create an output folder, refusing one that already holds results unless ``overwrite``.

    Args:
        out: folder to write into.
        overwrite: allow replacing earlier results (each file is still replaced atomically).
        result_names: file names whose presence means "this folder already holds results".

    Raises:
        TomosegError: folder holds results and overwrite is False, or it is not writable.
    """
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise TomosegError(f"output {d} exists and is not a folder")
    if d.is_dir() and not overwrite:
        held = [n for n in result_names if (d / n).exists()]
        if held:
            raise TomosegError(
                f"output folder {d} already holds results ({held[0]}); use overwrite=True to replace them"
            )
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=d, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise TomosegError(f"output folder {d} is not writable ({exc.strerror or exc})") from None
    return d
