"""Segment a whole stack of slices into a 3D label volume, resumably, with bounded memory.

``segment_stack`` reads slices in a reader thread, runs the model (``infer.segment``, the same
inference path as ``tomoseg predict``) in the calling thread and writes the class ids in a writer
thread. The threads talk through bounded queues, so memory stays at a few slices whatever the
stack length, and reading/writing overlap with the network.

Inputs (shape (Z, Y, X)):

* a folder of 2D slices, in natural sort order of their file names (``z2`` before ``z10``);
* a multi-page TIFF, read page by page (never the whole stack at once);
* a Zarr array, or a Zarr / OME-Zarr group (its first multiscale level, else its first array).

Non-finite pixels (NaN, +-inf: outside the reconstructed field of view) are labelled background
(class 0) by the one rule of :func:`tomoseg.inference.predictor.segment_batch`; the summary counts
them per slice (``nonfinite``). ``nonfinite="error"`` refuses the first such slice instead, naming
it and its count (the slices before it stay finished).

Outputs (in the folder ``out``):

* ``stack.json``: the run (path and weights hash), the input (path, slice ids, shape), the
  format and voxel size; a second call with the same run and input resumes, with another one it
  is refused unless ``overwrite``;
* ``labels.zarr`` (default): a Zarr v2 group in OME-NGFF 0.4 layout (``multiscales`` with axes
  z, y, x, their unit and the voxel size as a scale transform, plus ``image-label``) holding the
  uint8 class ids at path ``0``, chunked (1, <=1024, <=1024); napari (napari-ome-zarr) and Fiji
  (N5 / OME-Zarr readers) open it; or ``labels/<slice id>.tif`` (``fmt="tiff"``);
* ``progress/<index>``: a marker file per finished slice, created only after the slice's
  data is written (empty, or holding the slice's count of non-finite pixels when it has some). After ``kill -9`` the same call computes the slices without a marker, and the
  result equals an uninterrupted run (each slice owns its own chunks, so a half-written slice is
  simply rewritten). Markers protect against a killed process, not against a power cut.

"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import queue
import shutil
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import InferenceSettings, Predictor, as_predictor
from tomoseg.inference.stack_io import (
    PROGRESS_DIR,
    IOPool,
    _Sink,
    auto_io_workers,
    open_slices,
    read_slice,
    worker_error,
    write_slice,
)
from tomoseg.io.jobs import job_difference
from tomoseg.io.ome_zarr import create_label_array, write_ngff_attrs
from tomoseg.io.volumes import (
    STACK_FILE,
    TIFF_DIR,
    ZARR_NAME,
    StackSource,
    open_source,
    parse_voxel_size,
    read_stack_info,
)
from tomoseg.io.writers import prepare_output_dir, write_json

QUEUE_SIZE = 4
MAX_CHUNK = 1024
_DONE = object()


def _chunks(shape: tuple[int, int]) -> tuple[int, int, int]:
    return 1, min(shape[0], MAX_CHUNK), min(shape[1], MAX_CHUNK)


def _create_volume(
    out: Path, fmt: str, src: StackSource, voxel: Sequence[float], unit: str | None, run: Predictor
) -> None:
    if fmt == "tiff":
        (out / TIFF_DIR).mkdir(parents=True, exist_ok=True)
        return
    create_label_array(
        out / ZARR_NAME,
        (src.n, *src.shape),
        "uint8",
        _chunks(src.shape),
        voxel,
        unit,
        name=f"{src.path.name} segmented",
        classes=run.classes,
        extra={"tomoseg": {"classes": run.classes, "class_of_interest": run.class_of_interest}},
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


def _identity(rec: dict) -> dict[str, Any]:
    """What makes a ``stack.json`` the same job: the weights, the input and how it is read, the
    input's version (shape, slice ids) and the output format."""
    run, inp = rec.get("run") or {}, rec.get("input") or {}
    return {
        "model": run.get("sha256"),
        "input": {k: inp.get(k) for k in ("path", "kind", "channel", "time")},
        "input version": {"shape": inp.get("shape"), "ids": inp.get("ids")},
        "format": rec.get("format"),
        # TTA and the tuned decision (absent from a stack.json written before they existed)
        "inference": rec.get("inference", _NO_EXTRAS),
    }


def _mismatch(old: dict, new: dict) -> str | None:
    """Why an existing stack.json belongs to another job (None if it is the same job), by the one
    "same job" rule of :mod:`tomoseg.io.jobs`."""
    diff = job_difference(_identity(old), _identity(new))
    if diff is None:
        return None
    key, was, _ = diff
    shown = f"{len(was)} slices" if isinstance(was, list) and len(was) > 4 else repr(was)
    return f"another {key} ({shown} there)"


_NO_EXTRAS: dict[str, Any] = {"tta": ["identity"], "decision": None}


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


def _segment_many(run: Predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """Class ids of several slices of one shape, in one
    :meth:`~tomoseg.inference.predictor.Predictor.segment_batch` (non-finite pixels were
    counted, or refused, by the reader; here they become background)."""
    return list(run.segment_batch(images)[0])


def _nonfinite_summary(marks: Path, ids: list[str]) -> dict[str, Any]:
    """Non-finite pixels per slice, from the progress markers (a count in the file, else 0)."""
    per: dict[str, int] = {}
    for f in sorted(marks.iterdir()) if marks.is_dir() else []:
        if f.name.isdigit() and int(f.name) < len(ids) and f.stat().st_size:
            try:
                n = int(f.read_text().strip() or 0)
            except (OSError, ValueError):
                continue
            if n:
                per[ids[int(f.name)]] = n
    return {
        "rule": "background (class 0): outside the field of view",
        "pixels": sum(per.values()),
        "slices": len(per),
        "per_slice": per,
    }


def segment_stack(
    run_dir: Predictor | str | os.PathLike[str],
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str = "zarr",
    voxel_size: Sequence[float] | str | None = None,
    overwrite: bool = False,
    batch_slices: int = 1,
    progress: Callable[[int, int], None] | None = None,
    unit: str | None = None,
    allow_gaps: bool = False,
    *,
    settings: InferenceSettings | None = None,
    channel: int | None = None,
    time: int | None = None,
    part: str | tuple[int, int] | None = None,
    verify: bool = False,
    runner: Runner | None = None,
    io_workers: int | None = None,
) -> dict[str, Any]:
    """Segment every slice of a stack into a 3D class-id volume (resumable).

    Args:
        run_dir: a :class:`~tomoseg.inference.predictor.Predictor`, or a trained run folder
            (or ``.safetensors`` file) segmented with ``settings``.
        input: folder of 2D slices, multi-page TIFF, or Zarr array / (OME-)Zarr group, (Z, Y, X).
        out: output folder (``stack.json``, ``labels.zarr`` or ``labels/``, ``progress/``).
        fmt: ``zarr`` (OME-NGFF 0.4 label volume) or ``tiff`` (one TIFF per slice).
        voxel_size: (z, y, x) voxel size; default: the input's metadata, else 1, 1, 1.
        overwrite: discard an earlier output in ``out`` (otherwise the same job resumes and
            another one is refused).
        batch_slices: slices per forward pass (1 = ``infer.segment`` per slice).
        progress: called as ``progress(finished, total)`` in the calling thread as slices are
            finished (written and recorded).
        unit: unit of the voxel size (default: the input's, else ``micrometer``).
        allow_gaps: accept numbered slice files with holes in the numbering.
        settings: how the run segments (:class:`~tomoseg.inference.predictor.InferenceSettings`:
            device, weights, runtime, TTA, post-processing, tiles); its ``nonfinite`` rule:
            NaN / infinite pixels are labelled ``background`` (class 0; the network sees the
            normalisation's lower bound there) and counted, or refused (``error``). The TTA
            and the decision applied are recorded in ``stack.json`` (a resume with other
            settings is refused).
        channel: channel index of an input with a C axis (ImageJ hyperstack, OME-TIFF,
            OME-Zarr); required when it has more than one channel.
        time: time-point index of an input with a T axis; required when it has more than one.
        part: ``"I/N"`` or ``(I, N)``: compute only part I of N (1-based), a contiguous z range
            aligned to the volume's z-chunks, into an output shared with the other parts
            (created race-free by whichever part comes first; see :func:`part_range`).
        verify: compute nothing; check that every slice is finished (marks the output
            complete) or raise naming the missing slices.
        runner: computes and writes the slices ``todo`` with their markers (default: the
            reader -> model -> writer threads here; :mod:`tomoseg.inference.ray_backend`
            passes a Ray Data pipeline).
        io_workers: processes that read + normalise and write slices (shared memory between
            them and the model), so that a GPU is fed without the GIL; 0 = the reader and
            writer threads; None = automatic (:func:`~tomoseg.inference.stack_io.auto_io_workers`:
            0 when the network runs on the CPU or on <= 2 cores, else ``min(4, cores - 2)``).
            The labels are the same byte for byte. Ignored with a ``runner``.

    Returns:
        ``out``, ``volume``, ``format``, ``slices``, ``computed`` (this call), ``skipped`` (finished
        earlier), ``seconds``, ``slices_per_second``, ``voxel_size``, ``unit``, ``nonfinite``
        (``pixels`` and ``slices`` in all, ``per_slice``: slice id -> count of non-finite pixels,
        slices without any left out).

    Raises:
        TomosegError: bad input, ``io_workers`` not an integer >= 0, a slice of another shape or
            unreadable (named; the slices before it are finished), non-finite pixels with ``nonfinite="error"`` (named likewise), a
            hyperstack with C or T > 1 and no ``channel`` / ``time``, an output of another job, a
            full disk.
    """
    t0 = perf_counter()
    if fmt not in ("zarr", "tiff"):
        raise TomosegError(f"format must be zarr or tiff, got {fmt!r}")
    if int(batch_slices) < 1:
        raise TomosegError(f"batch_slices={batch_slices!r}: must be >= 1")
    if io_workers is not None and (
        isinstance(io_workers, bool)
        or not isinstance(io_workers, int | np.integer)
        or io_workers < 0
    ):
        raise TomosegError(
            f"io_workers={io_workers!r}: must be an integer >= 0 (0: threads; default: automatic)"
        )
    voxel = parse_voxel_size(voxel_size)
    src = open_source(input, allow_gaps, channel=channel, time=time)
    run = as_predictor(run_dir, settings)
    nonfinite = run.settings.nonfinite
    if runner is None:
        on_gpu = run.device.type != "cpu"
        workers = auto_io_workers(on_gpu) if io_workers is None else io_workers
        runner = functools.partial(_run_pipeline, io_workers=workers) if workers else _run_pipeline
    rpath, wfile = run.run.path, run.run.weights_file  # the weights load_run resolved
    assert wfile is not None
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
        "inference": {k: run.record()[k] for k in ("tta", "decision")},
        "complete": False,
    }
    if part is not None or verify:
        return _segment_shared(
            run,
            src,
            out,
            info,
            part,
            verify,
            overwrite,
            int(batch_slices),
            progress,
            t0,
            runner,
            nonfinite,
        )
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
    computed = (runner or _run_pipeline)(
        run, src, out, fmt, todo, int(batch_slices), progress, finished, nonfinite
    )
    seconds = perf_counter() - t0
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
        "nonfinite": _nonfinite_summary(marks, src.ids),
    }
    write_json(out / STACK_FILE, {**info, "complete": True, "summary": summary})
    return summary


#: ``runner(run, src, out, fmt, todo, batch_slices, progress, finished, nonfinite) -> slices
#: computed``
Runner = Callable[
    [
        Predictor,
        StackSource,
        Path,
        str,
        list[int],
        int,
        Callable[[int, int], None] | None,
        int,
        str,
    ],
    int,
]


def _run_pipeline(
    run: Predictor,
    src: StackSource,
    out: Path,
    fmt: str,
    todo: list[int],
    batch: int,
    progress: Callable[[int, int], None] | None,
    finished: int,
    nonfinite: str = "background",
    io_workers: int = 0,
) -> int:
    """Read -> model (this thread) -> write, overlapped: in a reader and a writer thread
    (``io_workers=0``), else in ``io_workers`` processes; returns the slices computed."""
    if not todo:
        return 0
    if io_workers:
        return _run_processes(
            run, src, out, fmt, todo, batch, progress, finished, nonfinite, io_workers
        )
    size = max(QUEUE_SIZE, batch)
    q_in: queue.Queue = queue.Queue(size)
    q_out: queue.Queue = queue.Queue(size)
    done_q: queue.Queue = queue.Queue()
    stop = threading.Event()
    writer_errors: list[BaseException] = []
    sink = _Sink(out, fmt, src.ids)

    def reader() -> None:
        try:
            with open_slices(src, run.context) as read:
                for i in todo:
                    if stop.is_set():
                        return
                    img, bad = read_slice(read, src, i, nonfinite)
                    if not _put(q_in, (i, img, bad), lambda: not stop.is_set()):
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
            i, labels, bad = item
            try:
                write_slice(sink, i, labels, bad)
            except BaseException as exc:
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
            items: list[tuple[int, np.ndarray, int]] = []
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
                        for (i, _, bad), lab in zip(
                            items, _segment_many(run, [im for _, im, _ in items]), strict=True
                        ):
                            _put(q_out, (i, lab, bad), t_write.is_alive)
                    raise item
                items.append(item)
            if items and not writer_errors:
                labels = _segment_many(run, [im for _, im, _ in items])
                for (i, _, bad), lab in zip(items, labels, strict=True):
                    _put(q_out, (i, lab, bad), t_write.is_alive)
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


def _run_processes(
    run: Predictor,
    src: StackSource,
    out: Path,
    fmt: str,
    todo: list[int],
    batch: int,
    progress: Callable[[int, int], None] | None,
    finished: int,
    nonfinite: str,
    workers: int,
) -> int:
    """``_run_pipeline`` with ``workers`` I/O processes (:class:`~.stack_io.IOPool`).

    Slices are read and normalised ahead, at most ``n_in`` at a time (the shared-memory slots),
    and handed to the model in ``todo`` order; their class ids go to free output slots and are
    written (then marked) by whichever worker is free, in any order. A slice that fails to read
    stops the run after the slices before it are written; a failed write stops it after the
    writes already submitted have ended.
    """
    total = src.n
    ahead = max(workers, 2)
    n_in, n_out = batch + ahead, batch + ahead
    computed = 0
    with IOPool(
        src, out, fmt, run.run.normalization, nonfinite, workers, n_in, n_out, run.context
    ) as pool:
        reads: deque[tuple[int, int, Future]] = deque()
        writes: dict[Future, tuple[int, int]] = {}  # future -> (slice, output slot)
        free_in, free_out = list(range(n_in)), list(range(n_out))
        nxt = 0

        def harvest(block: bool) -> None:
            """Take back the slots of ended writes, report them; raise a writer's error."""
            nonlocal finished
            if not writes:
                return
            ended, _ = wait(list(writes), None if block else 0, FIRST_COMPLETED)
            for f in ended:
                i, slot = writes.pop(f)
                free_out.append(slot)
                exc = f.exception()
                if exc is not None:
                    raise worker_error(exc, f"writing slice {src.ids[i]}")
                finished += 1
                if progress is not None:
                    progress(finished, total)

        try:
            while nxt < len(todo) or reads:
                while free_in and nxt < len(todo):
                    slot = free_in.pop()
                    reads.append((todo[nxt], slot, pool.read(todo[nxt], slot)))
                    nxt += 1
                items: list[tuple[int, int, int, np.ndarray | None]] = []
                error: BaseException | None = None
                while reads and len(items) < batch:
                    i, slot, f = reads[0]
                    while not f.done():  # report finished writes while the read runs
                        wait([f, *writes], None, FIRST_COMPLETED)
                        harvest(False)
                    reads.popleft()
                    exc = f.exception()
                    if exc is not None:  # the slices before it are still computed and written
                        free_in.append(slot)
                        error = worker_error(exc, f"reading slice {src.ids[i]}")
                        break
                    bad, packed = f.result()
                    items.append((i, slot, bad, packed))
                if items:
                    labels = _segment_many(run, [pool.image(slot) for _, slot, _, _ in items])
                    for (i, slot, bad, packed), lab in zip(items, labels, strict=True):
                        free_in.append(slot)
                        if packed is not None:  # outside the field of view: background
                            lab[pool.unpack(packed)] = 0
                        while not free_out:
                            harvest(True)
                        o = free_out.pop()
                        writes[pool.write(i, o, lab, bad)] = (i, o)
                    computed += len(items)
                if error is not None:
                    raise error
                harvest(False)
            while writes:
                harvest(True)
        finally:
            for _, _, f in reads:
                f.cancel()
            wait(list(writes))  # the slices already computed are written (errors: raised above)
    return computed


# ----------------------------------------------------------------------------- parts (job arrays)


def parse_part(value: str | tuple[int, int]) -> tuple[int, int]:
    """``"I/N"`` (or ``(I, N)``) as ``(I, N)`` with ``1 <= I <= N``.

    Raises:
        TomosegError: anything else (``0/2``, ``3/2``, ``a/b``).
    """
    bits = value.strip().split("/") if isinstance(value, str) else list(value)
    try:
        i, n = (int(b) for b in bits) if len(bits) == 2 else (0, 0)
    except (TypeError, ValueError):
        i = n = 0
    if not 1 <= i <= n:
        raise TomosegError(
            f"--part must be I/N with 1 <= I <= N (e.g. 1/4 for the first of four), got {value!r}"
        )
    return i, n


def part_range(slices: int, i: int, n: int, z_chunk: int = 1) -> range:
    """The slices of part ``i`` of ``n``: whole z-chunks, contiguous, as even as chunks allow.

    Parts never share a chunk, so they never write the same file; the ``n`` ranges cover
    ``range(slices)`` exactly (parts beyond the number of chunks are empty).
    """
    chunks = -(-slices // max(z_chunk, 1))
    a, b = (i - 1) * chunks // n, i * chunks // n
    return range(min(a * z_chunk, slices), min(b * z_chunk, slices))


def _z_chunk(out: Path, fmt: str) -> int:
    if fmt != "zarr":
        return 1
    import zarr

    return int(zarr.open_array(str(out / ZARR_NAME / "0"), mode="r").chunks[0])


def _publish_once(path: Path, obj: Any) -> bool:
    """Write JSON to ``path`` only if it does not exist, atomically (a hard link of a finished
    temporary file: readers never see half a file). Returns whether this call wrote it."""
    tmp = write_json(path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new"), obj)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _create_volume_once(
    out: Path, fmt: str, src: StackSource, voxel: Sequence[float], unit: str | None, run: Predictor
) -> None:
    """Create the label volume unless it exists: built under a temporary name, then renamed into
    place; when parts race, the first rename wins and the others drop theirs (same content)."""
    if fmt == "tiff":
        (out / TIFF_DIR).mkdir(parents=True, exist_ok=True)
        return
    if _volume_ok(out, fmt, src):
        return
    tmp = out / f".{ZARR_NAME}.{os.getpid()}.{threading.get_ident()}.new"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _create_volume(tmp, fmt, src, voxel, unit, run)  # writes tmp/labels.zarr
        try:
            os.rename(tmp / ZARR_NAME, out / ZARR_NAME)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _volume_ok(out, fmt, src):
        raise TomosegError(
            f"{out / ZARR_NAME} exists but is not this stack's volume (damaged?); "
            "rerun once without --part and with --overwrite"
        )


def _ranges(idx: list[int], ids: list[str]) -> str:
    """``z0003-z0005 (3-5), z0010 (10)``: runs of consecutive indices, at most 10 of them."""
    runs: list[tuple[int, int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    text = [f"{ids[a]} ({a})" if a == b else f"{ids[a]}-{ids[b]} ({a}-{b})" for a, b in runs[:10]]
    return ", ".join(text) + (f" and {len(runs) - 10} more runs" if len(runs) > 10 else "")


def missing_slices(out: str | os.PathLike[str], slices: int) -> list[int]:
    """Indices in ``range(slices)`` without a progress marker in ``out``."""
    marks = Path(out) / PROGRESS_DIR
    done = {int(f.name) for f in marks.iterdir() if f.name.isdigit()} if marks.is_dir() else set()
    return [i for i in range(slices) if i not in done]


def _segment_shared(
    run: Predictor,
    src: StackSource,
    out: Path,
    info: dict[str, Any],
    part: str | tuple[int, int] | None,
    verify: bool,
    overwrite: bool,
    batch: int,
    progress: Callable[[int, int], None] | None,
    t0: float,
    runner: Runner | None,
    nonfinite: str = "background",
) -> dict[str, Any]:
    """``segment_stack`` with ``part`` or ``verify``: an output shared by concurrent parts."""
    fmt = info["format"]
    if overwrite:
        raise TomosegError(
            "--overwrite with --part or --verify would erase the other parts' slices; "
            "clear the output once without --part (or use another --out)"
        )
    i_n = parse_part(part) if part is not None else None
    old = read_stack_info(out) if out.is_dir() else None
    if verify and old is None:
        raise TomosegError(f"--verify: {out} holds no segmentation (no {STACK_FILE})")
    if old is None:
        out.mkdir(parents=True, exist_ok=True)
        if not _publish_once(out / STACK_FILE, info):
            old = read_stack_info(out)
    if old is not None:
        why = _mismatch(old, info)
        if why is not None:
            raise TomosegError(
                f"output {out} holds a segmentation by {why}; parts write only into an output "
                "of the same model and input (use another --out)"
            )
    voxel, unit = info["voxel_size"], info["unit"]
    if verify:
        if not _volume_ok(out, fmt, src):
            raise TomosegError(f"--verify: {out} holds no label volume of this stack")
    else:
        _create_volume_once(out, fmt, src, voxel, unit, run)
    (out / PROGRESS_DIR).mkdir(exist_ok=True)
    rng = range(src.n)
    if i_n is not None:
        rng = part_range(src.n, *i_n, _z_chunk(out, fmt))
    computed = 0
    todo: list[int] = []
    if not verify:
        missing_here = set(missing_slices(out, src.n)) & set(rng)
        todo = [i for i in rng if i in missing_here]
        if todo:
            shown = (lambda d, _t: progress(d, len(rng))) if progress is not None else None
            computed = (runner or _run_pipeline)(
                run, src, out, fmt, todo, batch, shown, len(rng) - len(todo), nonfinite
            )
    missing = missing_slices(out, src.n)
    seconds = perf_counter() - t0
    summary: dict[str, Any] = {
        "out": str(out),
        "volume": str(out / info["volume"]),
        "format": fmt,
        "slices": len(rng),
        "first": rng.start if len(rng) else None,
        "last": rng.stop - 1 if len(rng) else None,
        "part": f"{i_n[0]}/{i_n[1]}" if i_n else None,
        "computed": computed,
        "skipped": len(rng) - len(todo),
        "seconds": round(seconds, 3),
        "slices_per_second": round(computed / seconds, 4) if seconds > 0 else None,
        "voxel_size": list(voxel),
        "unit": unit,
        "stack_slices": src.n,
        "missing": len(missing),
        "complete": not missing,
    }
    if not missing:  # the last part to finish (or a verify) marks the whole output complete
        final = read_stack_info(out) or info
        if not final.get("complete"):
            write_json(out / STACK_FILE, {**final, "complete": True, "summary": summary})
    elif verify:
        raise TomosegError(
            f"{len(missing)} of {src.n} slices are missing in {out}: "
            f"{_ranges(missing, src.ids)}; rerun the parts that hold them (or once without --part)"
        )
    return summary
