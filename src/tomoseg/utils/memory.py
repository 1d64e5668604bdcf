"""How much memory the machine has available now, and sizes in words."""

from __future__ import annotations

import os


def available_memory() -> int:
    """Bytes of memory available to a new allocation now: Linux's ``MemAvailable`` (free memory
    plus the page cache that can be dropped, as ``free`` reports it), else the free pages, else
    a large number (other systems).

    Returns:
        Bytes (an int).
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def human_bytes(n: float) -> str:
    """``1.5 GiB``, ``340 MiB``, ``12 KiB``, ``80 bytes``: a size for messages."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"
