"""Connecting to Ray for the ``--backend ray`` commands (sweep, segment-stack).

Ray is optional (``pip install 'tomoseg[cluster]'``) and imported only here, when a Ray backend
is asked for. Without ``--address`` a local Ray is started with the given CPUs and no dashboard;
with one, the address is checked with a plain TCP connection first, so an unreachable cluster is
one error line after ``timeout`` seconds instead of Ray's long reconnection loop.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

from tomoseg.errors import TomosegError

INSTALL_HINT = "pip install 'tomoseg[cluster]'"
DEFAULT_PORT = 6379
CLIENT_PORT = 10001


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise TomosegError(
            f"backend='ray' needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host[:port]`` or ``ray://host[:port]``; None for ``auto`` / ``local``."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        p = int(port) if port else (CLIENT_PORT if client else DEFAULT_PORT)
    except ValueError:
        raise TomosegError(f"address={address!r} must be HOST:PORT (or ray://HOST:PORT)") from None
    if not host or not 0 < p < 65536:
        raise TomosegError(f"address={address!r} must be HOST:PORT (or ray://HOST:PORT)")
    return host.strip("[]"), p


def _quiet_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports (no network)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def init_ray(address: str | None = None, num_cpus: int | None = None, timeout: float = 30.0) -> Any:
    """Start a local Ray (no ``address``) or connect to a running cluster; returns ``ray``.

    Args:
        address: ``HOST:PORT`` of a Ray head, ``ray://HOST:PORT`` (Ray Client), ``auto``; None
            starts Ray in this process's machine with ``num_cpus`` CPUs and no dashboard.
        num_cpus: CPUs of the local Ray (default: this machine's).
        timeout: seconds to wait for the cluster to answer.

    Raises:
        TomosegError: Ray missing, a malformed or unreachable address, or no answer in time.
    """
    ray = require_ray()
    _quiet_env()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "ERROR",
        "configure_logging": True,
    }
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
    else:
        hp = _host_port(address)
        if hp is not None:
            try:
                socket.create_connection(hp, timeout=timeout).close()
            except OSError as exc:
                raise TomosegError(
                    f"cannot reach the Ray cluster at {address} within {timeout:.0f} s "
                    f"({exc.strerror or exc}); start its head node there, or give no address"
                ) from None
        kwargs["address"] = address
    try:  # in this thread: Ray's start-up does not work from another one
        ray.init(**kwargs)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"at {address}" if address else "locally"
        raise TomosegError(f"cannot start Ray {where}: {first}") from None
    return ray


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, timeout: float = 30.0
) -> Iterator[Any]:
    """:func:`init_ray` for a block; shuts Ray down afterwards if this block started it."""
    ray = require_ray()
    started = not ray.is_initialized()
    ray = init_ray(address, num_cpus, timeout)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
