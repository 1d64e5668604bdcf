"""The run record ``run.json``: the one module that reads and writes it.

A run folder's ``run.json`` records what training resolved before fitting (the network's
hyperparameters, classes, normalisation, the training images' dtypes and intensity range
(``intensity``, which inference checks every image against), class counts and weights, ignore
label, where validation came from, precision, the time-budget plan) and what came after it (the tuned
decision). Training writes it; training (on resume), tuning and any other reader go through
:func:`read_run_record`, :func:`write_run_record` and :func:`update_run_record`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tomoseg.errors import TomosegError
from tomoseg.io.writers import write_json

RUN_FILE = "run.json"


def run_record_path(run: Path | str) -> Path:
    """``<run>/run.json``."""
    return Path(run) / RUN_FILE


def read_run_record(run: Path | str, missing_ok: bool = False) -> dict[str, Any] | None:
    """The run record of the run folder ``run``.

    Args:
        run: the run folder.
        missing_ok: return None (rather than raise) when the folder has no ``run.json``.

    Raises:
        TomosegError: no ``run.json`` (unless ``missing_ok``), or one that is not a JSON object.
    """
    path = run_record_path(run)
    if not path.is_file():
        if missing_ok:
            return None
        raise TomosegError(f"run: {Path(run)} holds no {RUN_FILE} (is it a tomoseg run folder?)")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TomosegError(f"run: {path} is unreadable ({str(exc).splitlines()[0]})") from None
    if not isinstance(record, dict):
        raise TomosegError(f"run: {path} is not a tomoseg run record")
    return record


def write_run_record(run: Path | str, record: dict[str, Any]) -> Path:
    """Write ``record`` as the run's ``run.json`` (atomically) and return its path."""
    return write_json(run_record_path(run), record)


def update_run_record(run: Path | str, **fields: Any) -> dict[str, Any] | None:
    """Set ``fields`` in an existing ``run.json`` (as tuning records its decision).

    Returns:
        The updated record, or None where the folder has no ``run.json`` (a bare weights
        folder: nothing is written).
    """
    record = read_run_record(run, missing_ok=True)
    if record is None:
        return None
    record.update(fields)
    write_run_record(run, record)
    return record
