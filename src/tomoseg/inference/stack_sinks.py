"""Where ``segment_stack`` writes class ids: one :class:`Sink` per output format.

A sink is stateless and picklable (worker processes and Ray actors get it with the job): it
creates the label volume once (:meth:`Sink.create`, race-free between parts with
:meth:`Sink.create_once`), says whether an existing one fits the stack (:meth:`Sink.ok`), and
opens a :class:`SliceWriter` in whichever process writes slices. The formats on disk:

* ``zarr`` (:class:`OmeZarrSink`): ``labels.zarr``, a Zarr v2 group in OME-NGFF 0.4 layout
  holding the uint8 class ids at path ``0``, chunked (1, <=1024, <=1024);
* ``tiff`` (:class:`TiffSink`): ``labels/<slice id>.tif``, one zlib-compressed TIFF per slice.

A new output format is one class here plus one line in :data:`SINKS`.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tifffile

from tomoseg.errors import TomosegError
from tomoseg.io.ome_zarr import create_label_array, write_ngff_attrs
from tomoseg.io.sources import SliceSource
from tomoseg.io.volumes import TIFF_DIR, ZARR_NAME
from tomoseg.io.writers import atomic_write, temporary_path

MAX_CHUNK = 1024


class SliceWriter(Protocol):
    """Writes slice ``i``'s (H, W) uint8 class ids into the volume (one process's handle) of
    the output folder ``out``, whose slices are named ``ids``."""

    out: Path
    ids: list[str]

    def write(self, i: int, labels: np.ndarray) -> None: ...


class Sink(Protocol):
    """An output format of ``segment_stack`` (``format`` in ``stack.json``).

    Attributes:
        fmt: the format's name (``zarr``, ``tiff``).
        volume: the volume's name inside the output folder (``labels.zarr``, ``labels``).
    """

    fmt: str
    volume: str

    def create(self, out: Path, src: SliceSource, meta: VolumeMeta) -> None:
        """Create an empty volume for ``src`` in ``out`` (replacing one that is there)."""
        ...

    def create_once(self, out: Path, src: SliceSource, meta: VolumeMeta) -> None:
        """Create the volume unless a fitting one exists (parts racing: the first wins).

        Raises:
            TomosegError: a volume is there but does not fit the stack.
        """
        ...

    def ok(self, out: Path, src: SliceSource) -> bool:
        """Whether ``out`` holds a volume of this format that fits ``src``."""
        ...

    def update(self, out: Path, meta: VolumeMeta) -> None:
        """Rewrite the volume's metadata (a resume with another voxel size or unit)."""
        ...

    def z_chunk(self, out: Path) -> int:
        """Slices per chunk along z (parts are aligned to it: they never share a file)."""
        ...

    def open(self, out: Path, ids: Sequence[str]) -> SliceWriter:
        """A writer of this volume, in the calling process."""
        ...


class VolumeMeta:
    """What a label volume records besides the labels: its title, voxel size and unit, the
    class names and the run's class of interest."""

    def __init__(
        self,
        title: str,
        voxel: Sequence[float],
        unit: str | None,
        classes: Sequence[str],
        class_of_interest: str | None,
    ):
        self.title, self.voxel, self.unit = title, list(voxel), unit
        self.classes, self.class_of_interest = list(classes), class_of_interest


def _chunks(shape: tuple[int, int]) -> tuple[int, int, int]:
    return 1, min(shape[0], MAX_CHUNK), min(shape[1], MAX_CHUNK)


class _ZarrWriter:
    """Zarr chunks are written by zarr itself (``array[i] = labels``): a well-kept library, not a
    copy of its chunk encoding (writing the chunk files by hand measured a third of zarr's CPU
    time per slice, 6 vs 17 ms for 2300x1920, but would bind tomoseg to zarr's storage format).
    """

    def __init__(self, out: Path, ids: Sequence[str]):
        import zarr

        self.out, self.ids = out, list(ids)
        self.array = zarr.open_array(str(out / ZARR_NAME / "0"), mode="r+")

    def write(self, i: int, labels: np.ndarray) -> None:
        self.array[i] = labels


class OmeZarrSink:
    """``labels.zarr``: an OME-NGFF 0.4 label volume (napari-ome-zarr and Fiji open it)."""

    fmt = "zarr"
    volume = ZARR_NAME

    def create(self, out: Path, src: SliceSource, meta: VolumeMeta) -> None:
        create_label_array(
            out / ZARR_NAME,
            (src.n, *src.shape),
            "uint8",
            _chunks(src.shape),
            meta.voxel,
            meta.unit,
            name=meta.title,
            classes=meta.classes,
            extra={
                "tomoseg": {"classes": meta.classes, "class_of_interest": meta.class_of_interest}
            },
        )

    def create_once(self, out: Path, src: SliceSource, meta: VolumeMeta) -> None:
        """Built under a temporary name, then renamed into place; when parts race, the first
        rename wins and the others drop theirs (same content)."""
        if self.ok(out, src):
            return
        tmp = temporary_path(out, directory=True)
        try:
            self.create(tmp, src, meta)  # writes tmp/labels.zarr
            try:
                os.rename(tmp / ZARR_NAME, out / ZARR_NAME)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not self.ok(out, src):
            raise TomosegError(
                f"{out / ZARR_NAME} exists but is not this stack's volume (damaged?); "
                "rerun once without part and with overwrite"
            )

    def ok(self, out: Path, src: SliceSource) -> bool:
        try:
            import zarr

            a = zarr.open_array(str(out / ZARR_NAME / "0"), mode="r")
        except Exception:
            return False
        return tuple(a.shape) == (src.n, *src.shape) and a.dtype == np.uint8

    def update(self, out: Path, meta: VolumeMeta) -> None:
        import zarr

        write_ngff_attrs(
            zarr.open_group(str(out / ZARR_NAME), mode="r+"),
            meta.title,
            meta.voxel,
            meta.unit,
            meta.classes,
        )

    def z_chunk(self, out: Path) -> int:
        import zarr

        return int(zarr.open_array(str(out / ZARR_NAME / "0"), mode="r").chunks[0])

    def open(self, out: Path, ids: Sequence[str]) -> SliceWriter:
        return _ZarrWriter(out, ids)


class _TiffWriter:
    def __init__(self, out: Path, ids: Sequence[str]):
        self.out, self.ids = out, list(ids)

    def write(self, i: int, labels: np.ndarray) -> None:
        atomic_write(
            self.out / TIFF_DIR / f"{self.ids[i]}.tif",
            lambda t: tifffile.imwrite(t, labels, compression="zlib"),
        )


class TiffSink:
    """``labels/<slice id>.tif``: one zlib-compressed uint8 TIFF per slice."""

    fmt = "tiff"
    volume = TIFF_DIR

    def create(self, out: Path, src: SliceSource, meta: VolumeMeta) -> None:
        (out / TIFF_DIR).mkdir(parents=True, exist_ok=True)

    def create_once(self, out: Path, src: SliceSource, meta: VolumeMeta) -> None:
        self.create(out, src, meta)

    def ok(self, out: Path, src: SliceSource) -> bool:
        return (out / TIFF_DIR).is_dir()

    def update(self, out: Path, meta: VolumeMeta) -> None:
        return None  # a TIFF per slice records no voxel size

    def z_chunk(self, out: Path) -> int:
        return 1

    def open(self, out: Path, ids: Sequence[str]) -> SliceWriter:
        return _TiffWriter(out, ids)


#: the output formats of ``segment_stack``, by ``fmt``
SINKS: dict[str, Sink] = {s.fmt: s for s in (OmeZarrSink(), TiffSink())}


def get_sink(fmt: Any) -> Sink:
    """The sink of ``fmt``.

    Raises:
        TomosegError: an unknown format, naming the known ones.
    """
    if fmt not in SINKS:
        raise TomosegError(f"format={fmt!r}: must be {' or '.join(SINKS)}")
    return SINKS[fmt]
