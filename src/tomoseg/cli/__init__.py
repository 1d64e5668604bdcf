"""The ``tomoseg`` command line (typer + rich), a thin layer over the Python API.

Every user-facing problem becomes one ``error: ...`` line on stderr and a non-zero exit status;
``--debug`` (anywhere on the command line) shows the traceback instead. Library messages name
parameters (``overwrite=True``); :func:`cli_message` turns them into options (``--overwrite``).

Layout: :mod:`tomoseg.cli.app` lists the commands, one module per command or group of
commands holds them, :mod:`tomoseg.cli.options` declares the shared options once and
:mod:`tomoseg.cli.render` draws everything (tables, progress).
"""

from __future__ import annotations

import re
import sys
import warnings

from typer.exceptions import Abort, Exit, TyperException

from tomoseg.cli.app import app
from tomoseg.cli.render import err_console, error_line, warning_line
from tomoseg.errors import TomosegError, TomosegWarning

__all__ = ["app", "cli_message", "cli_options", "main"]


#: Library parameter -> the command's Python parameter, where the command's differs (library
#: parameters take their option's name; a command avoids shadowing the builtin ``format``).
LIBRARY_NAMES: dict[str, str] = {"format": "fmt"}


def cli_options() -> dict[str, str]:
    """Python parameter name -> command-line option (``tile_size`` -> ``--tile-size``), over
    every command of the app (and the library names of :data:`LIBRARY_NAMES`)."""
    import typer.main

    names: dict[str, str] = {}
    group = typer.main.get_command(app)
    for cmd in getattr(group, "commands", {}).values():
        for param in cmd.params:
            opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if param.name and opts:
                names.setdefault(param.name, opts[0])
    for library, command in LIBRARY_NAMES.items():
        names.setdefault(library, names[command])
    return names


_ASSIGN = re.compile(r"\b([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;:)]+)")


def cli_message(message: str) -> str:
    """A library message in the CLI's terms. Library messages name parameters; the command line
    speaks of options: ``overwrite=True`` -> ``--overwrite``, ``nonfinite='error'`` ->
    ``--nonfinite error``, ``tile_size=8`` -> ``--tile-size 8``, ``use overwrite`` -> ``use
    --overwrite``; a cancelled job's "the same call" resumes it -> "the same command". Only
    the ``name=value`` form is rewritten, so file keys and plain words that happen to share a
    parameter's name stay as they are."""
    names = cli_options()

    def assign(m: re.Match) -> str:
        word, value = m.group(1), m.group(2).strip("'\"")
        if word not in names:
            return m.group(0)
        return names[word] if value == "True" else f"{names[word]} {value}"

    message = _ASSIGN.sub(assign, message).replace("the same call", "the same command")
    return re.sub(r"\buse overwrite\b", "use --overwrite", message)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings for the user (TomosegWarning) as one ``warning:`` line; others as usual."""
    if issubclass(category, TomosegWarning):
        warning_line(cli_message(str(message)))
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning expected failures into one ``error:`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    with warnings.catch_warnings():
        warnings.simplefilter("always", TomosegWarning)
        warnings.showwarning = _show_warning
        return _main(args, debug)


def _main(args: list[str], debug: bool) -> int:
    try:
        code = app(args=args, prog_name="tomoseg", standalone_mode=False)
    except Exit as exc:
        return exc.exit_code
    except (Abort, KeyboardInterrupt):
        err_console.print("error: interrupted", markup=False)
        return 130
    except (TomosegError, TyperException, MemoryError, OSError) as exc:
        if debug:
            raise
        text, code = _failure(exc, args)
        error_line(text)
        return code
    return code if isinstance(code, int) else 0


#: options that lower a command's memory, in the order a memory message suggests them
MEMORY_OPTIONS = ("--batch-size", "--batch-slices", "--tile-batch", "--tile-size", "--crop-size")


def memory_options(args: list[str]) -> list[str]:
    """The options of :data:`MEMORY_OPTIONS` that the command in ``args`` has."""
    import typer.main

    group = typer.main.get_command(app)
    words = [a for a in args if not a.startswith("-")]
    cmd = getattr(group, "commands", {}).get(words[0]) if words else None
    while cmd is not None and hasattr(cmd, "commands") and len(words) > 1:  # a sub-group
        words = words[1:]
        cmd = cmd.commands.get(words[0])
    have = {o for p in getattr(cmd, "params", []) for o in getattr(p, "opts", [])}
    return [o for o in MEMORY_OPTIONS if o in have]


def _failure(exc: BaseException, args: list[str] | None = None) -> tuple[str, int]:
    """The ``error:`` text and exit status of an expected failure (``args``: the command line,
    whose command's own options a memory message suggests)."""
    if isinstance(exc, TomosegError):  # a Cancelled job among them
        return cli_message(str(exc)), 1
    if isinstance(exc, TyperException):
        return exc.format_message().replace("\n", " "), exc.exit_code or 2
    if isinstance(exc, MemoryError):
        opts = memory_options(args or [])
        hint = f" (try a smaller {' or '.join(opts)})" if opts else ""
        return f"out of memory{hint}", 1
    assert isinstance(exc, OSError)
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"{exc.strerror or exc}{where}", 1
