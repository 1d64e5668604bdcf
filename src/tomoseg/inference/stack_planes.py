"""``segment_stack(planes=("xy", "xz", "yz"))``: segment a (nearly) isotropic volume along its
orthogonal planes and average the class probabilities of the passes (the "2.5D orthogonal"
scheme of volume-segmantics, CTSegNet and top entries of synchrotron-CT vessel segmentation
challenges), chunked, in bounded memory and resumable.

Steps, each resumable from markers in the job folder's ``planes/`` (a temporary folder, removed
when the job completes):

1. **input**: the stack's slices, read and checked as every executor reads them
   (:func:`~tomoseg.inference.stack_io.read_slice`: shape, non-finite pixels, the ``intensity``
   rule), copied into ``planes/input.zarr`` (float32 (Z, Y, X), cubic chunks of
   :data:`CHUNK`), so that any plane can be read without reading the whole stack; a marker per
   slice (``planes/input/<i>``) keeps its non-finite count and intensity finding for the label
   slice's own marker;
2. **a pass per plane** (``xy``: the z-slices; ``xz``: a plane per y row; ``yz``: a plane per
   x column): slabs of :data:`CHUNK` planes along the plane's normal are read from the copy,
   segmented with :meth:`~tomoseg.inference.predictor.Predictor.segment_batch` (the class
   probabilities after the run's decision rule; non-finite pixels are class 0 with
   probability 1) and written to ``planes/<plane>.zarr`` (float16 (K, Z, Y, X)), a marker per
   slab (``planes/<plane>/<slab>``);
3. **average**: per z-slab, the sum of the passes' probabilities (float32 of the stored
   float16) and its argmax give the class ids, written slice by slice with the job's sink and
   progress markers, as every executor writes them (:func:`average_planes` is the rule,
   also used in memory by :meth:`~tomoseg.inference.predictor.Predictor.predict_volume`).

Memory: a slab of :data:`CHUNK` planes of the input (float32) and of their probabilities
(float16), about ``(4 + 2 K) * CHUNK * A * B`` bytes for the largest plane (A, B) and K classes:
1.1 GB for 1920 x 2300 slices and two classes (the average step reads blocks of CHUNK^3).
Disk, while the job runs: the input copy (4 bytes per voxel) and ``2 K`` bytes per voxel and
plane.

The passes run in this process with the job's model, whatever ``io_workers`` or ``executor``;
``planes`` is refused with ``part`` or ``backend="ray"``, with a 2.5D run and with
``uncertainty``. Planes other than ``xy`` need (nearly) cubic voxels
(:func:`tomoseg.utils.planes.check_isotropic`).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tomoseg.data.intensity import IntensityFinding
from tomoseg.inference.planes import average_planes, plane_probabilities
from tomoseg.inference.stack_io import (
    marker_text,
    open_slices,
    read_marker,
    read_slice,
    write_slice,
)
from tomoseg.io.volumes import PLANES_DIR
from tomoseg.io.writers import write_text, writing
from tomoseg.utils.planes import NORMAL_AXIS

__all__ = ["CHUNK", "PlanesRun", "average_planes", "plane_probabilities", "remove_planes"]

if TYPE_CHECKING:
    from tomoseg.inference.predictor import Predictor
    from tomoseg.inference.stack_job import StackJob
    from tomoseg.utils.progress import JobProgress

#: the edge of the temporary stores' cubic chunks, and the planes segmented per slab
CHUNK = 32

_INPUT = "input"


def _slabs(size: int) -> list[range]:
    return [range(a, min(a + CHUNK, size)) for a in range(0, size, CHUNK)]


def _index(axis: int, r: range) -> tuple[slice, ...]:
    return (slice(None),) * axis + (slice(r.start, r.stop),)


class PlanesRun:
    """Computes a :class:`~tomoseg.inference.stack_job.StackJob`'s ``todo`` slices from the
    averaged probabilities of ``planes`` (see the module's description)."""

    def __init__(self, planes: Sequence[str]):
        self.planes = tuple(planes)

    def run(self, job: StackJob, predictor: Predictor, progress: JobProgress) -> int:
        """Compute ``job.todo``; ``progress.advance()`` once per label slice written.

        Returns:
            The slices computed by this call.

        Raises:
            TomosegError: as the executors (a slice unreadable or of another shape, a write
                error); Cancelled: between slabs and after each slice.
        """
        if not job.todo:
            return 0
        work = job.out / PLANES_DIR
        self._copy_input(job, predictor, work, progress)
        for plane in self.planes:
            self._pass(job, predictor, work, plane, progress)
        progress.restart_rate()  # the slices come fast now: the passes took the time
        return self._average(job, work, progress)

    # ------------------------------------------------------------------ steps

    def _copy_input(
        self, job: StackJob, predictor: Predictor, work: Path, progress: JobProgress
    ) -> None:
        src = job.src
        shape = (src.n, *src.shape)
        store = _open_store(work / f"{_INPUT}.zarr", shape, "float32")
        marks = work / _INPUT
        marks.mkdir(exist_ok=True)
        done = _marked(marks)
        with open_slices(src, predictor.context) as read:
            for r in _slabs(src.n):
                if all(i in done for i in r):
                    continue
                progress.check()
                block = np.empty((len(r), *src.shape), np.float32)
                notes: list[tuple[int, IntensityFinding | None]] = []
                for i in r:
                    img, bad, found = read_slice(read, src, i, job.nonfinite, job.intensity)
                    job.tally.add(found)  # the stack's first such slice: one warning
                    block[i - r.start] = img
                    notes.append((bad, found))
                with writing(f"slices {src.ids[r.start]}-{src.ids[r[-1]]}", job.out):
                    store[r.start : r.stop] = block
                    for i, (bad, found) in zip(r, notes, strict=True):
                        write_text(marks / f"{i:06d}", marker_text(bad, found) or "0\n")
        progress.message(f"input copied for the planes {','.join(self.planes)}")

    def _pass(
        self, job: StackJob, predictor: Predictor, work: Path, plane: str, progress: JobProgress
    ) -> None:
        src = job.src
        shape = (src.n, *src.shape)
        k = len(predictor.classes)
        store = _open_store(work / f"{plane}.zarr", (k, *shape), "float16")
        inp = _open_store(work / f"{_INPUT}.zarr", shape, "float32")
        marks = work / plane
        marks.mkdir(exist_ok=True)
        done = _marked(marks)
        axis = NORMAL_AXIS[plane]
        slabs = _slabs(shape[axis])
        for s, r in enumerate(slabs):
            if s in done:
                continue
            progress.check()
            block = np.asarray(inp[_index(axis, r)])
            prob = plane_probabilities(predictor, block, plane, job.batch)
            with writing(f"plane {plane} slab {s}", job.out):
                store[(slice(None), *_index(axis, r))] = prob
                (marks / f"{s:06d}").touch()
            if (s + 1) % max(1, len(slabs) // 10) == 0 or s + 1 == len(slabs):  # ~10 lines
                progress.message(f"plane {plane}: {s + 1}/{len(slabs)} slabs")

    def _average(self, job: StackJob, work: Path, progress: JobProgress) -> int:
        src = job.src
        stores = [_open_existing(work / f"{p}.zarr") for p in self.planes]
        writer = job.sink.open(job.out, src.ids)
        todo = set(job.todo)
        computed = 0
        for r in _slabs(src.n):
            mine = [i for i in r if i in todo]
            if not mine:
                continue
            progress.check()
            labels = np.empty((len(r), *src.shape), np.uint8)
            for y in _slabs(src.shape[0]):  # a block of rows at a time: bounded memory
                part = (slice(None), slice(r.start, r.stop), slice(y.start, y.stop))
                labels[:, y.start : y.stop] = average_planes([np.asarray(s[part]) for s in stores])
            for i in mine:
                bad, found = _input_note(work / _INPUT / f"{i:06d}")
                write_slice(writer, i, labels[i - r.start], bad, found)
                computed += 1
                progress.advance()
        return computed


def remove_planes(out: Path) -> None:
    """Remove the temporary ``planes/`` folder of a completed job."""
    shutil.rmtree(out / PLANES_DIR, ignore_errors=True)


def _marked(folder: Path) -> set[int]:
    return {int(f.name) for f in folder.iterdir() if f.name.isdigit()}


def _input_note(path: Path) -> tuple[int, IntensityFinding | None]:
    """A slice's non-finite count and intensity finding, as the input step recorded them."""
    bad, found = read_marker(path)
    if found is None:
        return bad, None
    return bad, IntensityFinding("", found[0], (), found[1], 0.0, 0.0)


def _open_store(path: Path, shape: tuple[int, ...], dtype: str):  # noqa: ANN202
    """A temporary chunked array (cubic chunks of :data:`CHUNK` per spatial axis), created
    when absent or of another shape (a resume keeps a fitting one)."""
    import zarr

    try:
        a = zarr.open_array(str(path), mode="r+")
        if tuple(a.shape) == tuple(shape) and a.dtype == np.dtype(dtype):
            return a
    except Exception:  # absent or unreadable: created anew
        pass
    chunks = (*(1 for _ in shape[:-3]), *(min(CHUNK, n) for n in shape[-3:]))
    return zarr.create_array(
        str(path), shape=shape, chunks=chunks, dtype=dtype, overwrite=True, zarr_format=2
    )


def _open_existing(path: Path):  # noqa: ANN202
    import zarr

    return zarr.open_array(str(path), mode="r")
