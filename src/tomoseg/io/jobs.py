"""The one check of "does this output folder hold the same job": used by ``train`` (config.yaml),
``sweep`` (sweep.json) and ``segment-stack`` (stack.json), so a rerun resumes its own job and never
silently mixes results of another one into the folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tomoseg.errors import TomosegError
from tomoseg.utils.files import MAX_JSON_BYTES, loads_json
from tomoseg.utils.format import first_line


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
