"""How a :class:`~tomoseg.inference.stack_job.StackJob`'s slices are computed: executors.

An executor reads the job's ``todo`` slices, segments them with a
:class:`~tomoseg.inference.predictor.Predictor` and writes them with their markers through the
job's sink; it reports each finished slice with ``progress.advance()`` (which raises
:class:`~tomoseg.utils.progress.Cancelled` when the job's cancel token is set: the slices
already computed are still written, so a rerun resumes after them). Executors:

* :class:`ThreadExecutor`: a reader and a writer thread around the model (this thread), through
  bounded queues (memory: a few slices whatever the stack length);
* :class:`ProcessExecutor`: ``workers`` I/O processes that read + normalise and write slices
  through shared memory (:class:`~tomoseg.inference.stack_io.IOPool`), so a GPU is fed without
  the GIL;
* :class:`~tomoseg.inference.ray_backend.RayExecutor`: a pool of Ray actors.

The labels are the same byte for byte whichever executor computes them.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tomoseg.inference.stack_io import IOPool, open_slices, read_slice, worker_error, write_slice
from tomoseg.inference.stack_uncertainty import MEASURE, UncertaintyWriter

if TYPE_CHECKING:
    from tomoseg.inference.predictor import Predictor
    from tomoseg.inference.stack_job import StackJob
    from tomoseg.utils.progress import JobProgress

QUEUE_SIZE = 4
_DONE = object()


class Executor(Protocol):
    """Computes and writes a job's ``todo`` slices (with their markers)."""

    def run(self, job: StackJob, predictor: Predictor, progress: JobProgress) -> int:
        """Compute ``job.todo``; ``progress.advance()`` once per slice written and marked.

        Returns:
            The slices computed by this call.

        Raises:
            TomosegError: a slice unreadable or of another shape (named; the slices before it
                are finished), a write error.
            Cancelled: the job's cancel token was set (raised by ``progress``).
        """
        ...


def segment_many(predictor: Predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """Class ids of several slices of one shape, in one
    :meth:`~tomoseg.inference.predictor.Predictor.segment_batch` (non-finite pixels were
    counted, or refused, by the reader, and the ``intensity`` rule applied there
    (:func:`~tomoseg.inference.stack_io.read_slice`); here non-finite pixels become
    background). The one model call of every executor."""
    return list(predictor.segment_batch(images, checked=True)[0])


def _put(q: queue.Queue, item: Any, alive: Callable[[], bool]) -> bool:
    """Put with a timeout loop so a dead consumer/producer never blocks us forever."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if not alive():
                return False


class ThreadExecutor:
    """Read -> model (this thread) -> write, overlapped in a reader and a writer thread."""

    def run(self, job: StackJob, predictor: Predictor, progress: JobProgress) -> int:
        src, todo, batch = job.src, job.todo, job.batch
        if not todo:
            return 0
        size = max(QUEUE_SIZE, batch)
        q_in: queue.Queue = queue.Queue(size)
        q_out: queue.Queue = queue.Queue(size)
        done_q: queue.Queue = queue.Queue()
        stop = threading.Event()
        writer_errors: list[BaseException] = []
        sink = job.sink.open(job.out, src.ids)
        maps = UncertaintyWriter(job.out) if job.uncertainty else None

        def reader() -> None:
            try:
                with open_slices(src, predictor.context) as read:
                    for i in todo:
                        if stop.is_set():
                            return
                        img, bad, found = read_slice(read, src, i, job.nonfinite, job.intensity)
                        job.tally.add(found)  # the stack's first such slice: one warning
                        if not _put(q_in, (i, img, bad, found), lambda: not stop.is_set()):
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
                i, labels, bad, found, unc = item
                try:
                    if maps is not None:  # before the slice's marker: a finished slice has it
                        maps.write(i, unc)
                    write_slice(sink, i, labels, bad, found)
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

        def report() -> None:
            while True:
                try:
                    done_q.get_nowait()
                except queue.Empty:
                    return
                progress.advance()

        def segment(items: list[tuple[int, np.ndarray, int, Any]]) -> None:
            images = [item[1] for item in items]
            if maps is None:
                labels, unc = segment_many(predictor, images), [None] * len(items)
            else:  # the uncertainty of the softmax the labels are decided from (one pass)
                from tomoseg.inference.predictor import uncertainty_of

                lab_b, prob = predictor.segment_batch(images, probabilities=True, checked=True)
                labels, unc = list(lab_b), list(uncertainty_of(prob, MEASURE))
            for (i, _, bad, found), lab, u in zip(items, labels, unc, strict=True):
                _put(q_out, (i, lab, bad, found, u), t_write.is_alive)

        try:
            ended = False
            while not ended and not writer_errors:
                progress.check()  # cancelled: stop before the next slice
                items: list[tuple[int, np.ndarray, int, Any]] = []
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
                            segment(items)
                        raise item
                    items.append(item)
                if items and not writer_errors:
                    segment(items)
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


class ProcessExecutor:
    """``workers`` I/O processes (:class:`~tomoseg.inference.stack_io.IOPool`) around the model.

    Slices are read and normalised ahead, at most ``n_in`` at a time (the shared-memory slots),
    and handed to the model in ``todo`` order; their class ids go to free output slots and are
    written (then marked) by whichever worker is free, in any order. A slice that fails to read
    stops the run after the slices before it are written; a failed write stops it after the
    writes already submitted have ended; so does a cancel.
    """

    def __init__(self, workers: int):
        self.workers = int(workers)

    def run(self, job: StackJob, predictor: Predictor, progress: JobProgress) -> int:
        src, todo, batch = job.src, job.todo, job.batch
        if not todo:
            return 0
        ahead = max(self.workers, 2)
        n_in, n_out = batch + ahead, batch + ahead
        computed = 0
        with IOPool(
            src,
            job.out,
            job.sink,
            predictor.run.normalization,
            job.nonfinite,
            self.workers,
            n_in,
            n_out,
            predictor.context,
            job.intensity,
        ) as pool:
            reads: deque[tuple[int, int, Future]] = deque()
            writes: dict[Future, tuple[int, int]] = {}  # future -> (slice, output slot)
            free_in, free_out = list(range(n_in)), list(range(n_out))
            nxt = 0

            def harvest(block: bool) -> None:
                """Take back the slots of ended writes, report them; raise a writer's error."""
                if not writes:
                    return
                ended, _ = wait(list(writes), None if block else 0, FIRST_COMPLETED)
                for f in ended:
                    i, slot = writes.pop(f)
                    free_out.append(slot)
                    exc = f.exception()
                    if exc is not None:
                        raise worker_error(exc, f"writing slice {src.ids[i]}")
                    progress.advance()

            try:
                while nxt < len(todo) or reads:
                    progress.check()  # cancelled: stop before the next slice
                    while free_in and nxt < len(todo):
                        slot = free_in.pop()
                        reads.append((todo[nxt], slot, pool.read(todo[nxt], slot)))
                        nxt += 1
                    items: list[tuple[int, int, int, np.ndarray | None, Any]] = []
                    error: BaseException | None = None
                    while reads and len(items) < batch:
                        i, slot, f = reads[0]
                        while not f.done():  # report finished writes while the read runs
                            wait([f, *writes], None, FIRST_COMPLETED)
                            harvest(False)
                        reads.popleft()
                        exc = f.exception()
                        if exc is not None:  # the slices before it are still computed, written
                            free_in.append(slot)
                            error = worker_error(exc, f"reading slice {src.ids[i]}")
                            break
                        bad, packed, found = f.result()
                        job.tally.add(found)  # the stack's first such slice: one warning
                        items.append((i, slot, bad, packed, found))
                    if items:
                        labels = segment_many(predictor, [pool.image(it[1]) for it in items])
                        for (i, slot, bad, packed, found), lab in zip(items, labels, strict=True):
                            free_in.append(slot)
                            if packed is not None:  # outside the field of view: background
                                lab[pool.unpack(packed)] = 0
                            while not free_out:
                                harvest(True)
                            o = free_out.pop()
                            writes[pool.write(i, o, lab, bad, found)] = (i, o)
                        computed += len(items)
                    if error is not None:
                        raise error
                    harvest(False)
                while writes:
                    harvest(True)
            finally:
                for _, _, f in reads:
                    f.cancel()
                wait(list(writes))  # the slices already computed are written (errors: above)
        return computed


def local_executor(io_workers: int | None, on_gpu: bool) -> Executor:
    """The local executor: I/O processes when ``io_workers`` (None: automatic,
    :func:`~tomoseg.inference.stack_io.auto_io_workers`) is above 0, else threads."""
    from tomoseg.inference.stack_io import auto_io_workers

    workers = auto_io_workers(on_gpu) if io_workers is None else int(io_workers)
    return ProcessExecutor(workers) if workers else ThreadExecutor()
