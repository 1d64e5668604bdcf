"""The slice I/O of ``segment_stack``: reading a slice, writing its class ids and its marker, and
the worker processes that do both (``io_workers``) so that the network is fed without the GIL.

This module never imports torch: a worker process (started by the ``forkserver``, which preloads
this module) holds numpy, tifffile and zarr only, about 60 MB.

Worker processes (:class:`IOPool`):

* read slice ``i`` (the same :meth:`SliceSource.reader` as the reader thread, kept open for the
  worker's life), check its shape, non-finite pixels and intensities (the ``intensity`` rule,
  :mod:`tomoseg.data.intensity`, rescaling it if asked), normalise it with the run's
  normalisation (:func:`~tomoseg.data.normalization.normalize`) into a float32 slot of one shared
  memory block, and return the count (and the packed mask) of its non-finite pixels and its
  intensity finding;
* write slice ``i``'s class ids from a uint8 slot of the same block (a zarr chunk or a TIFF), then
  its progress marker, exactly as the writer thread does;
* ignore SIGINT (Ctrl-C is the owner's to handle) and die with the process that owns the pool:
  a watchdog thread checks it every 0.2 s (their parent, the forkserver, lives as long as they
  do, so ``PR_SET_PDEATHSIG`` alone would not do).

After a ``kill -9`` of the owner the workers exit within a fraction of a second, then the
forkserver and multiprocessing's resource tracker, which unlinks the shared memory (it warns of
the "leaked" segment it cleans up).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.data.context import centre, context_reader, in_channels
from tomoseg.data.intensity import IntensityCheck, IntensityFinding
from tomoseg.data.normalization import (
    Normalization,
    as_normalized,
    count_nonfinite,
    nonfinite_mask,
    normalize,
    refuse_nonfinite,
)
from tomoseg.errors import TomosegError
from tomoseg.inference.stack_sinks import Sink, SliceWriter, get_sink
from tomoseg.io.sources import SliceSource
from tomoseg.io.writers import write_text, writing

PROGRESS_DIR = "progress"


# ----------------------------------------------------------------------------- one slice


@contextlib.contextmanager
def open_slices(src: SliceSource, context: int = 0) -> Iterator[Callable[[int], np.ndarray]]:
    """The stack's reader (:meth:`SliceSource.reader`), giving slice ``i`` as (H, W), or with
    2.5D context ``k`` as the (2k + 1, H, W) stack of it and its neighbours, edges replicated
    (:func:`~tomoseg.data.context.context_reader`: each slice is read once in a forward
    sweep). The one way every executor (threads, I/O processes, Ray) opens a stack."""
    with src.reader() as read:
        yield context_reader(read, src.n, context)


def read_slice(
    read: Callable[[int], np.ndarray],
    src: SliceSource,
    i: int,
    nonfinite: str,
    intensity: IntensityCheck | None = None,
) -> tuple[np.ndarray, int, IntensityFinding | None]:
    """Slice ``i`` (with its context, if ``read`` gives one), the count of non-finite pixels
    of the slice itself and its intensity finding, checked as the pipeline requires: the one
    place a stack's slice meets the ``intensity`` rule (once per slice; ``rescale`` maps it
    here, so the Predictor is told ``checked=True``).

    Raises:
        TomosegError: unreadable (from ``read``), another shape than the stack's, non-finite
            pixels with ``nonfinite="error"``, out of the run's intensity range with
            ``intensity`` ``error``; naming the slice.
    """
    img = read(i)
    own = centre(img)
    if own.shape != src.shape:
        raise TomosegError(
            f"slice {src.ids[i]} has shape {own.shape} but the stack's slices "
            f"have {src.shape} (as {src.ids[0]})"
        )
    if nonfinite == "error":
        refuse_nonfinite(own, f"slice {src.ids[i]} of {src.where}")
    found = None
    if intensity is not None:
        img, found = intensity.apply(img, f"slice {src.ids[i]} of {src.where}")
    return img, count_nonfinite(own), found


def marker_text(bad: int, found: IntensityFinding | None) -> str:
    """A progress marker's content: empty, or the count of non-finite pixels on its first
    line, then ``intensity <dtype> <fraction outside>`` when the slice is out of the run's
    intensity range (a marker of one line, or empty, is the earlier format)."""
    if not bad and found is None:
        return ""
    text = f"{bad}\n"
    if found is not None:
        text += f"intensity {found.dtype} {found.outside}\n"
    return text


def read_marker(path: Path) -> tuple[int, tuple[str, float] | None]:
    """A progress marker's ``(non-finite count, (dtype, fraction outside) or None)``;
    ``(0, None)`` for an empty or unreadable one."""
    try:
        lines = path.read_text().split("\n") if path.stat().st_size else []
    except OSError:
        return 0, None
    try:
        bad = int(lines[0].strip() or 0) if lines else 0
    except ValueError:
        bad = 0
    found = None
    for line in lines[1:]:
        bits = line.split()
        if len(bits) == 3 and bits[0] == "intensity":
            try:
                found = (bits[1], float(bits[2]))
            except ValueError:
                pass
    return bad, found


def write_slice(
    sink: SliceWriter,
    i: int,
    labels: np.ndarray,
    bad: int,
    found: IntensityFinding | None = None,
) -> None:
    """Write slice ``i``'s class ids (through a sink's writer), then its progress marker
    (holding ``bad``, its count of non-finite pixels, and ``found``, its intensity finding,
    when there are some: :func:`marker_text`; written whole, then renamed, so it survives a
    kill).

    Raises:
        TomosegError: a full disk, or another OSError, naming the slice (one line).
    """
    marks = sink.out / PROGRESS_DIR
    with writing(f"slice {sink.ids[i]}", sink.out):
        sink.write(i, labels)
        text = marker_text(bad, found)
        if text:
            write_text(marks / f"{i:06d}", text)
        else:
            (marks / f"{i:06d}").touch()


# ----------------------------------------------------------------------------- worker processes


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_io_workers(on_gpu: bool, cores: int | None = None) -> int:
    """The default ``io_workers``: 0 (threads) when the network runs on the CPU (it is 99 % of
    the time there, and worker processes would take its cores) or on <= 2 cores; else
    ``min(4, cores - 2)`` (measured in docs/stacks.md, "Feeding the GPU")."""
    cores = cpu_count() if cores is None else cores
    if not on_gpu or cores <= 2:
        return 0
    return min(4, cores - 2)


#: this worker process's state (set by ``_init_worker``)
_W: dict[str, Any] = {}


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), None when unknown or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZXx" else fields[19]


def _alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` (started at ``start``: not a later process of the same pid) runs."""
    if start is not None:
        return _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def _die_with(main: int, start: str | None) -> None:
    """Exit as soon as the process that owns the pool is gone, even by ``kill -9`` (no orphans).

    The worker's parent is the forkserver, which itself lives as long as any of its children
    (they hold its "alive" pipe): so the worker watches the pool's owner, every 0.2 s (a zombie
    counts as gone), and also asks Linux to kill it when the forkserver ends.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while _alive(main, start):
            threading.Event().wait(0.2)
        os._exit(1)

    if not _alive(main, start):
        os._exit(1)
    threading.Thread(target=watch, name="tomoseg-owner-watch", daemon=True).start()


def _slot(context: int) -> tuple[int, ...]:
    """Leading shape of one input slot: () for (H, W) slices, (2k + 1,) with 2.5D context."""
    return (in_channels(context),) if context else ()


def _init_worker(cfg: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle
    _die_with(cfg["owner"], cfg["owner_start"])
    shm = SharedMemory(name=cfg["shm"])
    h, w = cfg["src"].shape
    n_in, n_out = cfg["n_in"], cfg["n_out"]
    inputs = np.ndarray((n_in, *_slot(cfg["context"]), h, w), np.float32, shm.buf)
    outputs = np.ndarray((n_out, h, w), np.uint8, shm.buf, offset=inputs.nbytes)
    _W.clear()
    _W.update(cfg, shm=shm, inputs=inputs, outputs=outputs, sink=None, read=None)
    _W["stack"] = contextlib.ExitStack()


def _read_task(i: int, slot: int) -> tuple[int, np.ndarray | None, IntensityFinding | None]:
    """Read, check and normalise slice ``i`` into input slot ``slot``; returns its count of
    non-finite pixels, their packed mask (None when there are none) and its intensity
    finding."""
    if _W["read"] is None:
        _W["read"] = _W["stack"].enter_context(open_slices(_W["src"], _W["context"]))
    img, bad, found = read_slice(_W["read"], _W["src"], i, _W["nonfinite"], _W["intensity"])
    mask = nonfinite_mask(centre(img)) if bad else None
    _W["inputs"][slot] = normalize(img, _W["norm"])
    return bad, None if mask is None else np.packbits(mask), found


def _write_task(i: int, slot: int, bad: int, found: IntensityFinding | None) -> int:
    """Write slice ``i``'s class ids from output slot ``slot``, then its marker."""
    if _W["sink"] is None:
        _W["sink"] = _W["fmt"].open(_W["out"], _W["src"].ids)
    write_slice(_W["sink"], i, _W["outputs"][slot], bad, found)
    return i


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """While workers start, declare ``__main__`` as the module named ``__main__``, which
    multiprocessing never re-imports in a child: the workers need nothing from it (their
    functions live here), and a user's script without an ``if __name__ == "__main__":`` guard
    must not run again in each of them."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _MAIN_LOCK:  # pools in several threads (parts): one swap at a time
        old = getattr(main, "__spec__", None)
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
        try:
            yield
        finally:
            main.__spec__ = old


_MAIN_LOCK = threading.Lock()


def _context() -> multiprocessing.context.BaseContext:
    """``forkserver`` (Unix: workers fork from a small server that preloaded this module, never
    from the parent that holds torch, CUDA and threads), else ``spawn``."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


class IOPool:
    """``workers`` processes that read + normalise slices (with their 2.5D ``context``, if any)
    into ``n_in`` float32 slots and write
    class ids from ``n_out`` uint8 slots of one shared-memory block (bounded memory: the slots).

    The caller owns the slots: it hands a free one to :meth:`read` / :meth:`write` and takes it
    back when the future is done. Use as a context manager: leaving it waits for the running
    tasks, stops the workers and frees the shared memory.
    """

    def __init__(
        self,
        src: SliceSource,
        out: Path,
        fmt: Sink | str,
        norm: Normalization,
        nonfinite: str,
        workers: int,
        n_in: int,
        n_out: int,
        context: int = 0,
        intensity: IntensityCheck | None = None,
    ):
        h, w = src.shape
        self.src, self.norm = src, norm
        channels = in_channels(context)
        size = n_in * channels * h * w * 4 + n_out * h * w
        self.shm = SharedMemory(create=True, size=max(size, 1))
        self.inputs = np.ndarray((n_in, *_slot(context), h, w), np.float32, self.shm.buf)
        self.outputs = np.ndarray((n_out, h, w), np.uint8, self.shm.buf, offset=self.inputs.nbytes)
        cfg = {
            "shm": self.shm.name,
            "src": src,
            "out": out,
            "fmt": get_sink(fmt) if isinstance(fmt, str) else fmt,
            "norm": norm,
            "nonfinite": nonfinite,
            "intensity": intensity,
            "n_in": n_in,
            "n_out": n_out,
            "context": context,
            "owner": os.getpid(),
            "owner_start": _start_time(os.getpid()),
        }
        try:
            self.pool = ProcessPoolExecutor(
                workers, mp_context=_context(), initializer=_init_worker, initargs=(cfg,)
            )
        except BaseException:
            self._free()
            raise

    def read(self, i: int, slot: int) -> Future:
        """Future of ``(bad, packed mask or None, intensity finding or None)``; the slice is
        then :meth:`image` (slot)."""
        with _main_not_reimported():  # a submit may start a worker
            return self.pool.submit(_read_task, i, slot)

    def image(self, slot: int) -> np.ndarray:
        """The normalised slice in input slot ``slot`` (``normalize`` passes it through)."""
        return as_normalized(self.inputs[slot], self.norm)

    def write(
        self,
        i: int,
        slot: int,
        labels: np.ndarray,
        bad: int,
        found: IntensityFinding | None = None,
    ) -> Future:
        """Copy ``labels`` into output slot ``slot`` and write them (then the marker) in a worker."""
        self.outputs[slot] = labels
        with _main_not_reimported():
            return self.pool.submit(_write_task, i, slot, bad, found)

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """A mask packed by a reader, as a (H, W) bool array."""
        h, w = self.src.shape
        return np.unpackbits(packed, count=h * w).reshape(h, w).view(bool)

    def __enter__(self) -> IOPool:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._free()

    def _free(self) -> None:
        self.inputs = self.outputs = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a view still alive: freed with it
            self.shm.close()
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()


def worker_error(exc: BaseException, what: str) -> BaseException:
    """A worker's exception as the caller should see it: a dead worker process becomes one
    TomosegError line naming ``what`` (``reading slice z0042``)."""
    if isinstance(exc, BrokenProcessPool):
        return TomosegError(
            f"an I/O worker process died while {what} (out of memory or killed?); "
            "rerun to resume, or use io_workers=0"
        )
    return exc
