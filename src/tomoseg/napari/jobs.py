"""Long library calls in a napari worker thread: a progress bar with an ETA, a Cancel button,
errors as one line in napari's notification area (never a traceback dialog)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from tomoseg.errors import TomosegError
from tomoseg.utils.progress import Cancelled, ProgressEvent


class _Bridge(QObject):
    """Carries progress events from the worker thread to the GUI thread (a queued signal)."""

    event = Signal(object)


def error_line(exc: BaseException) -> str:
    """The one line a user reads: a TomosegError's message as it is, else the exception's type
    and first line."""
    if isinstance(exc, TomosegError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    m, s = divmod(int(round(seconds)), 60)
    return f", {m} min {s:02d} s left" if m else f", {s} s left"


class Job(Container):
    """A progress bar, a status line and a Cancel button running one job at a time.

    :meth:`start` runs ``fn(progress=..., cancel=...)`` in a napari worker; ``done`` receives
    its result in the GUI thread. :attr:`running` is False once the worker has finished (its
    ``finished`` signal), whatever the outcome; :attr:`last_error` holds the line shown.
    """

    def __init__(self) -> None:
        self.bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        super().__init__(widgets=[self.bar, self.status, self.cancel_button], labels=False)
        self.cancel_button.changed.connect(self._cancel)
        self.running = False
        self.last_error: str | None = None
        self.worker: Any = None
        self._token = threading.Event()
        self._bridge = _Bridge()
        self._bridge.event.connect(self._show)

    def fail(self, exc: BaseException | str) -> None:
        """Show an error line in napari's notification area and the status line."""
        line = exc if isinstance(exc, str) else error_line(exc)
        self.last_error = line
        self.status.value = f"error: {line}"
        show_error(line)

    def start(self, fn: Callable[..., Any], done: Callable[[Any], None]) -> Any:
        """Run ``fn(progress=, cancel=)`` in a worker thread (refused while one runs)."""
        if self.running:
            show_info("a job is running: cancel it or wait for it to finish")
            return None
        self._token = threading.Event()
        self.running, self.last_error = True, None
        self.bar.value, self.bar.max = 0, 1
        self.status.value = "starting..."
        self.cancel_button.enabled = True
        token, emit = self._token, self._bridge.event.emit

        def call() -> Any:
            return fn(progress=emit, cancel=token)

        def returned(result: Any) -> None:
            self.bar.value = self.bar.max  # done (also for a job without progress events)
            try:
                done(result)
            except Exception as exc:  # a result that cannot be shown: one line, no dialog
                self.fail(exc)

        self.worker = create_worker(
            call,
            _connect={"returned": returned, "errored": self._errored, "finished": self._finished},
        )
        return self.worker

    def _cancel(self) -> None:
        self._token.set()
        self.status.value = "cancelling after the current unit..."

    def _errored(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.last_error = str(exc)
            self.status.value = "cancelled: run again to finish"
            show_info(f"cancelled: {exc}")
            return
        self.fail(exc)

    def _finished(self) -> None:
        self.running = False
        self.cancel_button.enabled = False

    def _show(self, event: ProgressEvent) -> None:
        if event.total:
            self.bar.max = max(int(event.total), 1)
            self.bar.value = min(int(event.done), self.bar.max)
        if event.kind in ("advance", "message", "end") and (event.message or event.total):
            count = f"{event.done}/{event.total} {event.unit}" if event.total else ""
            text = event.message or count
            self.status.value = f"{count}{_eta(event.eta)}: {text}" if count else text
