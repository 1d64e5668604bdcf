"""Atomic writers (text, JSON, images, masks) and output-folder preparation."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


#: how a temporary name starts: ``.tmp-<host>-<pid>-<random><suffix>`` (:func:`temporary_path`)
TMP_PREFIX = ".tmp-"
#: a suffix longer than this is left off a temporary name (it only helps a writer that picks
#: its format by the suffix; tomoseg's writers name the format)
_MAX_SUFFIX = 10
_TMP_NAME = re.compile(r"^\.tmp-([0-9a-f]{6})-(\d+)-[a-z0-9_]{8}(\.[^/]{0,10})?$")
#: a temporary file of another machine is stale after this many seconds (no single file takes
#: a day to write); one of this machine is stale as soon as its process has ended
STALE_AFTER = 24 * 3600.0


def _host_tag() -> str:
    """Six hex digits naming this machine in temporary names (a CRC of its host name)."""
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF:06x}"


def temporary_path(
    folder: str | os.PathLike[str], suffix: str = "", *, directory: bool = False
) -> Path:
    """A new, empty temporary file (or folder, ``directory=True``) in ``folder``, named
    ``.tmp-<host>-<pid>-<8 random characters><suffix>``: at most 36 characters whatever the
    final name, so a temporary name never fails as "File name too long" where the final one
    fits; the host and process in the name let :func:`remove_stale_temporaries` tell an
    interrupted write from one in progress. ``suffix`` longer than 10 characters is left off.
    """
    d = Path(folder)
    sfx = suffix if len(suffix) <= _MAX_SUFFIX and "/" not in suffix else ""
    prefix = f"{TMP_PREFIX}{_host_tag()}-{os.getpid()}-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=sfx, dir=d))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=sfx, dir=d)
    os.close(fd)
    return Path(tmp)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or not ours to signal: it exists
        return True
    return True


def _stale(path: Path) -> bool:
    m = _TMP_NAME.match(path.name)
    if m is None:
        return False
    if m.group(1) == _host_tag():
        return not _alive(int(m.group(2)))
    try:
        return time.time() - path.lstat().st_mtime > STALE_AFTER
    except OSError:
        return False


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files and folders of interrupted writes (:func:`temporary_path`)
    in ``folder`` and below: those of a process of this machine that has ended (a ``kill -9``,
    a power cut), and those of other machines older than :data:`STALE_AFTER`. A write in
    progress (a live process, another node of a cluster sharing the folder) is left alone.

    Returns:
        How many were removed.
    """
    removed = 0
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            p = Path(root) / name
            if not _stale(p):
                continue
            if name in dirs:
                dirs.remove(name)
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed += 1
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], durable: bool = False
) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX (the temporary file is in ``path``'s own folder, never in
    ``$TMPDIR``), so readers see either the old file or the new one, never a half-written
    file; a kill or a full disk during ``write`` leaves the old file as it was. The temporary
    name is short (:func:`temporary_path`), so any ``path`` whose name fits the file system can
    be written; it is removed when ``write`` fails, and by :func:`remove_stale_temporaries`
    after a ``kill -9``.

    Args:
        path: the destination.
        write: writes the content into the path it is given.
        durable: flush the file and the rename to the disk before returning (``fsync``; for
            checkpoints, which must survive a crash of the machine too).

    Returns:
        The final path.
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temporary_path(dst.parent, dst.suffix)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        if durable:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, dst)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(dst.parent)
    return dst


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk (``ENOSPC``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def writing(what: str, where: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failed write inside the block into one line naming what was being written: the
    one rule for a full disk in every command (``disk full while writing <what>; free space
    and rerun to resume``) and for other ``OSError`` s on a file in the folder ``where``
    or of no file (``cannot write <what> in <where>``; others, a file read elsewhere, pass
    unchanged).
    What was finished before stays (every file is written atomically).

    Raises:
        TomosegError: as above.
    """
    try:
        yield
    except BaseException as exc:
        if is_disk_full(exc):
            raise TomosegError(
                f"disk full while writing {what}; free space and rerun to resume"
            ) from None
        if isinstance(exc, OSError) and _inside(exc.filename, where):
            raise TomosegError(f"cannot write {what} in {where}: {exc.strerror or exc}") from None
        raise


def _inside(filename: object, folder: str | os.PathLike[str]) -> bool:
    if filename is None:
        return True
    if not isinstance(filename, str | os.PathLike):
        return False
    try:
        return Path(os.path.abspath(filename)).is_relative_to(os.path.abspath(folder))
    except (TypeError, ValueError):
        return False


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


#: colours of class ids in saved masks: 0 black, 1 white (a binary mask looks like one),
#: 2.. Matplotlib's "tab10" colours in turn, 255 (the usual ignore label) grey
_MASK_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def mask_palette() -> np.ndarray:
    """The (256, 3) uint8 RGB colours of class ids 0..255 in saved masks: 0 black, 1 white,
    2.. ten distinct colours in turn, 255 grey."""
    pal = np.array([_MASK_COLOURS[(i - 2) % len(_MASK_COLOURS)] for i in range(256)], np.uint8)
    pal[0], pal[1], pal[255] = (0, 0, 0), (255, 255, 255), (128, 128, 128)
    return pal


def _indexed_png(mask: np.ndarray) -> Image.Image:
    im = Image.fromarray(mask)  # mode "L": its values are the class ids ...
    im.putpalette(mask_palette().tobytes())  # ... kept as the indices of a palette ("P")
    return im


def _tiff_colormap() -> np.ndarray:
    """:func:`mask_palette` as a TIFF colour map: (3, 256) uint16."""
    return mask_palette().T.astype(np.uint16) * 257


def write_mask(path: str | os.PathLike[str], mask: np.ndarray) -> Path:
    """Atomically write a class-id mask: uint8 where ids fit (uint16 where they exceed 255).

    A uint8 mask is stored as an indexed image (a PNG palette, a TIFF colour map,
    :func:`mask_palette`): every pixel's stored value is its class id, read back unchanged by
    tomoseg, Pillow (``np.asarray(Image.open(p))``), tifffile, Fiji and napari's TIFF reader,
    while viewers that apply the palette show the classes in colour (a 0/1 mask white on
    black instead of black on black). Readers that convert palettes to RGB (``imageio``,
    ``skimage.io.imread`` without ``mode``/``pilmode="P"``) give colours instead of ids:
    read such files with Pillow or tifffile.
    """
    p = Path(path)
    m = np.asarray(mask)
    if int(m.max(initial=0)) >= 256:
        return write_image(p, m.astype(np.uint16, copy=False))
    m = np.ascontiguousarray(m.astype(np.uint8, copy=False))
    if p.suffix.lower() in TIFF_SUFFIXES:
        return atomic_write(
            p, lambda t: tifffile.imwrite(t, m, photometric="palette", colormap=_tiff_colormap())
        )
    return atomic_write(p, lambda t: _indexed_png(m).save(t, format="PNG"))


def write_mask_rows(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    bands: Iterable[tuple[int, int, np.ndarray]],
    rows_per_strip: int = 64,
) -> Path:
    """Atomically write a uint8 class-id mask arriving by bands of rows (``(y0, y1, (y1 - y0,
    W) or (1, y1 - y0, W) array)``, in order, covering ``[0, H)``), indexed as
    :func:`write_mask` writes it.

    A TIFF is written strip by strip as the bands arrive (tifffile, uncompressed strips of
    ``rows_per_strip`` rows): the mask is never held whole. Other formats (PNG: Pillow writes
    whole images) gather the bands into one (H, W) array first (1 byte per pixel).
    """
    p = Path(path)
    h, w = shape
    if p.suffix.lower() not in TIFF_SUFFIXES:
        mask = np.empty((h, w), np.uint8)
        for y0, y1, lab in bands:
            mask[y0:y1] = np.asarray(lab).reshape(y1 - y0, w)
        return write_mask(p, mask)

    def strips() -> Iterable[bytes]:
        held = np.empty((0, w), np.uint8)
        for _, _, lab in bands:
            held = np.concatenate([held, np.asarray(lab, np.uint8).reshape(-1, w)])
            while len(held) >= rows_per_strip:
                yield held[:rows_per_strip].tobytes()
                held = held[rows_per_strip:]
        if len(held):
            yield held.tobytes()

    return atomic_write(
        p,
        lambda t: tifffile.imwrite(
            t,
            strips(),
            shape=(h, w),
            dtype=np.uint8,
            rowsperstrip=rows_per_strip,
            photometric="palette",
            colormap=_tiff_colormap(),
        ),  # fmt: skip
    )


def prepare_output_dir(
    out: str | os.PathLike[str], overwrite: bool, result_names: Iterable[str]
) -> Path:
    """Create an output folder, refusing one that already holds results unless ``overwrite``;
    the temporary files of interrupted writes in it are removed
    (:func:`remove_stale_temporaries`).

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
        temporary_path(d).unlink()  # can we write here?
    except OSError as exc:
        raise TomosegError(f"output folder {d} is not writable ({exc.strerror or exc})") from None
    remove_stale_temporaries(d)
    return d
