"""Progress and cancellation of long library jobs, without a terminal in the library.

Every long job (``train``, ``sweep``, ``segment_stack``, ``evaluate``, ``predict``) takes two
optional keyword arguments:

* ``progress``: a callable receiving :class:`ProgressEvent` s (one per unit of work: an epoch, a
  sweep case, a slice, an image; plus ``message`` events), with the whole job's counts and an
  ETA. The command line renders them with rich; napari shows them in its status bar; a notebook
  can print them. Messages also go to :mod:`logging` (logger ``tomoseg``), so a job run without
  a callback still leaves a record where logging is configured.
* ``cancel``: anything with an ``is_set()`` method, usually a :class:`threading.Event`. A job
  checks it between units of work (the next batch, slice, epoch or case), leaves the state a
  rerun resumes from, and raises :class:`Cancelled` (a :class:`~tomoseg.errors.TomosegError`).

This follows the callback style of Lightning's ``Callback`` and napari's ``thread_worker``
progress (the library reports, the front end draws); the ETA is the remaining units at the
rate measured in this process (units already done before a resume are not counted as fast).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tomoseg.errors import TomosegError

log = logging.getLogger("tomoseg")


class CancelToken(Protocol):
    """What ``cancel=`` accepts: :class:`threading.Event` and anything with ``is_set()``."""

    def is_set(self) -> bool: ...


class Cancelled(TomosegError):
    """A job stopped because its ``cancel`` token was set; what it finished is kept and the
    same call resumes it. The command line prints it as one ``error:`` line and exits non-zero."""


@dataclass(frozen=True)
class ProgressEvent:
    """One report of a long job.

    Attributes:
        job: ``train``, ``sweep``, ``segment-stack``, ``evaluate``, ``predict``, ``tune``.
        kind: ``start`` (before the first unit), ``advance`` (a unit finished), ``message``
            (a line of text for the user), ``end`` (the job finished).
        unit: what is counted: ``epoch``, ``case``, ``slice``, ``image``.
        done: units finished, including those finished by an earlier, resumed call.
        total: units in the whole job (None while unknown).
        elapsed: seconds since this call started.
        eta: seconds left for the whole job at the rate of this call (None while unknown).
        message: text for ``message`` events, and a short summary of the unit for ``advance``.
        metrics: numbers of the unit just finished (an epoch's loss and validation IoU, ...).
    """

    job: str
    kind: str
    unit: str
    done: int
    total: int | None
    elapsed: float = 0.0
    eta: float | None = None
    message: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


class JobProgress:
    """The reporter a library job holds: counts units, computes the ETA, checks cancellation.

    Args:
        job: the job's name (:attr:`ProgressEvent.job`).
        unit: what is counted.
        total: units in the whole job (None while unknown; :meth:`set_total` later).
        callback: where events go (None: logging only).
        cancel: a token whose ``is_set()`` stops the job at the next :meth:`check`.
        done: units already finished before this call (a resume).
        hint: what the :class:`Cancelled` message tells the user to do next.
    """

    def __init__(
        self,
        job: str,
        unit: str,
        total: int | None = None,
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        done: int = 0,
        hint: str = "the same call resumes it",
    ):
        self.job, self.unit, self.total, self.hint = job, unit, total, hint
        self.callback, self.cancel = callback, cancel
        self.done = self._start_done = int(done)
        self._t0 = self._rate_t0 = time.perf_counter()

    def restart_rate(self) -> None:
        """Estimate the time left from the units finished from now on (after a long step that
        finished no unit, whose time would make the first units look slow)."""
        self._rate_t0, self._start_done = time.perf_counter(), self.done

    def _emit(self, kind: str, message: str = "", metrics: Mapping[str, Any] | None = None):
        now = time.perf_counter()
        elapsed = now - self._t0
        eta = None
        here = self.done - self._start_done
        if self.total is not None and here > 0:
            eta = max(0.0, (now - self._rate_t0) / here * (self.total - self.done))
        event = ProgressEvent(
            self.job, kind, self.unit, self.done, self.total, elapsed, eta, message, metrics or {}
        )
        if self.callback is not None:
            self.callback(event)

    def set_total(self, total: int, done: int | None = None) -> None:
        """Set the job's size (and the units already finished, on a resume)."""
        self.total = int(total)
        if done is not None:
            self.done = self._start_done = int(done)

    def start(self) -> None:
        """Report the start (with the counts known so far) and check cancellation."""
        self._emit("start")
        self.check()

    def advance(self, n: int = 1, message: str = "", **metrics: Any) -> None:
        """``n`` more units finished: report them, then check cancellation (so a job stops
        right after a unit whose results are safely written)."""
        self.done += int(n)
        if message:
            log.info("%s: %s", self.job, message)
        self._emit("advance", message, metrics)
        self.check()

    def message(self, text: str) -> None:
        """A line for the user (logged at INFO and sent as a ``message`` event)."""
        log.info("%s: %s", self.job, text)
        self._emit("message", text)

    def end(self, message: str = "") -> None:
        """Report the end of the job."""
        self._emit("end", message)

    @property
    def cancelled(self) -> bool:
        """Whether the cancel token is set."""
        return self.cancel is not None and bool(self.cancel.is_set())

    def check(self) -> None:
        """Raise :class:`Cancelled` if the cancel token is set.

        Raises:
            Cancelled: names the job, how far it got and what to do next (:attr:`hint`).
        """
        if self.cancelled:
            total = "" if self.total is None else f"/{self.total}"
            raise Cancelled(
                f"{self.job} cancelled after {self.done}{total} {self.unit}s; {self.hint}"
            )


def job_progress(
    job: str,
    unit: str,
    total: int | None = None,
    progress: ProgressCallback | JobProgress | None = None,
    cancel: CancelToken | None = None,
    done: int = 0,
    hint: str = "the same call resumes it",
) -> JobProgress:
    """A :class:`JobProgress` for a library function's ``progress`` / ``cancel`` arguments
    (a :class:`JobProgress` passed down by an enclosing job is used as it is)."""
    if isinstance(progress, JobProgress):
        return progress
    return JobProgress(job, unit, total, progress, cancel, done, hint)
