"""Ctrl-C during a long job: the first asks the job to stop cleanly, the second aborts."""

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


@contextmanager
def cancel_on_interrupt() -> Iterator[threading.Event]:
    """Yield a :class:`threading.Event` to pass as a library job's ``cancel=``; while the
    block runs, the first SIGINT (Ctrl-C) sets it (the job stops at its next check and raises
    :class:`~tomoseg.utils.progress.Cancelled`), a second one raises ``KeyboardInterrupt``
    (abort now, as without the handler). Outside the main thread no handler is installed."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        err_console.print(STOPPING, markup=False, highlight=False, soft_wrap=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)
