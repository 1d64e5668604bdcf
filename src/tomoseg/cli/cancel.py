"""Ctrl-C (and, for ``train``, SIGTERM) during a long job: the first signal asks the job to stop
cleanly, a second one aborts."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from tomoseg.cli.render import err_console

STOPPING = (
    "interrupt: stopping after the current unit of work (rerun the same command to resume); "
    "press Ctrl-C again to abort now"
)


class SignalEvent(threading.Event):
    """A :class:`threading.Event` that also records the signal that set it (``signum``)."""

    signum: int | None = None


@contextmanager
def cancel_on_interrupt(
    signals: tuple[int, ...] = (signal.SIGINT,), stopping: str = STOPPING
) -> Iterator[SignalEvent]:
    """Yield a :class:`SignalEvent` to pass as a library job's ``cancel=``; while the block
    runs, the first of ``signals`` (SIGINT: Ctrl-C) sets it and prints ``stopping`` (the job
    stops at its next check and raises :class:`~tomoseg.utils.progress.Cancelled`), a second
    one raises ``KeyboardInterrupt`` (abort now, as without the handler). Outside the main
    thread no handler is installed."""
    event = SignalEvent()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.signum = signum
        event.set()
        err_console.print(stopping, markup=False, highlight=False, soft_wrap=True)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield event
    finally:
        for s, h in previous.items():
            if h is not None:  # None: a handler not installed from Python, left as it is
                signal.signal(s, h)
