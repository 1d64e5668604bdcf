"""The one way tomoseg reads the JSON files it is given (run records, ``decision.json``,
``dataset.json``, ``stack.json``, safetensors metadata, sweep records) and checks what they say.

Files come from colleagues and old runs, so they are input like any other: before parsing, a
file's size, its nesting depth and the length of its integers are bounded (Python's own parser
recurses once per level and converts integers of any length, so a deeply nested or a 5000-digit
file is otherwise a ``RecursionError`` or a ``ValueError`` traceback); after parsing, a pydantic
schema checks each field (:func:`validated`), paths inside a folder may not leave it
(:func:`confined`) and numbers that decide an allocation are checked against the machine's
memory first (:func:`check_memory`). Every problem is one :class:`TomosegError` line naming the
file and the field.
"""

from __future__ import annotations

import json
import os
import re
from itertools import accumulate
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tomoseg.errors import TomosegError
from tomoseg.utils.format import first_line, pydantic_error_text

#: the largest JSON file read (bytes): records and metadata are kilobytes; a stack's
#: ``stack.json`` with a million slice ids is about 10 MB
MAX_JSON_BYTES = 64 * 2**20
#: the deepest nesting of arrays and objects (tomoseg's own files nest 4 levels)
MAX_JSON_DEPTH = 32
#: the longest integer (digits): a 64-bit integer has at most 20
MAX_INT_DIGITS = 20

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")

M = TypeVar("M", bound=BaseModel)


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings do
    not count), found without parsing (no recursion)."""
    brackets = _BRACKET.findall(_STRING.sub("", text))
    return max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)


def loads_json(text: str | bytes, where: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON ``text`` with its nesting and integers bounded.

    Args:
        text: the JSON document.
        where: the file (or what the text is) for messages.
        max_depth: the deepest nesting accepted.

    Raises:
        TomosegError: not JSON, nested deeper than ``max_depth``, or an integer longer than
            :data:`MAX_INT_DIGITS` digits (``malformed <where>: ...``).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TomosegError(f"malformed {where}: not UTF-8 text ({first_line(exc)})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise TomosegError(f"malformed {where}: nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(text, parse_int=_int)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise TomosegError(f"malformed {where}: not valid JSON ({first_line(exc)})") from None


def load_json(path: str | os.PathLike[str], *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read and parse the JSON file ``path`` (:func:`loads_json`), at most ``max_bytes`` long.

    Raises:
        TomosegError: unreadable, too large, or not bounded JSON (``malformed <path>: ...``).
        FileNotFoundError: no such file (callers decide whether that is an error).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise TomosegError(
                f"malformed {p}: {size} bytes, more than the {max_bytes} a tomoseg file has"
            )
        data = p.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TomosegError(f"{p}: unreadable ({exc.strerror or first_line(exc)})") from None
    return loads_json(data, str(p))


def validated(model: type[M], data: Any, where: str) -> M:
    """``data`` checked by the pydantic ``model``.

    Raises:
        TomosegError: ``malformed <where>: <field>: <problem>`` for the first field that fails.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "value"
        msg = pydantic_error_text(err)
        value = "" if loc == "value" else f" (got {_short(err.get('input'))})"
        raise TomosegError(f"malformed {where}: {loc}: {msg}{value}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_json_model(path: str | os.PathLike[str], model: type[M]) -> M:
    """The JSON file ``path`` (:func:`load_json`) checked by ``model`` (:func:`validated`)."""
    return validated(model, load_json(path), str(path))


def confined(base: str | os.PathLike[str], relative: Any, where: str) -> Path:
    """``base / relative`` for a path a file names inside its own folder or store.

    Args:
        base: the folder (a run folder, an output folder, a Zarr store).
        relative: the path the file gives (a string, ``/``-separated).
        where: ``<file>: <field>`` for messages.

    Raises:
        TomosegError: not a string, empty, absolute, or with a ``..`` part (it would leave
            ``base``).
    """
    if not isinstance(relative, str) or not relative.strip():
        raise TomosegError(f"{where}: must be a path inside {base}, got {_short(relative)}")
    parts = PurePosixPath(relative.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or re.match(r"^[A-Za-z]:", relative):
        raise TomosegError(f"{where}: {relative!r} leaves {base} (a path inside it is expected)")
    return Path(base) / parts


def machine_memory() -> int:
    """The machine's physical memory in bytes (0 where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(nbytes: float, what: str) -> None:
    """Refuse an allocation of ``nbytes`` that a file's numbers decide before making it.

    Raises:
        TomosegError: ``nbytes`` is more than the machine's memory (``<what> needs ...``).
    """
    total = machine_memory()
    if total and nbytes > total:
        raise TomosegError(
            f"{what} needs {nbytes / 2**30:.3g} GiB, more than this machine's "
            f"{total / 2**30:.3g} GiB"
        )
