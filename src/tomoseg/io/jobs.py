"""The one check of "does this output folder hold the same job": used by ``train`` (config.yaml),
``sweep`` (sweep.json), ``segment-stack`` (stack.json) and, through :func:`open_job_folder`
(``.tomoseg-job.json``), ``predict``, ``evaluate``, ``score`` and ``objects``, so a rerun resumes
its own job (after a ``kill -9`` too) and never silently mixes results of another one into the
folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tomoseg.errors import TomosegError
from tomoseg.io.writers import prepare_output_dir, write_json
from tomoseg.utils.files import MAX_JSON_BYTES, loads_json
from tomoseg.utils.format import first_line


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks: how a job record names the
    weights it was computed with."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def job_difference(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> tuple[str, Any, Any] | None:
    """The first setting (dotted key, in ``new``'s order) whose value differs, as
    ``(key, old value, new value)``; None when every setting of ``new`` equals ``old``'s.

    Only ``new``'s settings count (``old`` may record more). Nested mappings compare key by key;
    a mapping on one side and a plain value on the other differ. ``defaults`` (dotted keys):
    settings added to the job's record after ``old`` was written; one absent from ``old`` whose
    new value is its default changes nothing (an old folder stays resumable)."""
    flat_defaults = dict(_flatten(defaults or {}))
    missing = object()

    def walk(o: Any, n: Mapping[str, Any], prefix: str) -> tuple[str, Any, Any] | None:
        for k, v in n.items():
            key = f"{prefix}{k}"
            was = o.get(k, missing) if isinstance(o, Mapping) else missing
            if isinstance(v, Mapping) and isinstance(was, Mapping):
                found = walk(was, v, key + ".")
                if found is not None:
                    return found
                continue
            if was is missing and key in flat_defaults and flat_defaults[key] == v:
                continue
            was = None if was is missing else was
            if was != v:
                return key, was, v
        return None

    return walk(old, new, "")


def read_record(path: str | Path) -> dict[str, Any] | None:
    """A job record (JSON, or YAML for ``.yaml``/``.yml``) as a dict; None when the file is absent.

    JSON is read with its size, nesting and integers bounded
    (:func:`~tomoseg.utils.files.loads_json`); YAML with ``yaml.safe_load`` (no Python tags).

    Raises:
        TomosegError: unreadable, too large, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        return None
    if p.stat().st_size > MAX_JSON_BYTES:
        raise TomosegError(f"malformed {p}: larger than the {MAX_JSON_BYTES} bytes a record has")
    try:
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = loads_json(text, str(p))
    except TomosegError:
        raise
    except Exception as exc:  # yaml/decoding errors of many types
        raise TomosegError(f"malformed {p}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise TomosegError(f"malformed {p}: expected a mapping")
    return data


def check_same_job(
    folder: str | Path,
    record: str,
    identity: Mapping[str, Any],
    *,
    what: str,
    remedy: str,
    part: str | None = None,
    extract: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Refuse a folder whose job record describes another job.

    Args:
        folder: the output folder.
        record: file name of the job record inside it (``config.yaml``, ``sweep.json``, ...).
        identity: the settings that define the job (nested mappings compare key by key).
        what: the job's name in the message (``"a run"``, ``"a sweep"``, ...).
        remedy: what the user can do, naming real options (``"use overwrite=True to replace it"``; the CLI shows ``--overwrite``).
        part: the key of the record that holds the identity (None: the whole record).
        extract: computes the old identity from the old record (instead of ``part``), for
            records that hold more than the identity; give ``identity`` in the same form.
        defaults: see :func:`job_difference`.

    Returns:
        The old record, or None when the folder holds none (a new job).

    Raises:
        TomosegError: the record differs, naming the first differing setting and both values.
    """
    old = read_record(Path(folder) / record)
    if old is None:
        return None
    held = extract(old) if extract else old.get(part, {}) if part else old
    diff = job_difference(held if isinstance(held, Mapping) else {}, identity, defaults)
    if diff is not None:
        key, was, now = diff
        raise TomosegError(
            f"{folder} holds {what} with another {key} ({was!r} there, {now!r} now); {remedy}"
        )
    return old


# ----------------------------------------------------------------------------- job folders

#: the job record of ``predict``, ``evaluate``, ``score`` and ``objects`` in their output folder
JOB_FILE = ".tomoseg-job.json"


def open_job_folder(
    out: str | Path,
    job: str,
    identity: Mapping[str, Any],
    *,
    overwrite: bool,
    result_names: Iterable[str],
    replaced: Iterable[str] = (),
    keep_finished: bool = False,
) -> bool:
    """Prepare the output folder of a job that a ``kill -9`` may interrupt, so that the same
    call afterwards finishes it: the one rule of ``predict``, ``evaluate``, ``score`` and
    ``objects`` (``train`` and ``segment_stack`` keep their own records, ``config.yaml`` and
    ``stack.json``, under the same "same job" rule, :func:`job_difference`).

    The folder's :data:`JOB_FILE` records the job (``job``, ``identity``, ``complete``): it is
    written before the first result and marked complete by :func:`finish_job_folder` after the
    last. A folder holding an unfinished run of the same job:

    * ``keep_finished`` (a job whose every unit is a result of its own, as ``predict``'s
      masks): is resumed, the caller skipping what is there (every file being written
      atomically); with other settings it is refused unless ``overwrite``;
    * otherwise (a job whose results only mean something complete): is started again,
      whatever its settings, without ``overwrite``.

    Otherwise :func:`~tomoseg.io.writers.prepare_output_dir`'s rule holds (a folder holding
    ``result_names``, or another job's unfinished run, is refused unless ``overwrite``). On
    every fresh start the ``replaced`` files and folders are removed first, so that a run
    killed after replacing some of an earlier job's results never leaves them mixed with the
    new ones. The temporary files of interrupted writes are removed in every case.

    Args:
        out: the output folder.
        job: the job's name (``predict``, ``objects``, ...).
        identity: the settings that decide the results (JSON-serialisable).
        overwrite: replace the results of an earlier job.
        result_names: names (relative to ``out``) whose presence means "holds results".
        replaced: names (relative to ``out``) this job writes: removed on a fresh start.
        keep_finished: resume an unfinished run, keeping what it finished.

    Returns:
        Whether the call resumes an unfinished run (only with ``keep_finished``).

    Raises:
        TomosegError: the folder holds results (or an unfinished run of other settings) and
            ``overwrite`` is False; it is not writable; its record is malformed.
    """
    d = Path(out)
    identity = json.loads(json.dumps(identity))  # as the record holds it (tuples as lists)
    old = read_record(d / JOB_FILE) if d.is_dir() else None
    unfinished = old is not None and not old.get("complete") and not overwrite
    if unfinished and old.get("job") != job:  # type: ignore[union-attr]
        raise TomosegError(
            f"{d} holds an unfinished {old.get('job')!r} job; use overwrite=True to replace it"  # type: ignore[union-attr]
        )
    if unfinished and keep_finished:
        held = old.get("identity")  # type: ignore[union-attr]
        diff = job_difference(held if isinstance(held, Mapping) else {}, identity)
        if diff is not None:
            key, was, now = diff
            shown = f"{len(was)} items" if isinstance(was, list) and len(was) > 4 else repr(was)
            raise TomosegError(
                f"{d} holds an unfinished {job} job with another {key} ({shown} there); "
                "use overwrite=True to replace it"
            )
        prepare_output_dir(d, True, ())
        return True
    prepare_output_dir(d, overwrite or unfinished, result_names)
    for name in replaced:
        p = d / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    write_json(d / JOB_FILE, {"job": job, "identity": identity, "complete": False})
    return False


def finish_job_folder(out: str | Path) -> None:
    """Mark the job of :func:`open_job_folder` in ``out`` complete (after its last result)."""
    record = read_record(Path(out) / JOB_FILE) or {}
    write_json(Path(out) / JOB_FILE, {**record, "complete": True})
