"""Segment a whole stack of slices into a 3D label volume, resumably, with bounded memory.

``segment_stack`` reads slices in a reader thread, runs the model (``infer.segment``, the same
inference path as ``tomoseg predict``) in the calling thread and writes the class ids in a writer
thread. The threads talk through bounded queues, so memory stays at a few slices whatever the
stack length, and reading/writing overlap with the network.

Inputs (shape (Z, Y, X)):

* a folder of 2D slices, in natural sort order of their file names (``z2`` before ``z10``);
* a multi-page TIFF, read page by page (never the whole stack at once);
* a Zarr array, or a Zarr / OME-Zarr group (its first multiscale level, else its first array).

Outputs (in the folder ``out``):

* ``stack.json``: the run (path and weights hash), the input (path, slice ids, shape), the
  format and voxel size; a second call with the same run and input resumes, with another one it
  is refused unless ``overwrite``;
* ``labels.zarr`` (default): a Zarr v2 group in OME-NGFF 0.4 layout (``multiscales`` with axes
  z, y, x, their unit and the voxel size as a scale transform, plus ``image-label``) holding the
  uint8 class ids at path ``0``, chunked (1, <=1024, <=1024); napari (napari-ome-zarr) and Fiji
  (N5 / OME-Zarr readers) open it; or ``labels/<slice id>.tif`` (``fmt="tiff"``);
* ``progress/<index>``: an empty marker file per finished slice, created only after the slice's
  data is written. After ``kill -9`` the same call computes the slices without a marker, and the
  result equals an uninterrupted run (each slice owns its own chunks, so a half-written slice is
  simply rewritten). Markers protect against a killed process, not against a power cut.

"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import segment_batch
from tomoseg.inference.runtimes import resolve_runtime
from tomoseg.io.ome_zarr import write_ngff_attrs
from tomoseg.io.volumes import (
    STACK_FILE,
    TIFF_DIR,
    ZARR_NAME,
    StackSource,
    open_source,
    parse_voxel_size,
    read_stack_info,
)
from tomoseg.io.writers import atomic_write, prepare_output_dir, write_json
from tomoseg.runtime.checkpoint import LoadedRun, load_run
from tomoseg.runtime.device import resolve_device

PROGRESS_DIR = "progress"
QUEUE_SIZE = 4
MAX_CHUNK = 1024
_DONE = object()


def _chunks(shape: tuple[int, int]) -> tuple[int, int, int]:
    return 1, min(shape[0], MAX_CHUNK), min(shape[1], MAX_CHUNK)


def _disk_full(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Sink:
    """Writes one slice of class ids; only the writer thread calls ``write``."""

    def __init__(self, out: Path, fmt: str, ids: list[str]):
        self.out, self.fmt, self.ids = out, fmt, ids
        self.array = None
        if fmt == "zarr":
            import zarr

            self.array = zarr.open_array(str(out / ZARR_NAME / "0"), mode="r+")

    def write(self, i: int, labels: np.ndarray) -> None:
        if self.fmt == "zarr":
            self.array[i] = labels  # type: ignore[index]
        else:
            atomic_write(
                self.out / TIFF_DIR / f"{self.ids[i]}.tif",
                lambda t: tifffile.imwrite(t, labels, compression="zlib"),
            )


def _create_volume(
    out: Path, fmt: str, src: StackSource, voxel: Sequence[float], unit: str | None, run: LoadedRun
) -> None:
    if fmt == "tiff":
        (out / TIFF_DIR).mkdir(parents=True, exist_ok=True)
        return
    import zarr

    g = zarr.open_group(str(out / ZARR_NAME), mode="w", zarr_format=2)
    g.create_array(
        "0",
        shape=(src.n, *src.shape),
        chunks=_chunks(src.shape),
        dtype="uint8",
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    write_ngff_attrs(
        g,
        f"{src.path.name} segmented",
        voxel,
        unit,
        run.classes,
        {"tomoseg": {"classes": run.classes, "class_of_interest": run.class_of_interest}},
    )


def _volume_ok(out: Path, fmt: str, src: StackSource) -> bool:
    if fmt == "tiff":
        return (out / TIFF_DIR).is_dir()
    try:
        import zarr

        a = zarr.open_array(str(out / ZARR_NAME / "0"), mode="r")
    except Exception:
        return False
    return tuple(a.shape) == (src.n, *src.shape) and a.dtype == np.uint8


def _remove_outputs(out: Path) -> None:
    for name in (ZARR_NAME, TIFF_DIR, PROGRESS_DIR):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
    (out / STACK_FILE).unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mismatch(old: dict, new: dict) -> str | None:
    """Why an existing stack.json belongs to another job (None if it is the same job)."""
    if old.get("run", {}).get("sha256") != new["run"]["sha256"]:
        return f"another model ({old.get('run', {}).get('path')})"
    o, n = old.get("input", {}), new["input"]
    if o.get("path") != n["path"] or o.get("kind") != n["kind"]:
        return f"another input ({o.get('path')})"
    if o.get("shape") != n["shape"] or o.get("ids") != n["ids"]:
        return f"another version of the input ({o.get('slices')} slices of shape {o.get('shape')})"
    if old.get("format") != new["format"]:
        return f"another format ({old.get('format')})"
    return None


# ----------------------------------------------------------------------------- the pipeline


def _put(q: queue.Queue, item: Any, alive: Callable[[], bool]) -> bool:
    """Put with a timeout loop so a dead consumer/producer never blocks us forever."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if not alive():
                return False


def _segment_many(run: LoadedRun, images: list[np.ndarray]) -> list[np.ndarray]:
    """Class ids of several slices of one shape, in one :func:`tomoseg.infer.segment_batch`."""
    return list(segment_batch(run, images, probabilities=False)[0])


def segment_stack(
    run_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str = "zarr",
    voxel_size: Sequence[float] | str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    batch_slices: int = 1,
    progress: Callable[[int, int], None] | None = None,
    unit: str | None = None,
    allow_gaps: bool = False,
    which: str = "best",
    runtime: str = "auto",
) -> dict[str, Any]:
    """Segment every slice of a stack into a 3D class-id volume (resumable).

    Args:
        run_dir: trained run folder (or ``.safetensors`` file).
        input: folder of 2D slices, multi-page TIFF, or Zarr array / (OME-)Zarr group, (Z, Y, X).
        out: output folder (``stack.json``, ``labels.zarr`` or ``labels/``, ``progress/``).
        fmt: ``zarr`` (OME-NGFF 0.4 label volume) or ``tiff`` (one TIFF per slice).
        voxel_size: (z, y, x) voxel size; default: the input's metadata, else 1, 1, 1.
        device: ``auto``, ``cpu`` or ``gpu``.
        overwrite: discard an earlier output in ``out`` (otherwise the same job resumes and
            another one is refused).
        batch_slices: slices per forward pass (1 = ``infer.segment`` per slice).
        progress: called as ``progress(finished, total)`` in the calling thread as slices are
            finished (written and recorded).
        unit: unit of the voxel size (default: the input's, else ``micrometer``).
        allow_gaps: accept numbered slice files with holes in the numbering.
        which: ``best`` or ``last`` weights.
        runtime: how the network runs: ``auto``, ``torch``, ``openvino`` or ``onnxruntime``
            (:mod:`tomoseg.inference.runtimes`).

    Returns:
        ``out``, ``volume``, ``format``, ``slices``, ``computed`` (this call), ``skipped`` (finished
        earlier), ``seconds``, ``slices_per_second``, ``voxel_size``, ``unit``.

    Raises:
        TomosegError: bad input, a slice of another shape or unreadable (named; the slices before
            it are finished), an output of another job, a full disk.
    """
    t0 = time.perf_counter()
    if fmt not in ("zarr", "tiff"):
        raise TomosegError(f"format must be zarr or tiff, got {fmt!r}")
    if int(batch_slices) < 1:
        raise TomosegError(f"batch_slices must be >= 1, got {batch_slices}")
    voxel = parse_voxel_size(voxel_size)
    src = open_source(input, allow_gaps)
    run = load_run(Path(run_dir), which, device=resolve_device(device))
    run.runtime = resolve_runtime(runtime, next(run.model.parameters()).device)
    rpath = Path(run_dir)
    wfile = rpath if rpath.suffix == ".safetensors" else rpath / f"{which}.safetensors"
    voxel = voxel or src.voxel_size or (1.0, 1.0, 1.0)
    unit = unit or (src.unit if voxel_size is None else None) or "micrometer"
    out = Path(out)
    info = {
        "tomoseg": "segment-stack",
        "run": {"path": str(rpath.resolve()), "weights": wfile.name, "sha256": _sha256(wfile)},
        "classes": run.classes,
        "class_of_interest": run.class_of_interest,
        "input": src.describe(),
        "format": fmt,
        "volume": ZARR_NAME if fmt == "zarr" else TIFF_DIR,
        "voxel_size": list(voxel),
        "unit": unit,
        "complete": False,
    }
    old = read_stack_info(out) if out.is_dir() else None
    resume = False
    if old is not None:
        why = _mismatch(old, info)
        if why is not None and not overwrite:
            raise TomosegError(
                f"output {out} holds a segmentation by {why}; use overwrite to replace it"
            )
        if overwrite:
            _remove_outputs(out)
        else:
            resume = _volume_ok(out, fmt, src)
    else:
        prepare_output_dir(out, overwrite, [ZARR_NAME, TIFF_DIR, PROGRESS_DIR])
        _remove_outputs(out)
    marks = out / PROGRESS_DIR
    if not resume:
        if marks.is_dir():
            shutil.rmtree(marks)
        write_json(out / STACK_FILE, info)
        _create_volume(out, fmt, src, voxel, unit, run)
    else:
        write_json(out / STACK_FILE, info)
        if fmt == "zarr":  # a new voxel size or unit only changes metadata
            import zarr

            write_ngff_attrs(
                zarr.open_group(str(out / ZARR_NAME), mode="r+"),
                f"{src.path.name} segmented",
                voxel,
                unit,
                run.classes,
            )
    marks.mkdir(parents=True, exist_ok=True)
    done = {int(f.name) for f in marks.iterdir() if f.name.isdigit()}
    todo = [i for i in range(src.n) if i not in done]
    finished = len(done & set(range(src.n)))
    computed = _run_pipeline(run, src, out, fmt, todo, int(batch_slices), progress, finished)
    seconds = time.perf_counter() - t0
    summary = {
        "out": str(out),
        "volume": str(out / info["volume"]),
        "format": fmt,
        "slices": src.n,
        "computed": computed,
        "skipped": src.n - len(todo),
        "seconds": round(seconds, 3),
        "slices_per_second": round(computed / seconds, 4) if seconds > 0 else None,
        "voxel_size": list(voxel),
        "unit": unit,
    }
    write_json(out / STACK_FILE, {**info, "complete": True, "summary": summary})
    return summary


def _run_pipeline(
    run: LoadedRun,
    src: StackSource,
    out: Path,
    fmt: str,
    todo: list[int],
    batch: int,
    progress: Callable[[int, int], None] | None,
    finished: int,
) -> int:
    """Reader thread -> model (this thread) -> writer thread; returns the slices computed."""
    if not todo:
        return 0
    size = max(QUEUE_SIZE, batch)
    q_in: queue.Queue = queue.Queue(size)
    q_out: queue.Queue = queue.Queue(size)
    done_q: queue.Queue = queue.Queue()
    stop = threading.Event()
    writer_errors: list[BaseException] = []
    sink = _Sink(out, fmt, src.ids)
    marks = out / PROGRESS_DIR

    def reader() -> None:
        try:
            with src.reader() as read:
                for i in todo:
                    if stop.is_set():
                        return
                    img = read(i)
                    if img.shape != src.shape:
                        raise TomosegError(
                            f"slice {src.ids[i]} has shape {img.shape} but the stack's slices "
                            f"have {src.shape} (as {src.ids[0]})"
                        )
                    if not _put(q_in, (i, img), lambda: not stop.is_set()):
                        return
        except BaseException as exc:  # handed to the main thread, raised there
            _put(q_in, exc, lambda: not stop.is_set())
            return
        _put(q_in, _DONE, lambda: not stop.is_set())

    def writer() -> None:
        while True:
            item = q_out.get()
            if item is _DONE:
                return
            i, labels = item
            try:
                sink.write(i, labels)
                (marks / f"{i:06d}").touch()
            except BaseException as exc:
                if _disk_full(exc):
                    exc = TomosegError(
                        f"disk full while writing slice {src.ids[i]}; free space and rerun to resume"
                    )
                elif isinstance(exc, OSError):
                    exc = TomosegError(
                        f"cannot write slice {src.ids[i]} in {out}: {exc.strerror or exc}"
                    )
                writer_errors.append(exc)
                stop.set()
                return
            done_q.put(i)

    t_read = threading.Thread(target=reader, name="tomoseg-reader", daemon=True)
    t_write = threading.Thread(target=writer, name="tomoseg-writer", daemon=True)
    t_read.start()
    t_write.start()
    computed = 0
    total = src.n

    def report() -> None:
        nonlocal finished
        while True:
            try:
                done_q.get_nowait()
            except queue.Empty:
                return
            finished += 1
            if progress is not None:
                progress(finished, total)

    try:
        ended = False
        while not ended and not writer_errors:
            items: list[tuple[int, np.ndarray]] = []
            while len(items) < batch:
                try:
                    item = q_in.get(timeout=0.1)
                except queue.Empty:
                    if writer_errors:
                        break
                    continue
                if item is _DONE:
                    ended = True
                    break
                if isinstance(item, BaseException):
                    if items:  # finish the good slices read before the bad one
                        for (i, _), lab in zip(
                            items, _segment_many(run, [im for _, im in items]), strict=True
                        ):
                            _put(q_out, (i, lab), t_write.is_alive)
                    raise item
                items.append(item)
            if items and not writer_errors:
                labels = _segment_many(run, [im for _, im in items])
                for (i, _), lab in zip(items, labels, strict=True):
                    _put(q_out, (i, lab), t_write.is_alive)
                computed += len(items)
            report()
    finally:
        stop.set()
        _put(q_out, _DONE, t_write.is_alive)
        t_write.join()
        t_read.join()
    if writer_errors:
        raise writer_errors[0]
    report()
    return computed
