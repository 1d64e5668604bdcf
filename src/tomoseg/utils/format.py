"""The one way tomoseg turns numbers, NaN and exceptions into text."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import ValidationError


def is_missing(v: Any) -> bool:
    """True for None and for a float NaN (a metric that is undefined, e.g. an absent class)."""
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(float(v)))


def fmt(v: Any, pct: bool = True, digits: int | None = None) -> str:
    """A metric as text: ``"-"`` when missing; ``pct``: a fraction shown as a percentage with one
    decimal (0.9123 -> ``"91.2"``); else ``digits`` decimals (default 4)."""
    if is_missing(v):
        return "-"
    if pct:
        return f"{100 * float(v):.{1 if digits is None else digits}f}"
    return f"{float(v):.{4 if digits is None else digits}f}"


def plural(n: Any, word: str, many: str | None = None) -> str:
    """A count with its noun: ``plural(1, "case")`` -> ``"1 case"``, ``plural(2, "case")`` ->
    ``"2 cases"``; ``many``: an irregular plural (``plural(3, "branch", "branches")``). Any
    other ``n`` (0, a missing count shown as ``?``) takes the plural."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def cell(v: Any) -> str | Any:
    """A value for a CSV cell: ``""`` for None/NaN, floats as ``repr`` (full precision), else as is."""
    if is_missing(v):
        return ""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def nan_to_none(obj: Any) -> Any:
    """Replace NaN and infinities by None, recursively (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return nan_to_none(obj.item())
    return obj


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: what pydantic puts before the message of an error raised in a validator
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def pydantic_error_text(err: Any) -> str:
    """The message of one pydantic error (an item of ``ValidationError.errors()``), without
    the ``Value error, `` that pydantic puts before a validator's own message."""
    msg = str(err["msg"])
    for prefix in _PYDANTIC_PREFIXES:
        msg = msg.removeprefix(prefix)
    return msg


def pydantic_message(exc: ValidationError) -> str:
    """Shorten a pydantic error to one line: ``field: message; field: message``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "value"
        parts.append(f"{loc}: {pydantic_error_text(err)}")
    return "; ".join(parts)
