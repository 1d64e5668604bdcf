"""One writer per folder: an advisory lock file held while a process writes a run folder.

The lock is the kernel's (``fcntl.flock`` on ``<folder>/.tomoseg.lock``; on NFS Linux maps it
onto POSIX byte-range locks), so it is released whenever its process ends, a kill -9 included:
a lock file left by a dead process is simply taken over. The file records the holder's pid,
host and start time so a refused second writer can name it. Where the file system has no
locks at all, the recorded pid decides: a live process on this host (or any record from
another host) holds the folder, a dead one on this host does not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from tomoseg.errors import TomosegError

LOCK_FILE = ".tomoseg.lock"


def _holder(path: Path) -> dict[str, str]:
    """What the lock file says of its holder (``pid``, ``host``; empty where unreadable)."""
    try:
        fields = path.read_text().split()
    except OSError:
        return {}
    return dict(zip(("pid", "host", "since"), fields, strict=False))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """Exclusive, non-blocking lock of ``folder`` by this process (a context manager).

    Args:
        folder: the folder written (created when missing).
        what: the folder in words, for the refusal (``run folder``).

    Raises (on entering):
        TomosegError: another process holds the folder, named by pid and host.
    """

    def __init__(self, folder: str | os.PathLike[str], what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def _refuse(self) -> TomosegError:
        h = _holder(self.path)
        who = f"process {h.get('pid', '?')} on {h.get('host', '?')}"
        return TomosegError(
            f"{self.what} {self.folder} is being written by {who} (lock file {self.path}); "
            "wait for it to end, or stop it, before writing this folder"
        )

    def acquire(self) -> FolderLock:
        """Take the lock (see the class docstring)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._refuse() from None
                if not self._no_locks_here():  # ENOLCK, EOPNOTSUPP: decide by the record
                    raise self._refuse() from None
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            # a releasing holder may have removed the file we opened: lock the one in place
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {int(time.time())}\n".encode())
        self._fd = fd
        return self

    def _no_locks_here(self) -> bool:
        """Without kernel locks: whether the recorded holder is gone (a dead pid here)."""
        h = _holder(self.path)
        if not h.get("pid", "").isdigit():
            return True
        return h.get("host") == socket.gethostname() and not _alive(int(h["pid"]))

    def release(self) -> None:
        """Give the lock up and remove the lock file."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing releases the lock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
