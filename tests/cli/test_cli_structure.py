"""The presentation boundary: thin command functions, and rich only in ``tomoseg.cli``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tomoseg"
MAX_LINES = 40


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_cli_function_is_longer_than_40_lines():
    long = {
        f"{path.relative_to(SRC)}:{fn.lineno} {fn.name}": fn.end_lineno - fn.lineno + 1
        for path in sorted((SRC / "cli").rglob("*.py"))
        for fn in _functions(ast.parse(path.read_text()))
        if fn.end_lineno - fn.lineno + 1 > MAX_LINES
    }
    assert not long, f"functions in cli/ longer than {MAX_LINES} lines (split them): {long}"


def _imports_rich(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name == "rich" or a.name.startswith("rich.") for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "rich" or node.module.startswith("rich."):
                return True
    return False


def test_rich_is_imported_only_in_cli():
    outside = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] != "cli" and _imports_rich(ast.parse(path.read_text()))
    ]
    assert not outside, f"modules outside cli/ that import rich: {outside}"


def test_the_checks_see_what_they_look_for():
    """The two checks above do find a long function and a rich import."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    tree = ast.parse(f"def f():\n{body}\n")
    assert max(fn.end_lineno - fn.lineno + 1 for fn in _functions(tree)) > MAX_LINES
    assert _imports_rich(ast.parse("def g():\n    from rich.table import Table\n"))
    assert _imports_rich(ast.parse("import rich.console\n"))
    assert not _imports_rich(ast.parse("from tomoseg.utils import progress\n"))
