"""Every ``--option`` that tomoseg's error and warning messages name exists on the command line, and library messages' parameter names reach the user as
option names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tomoseg.cli import cli_message, cli_options, main

SRC = Path(__file__).resolve().parents[2] / "src" / "tomoseg"
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")
NOT_OURS = {"debug", "help", "version"}  # handled by main() / click itself


def _strings(tree: ast.AST):
    """String pieces of the messages a user reads: arguments of ``...Error(...)``,
    ``...Warning(...)`` and ``warn(...)`` calls (f-strings included)."""
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        f = call.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if not (name.endswith(("Error", "Warning")) or name == "warn"):
            continue
        for node in ast.walk(call):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield node.value


def test_every_option_named_in_the_source_exists():
    options = {o.lstrip("-") for o in cli_options().values()}
    import typer.main

    from tomoseg.cli import app

    for cmd in typer.main.get_command(app).commands.values():
        for p in cmd.params:
            options.update(
                o.lstrip("-") for o in (*p.opts, *p.secondary_opts) if o.startswith("--")
            )
    missing = {}
    for f in SRC.rglob("*.py"):
        for s in _strings(ast.parse(f.read_text())):
            for flag in FLAG.findall(re.sub(r"`[^`]*`", "", s)):  # `other commands` aside
                if flag not in options and flag not in NOT_OURS:
                    missing.setdefault(flag, str(f.relative_to(SRC)))
    assert not missing, f"options named in the source but absent from the CLI: {missing}"


def test_parameter_names_become_cli_message():
    assert cli_message("use overwrite=True to replace them") == "use --overwrite to replace them"
    assert cli_message("tile_size=8 is below 16") == "--tile-size 8 is below 16"
    assert cli_message("ignore_label in dataset.json") == "ignore_label in dataset.json"
    assert cli_message("the data has classes") == "the data has classes"  # plain words stay
    # library parameters are named as their options
    assert (
        cli_message("weights='middle': must be last or best")
        == "--weights middle: must be last or best"
    )
    assert cli_message("meshes=-1 must be >= 0") == "--meshes -1 must be >= 0"
    assert cli_message("format='png': must be zarr or tiff") == "--format png: must be zarr or tiff"
    assert cli_message("cancelled; the same call resumes it") == (
        "cancelled; the same command resumes it"
    )


def test_cli_error_speaks_of_options(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("{}")
    import numpy as np
    from PIL import Image

    for d in ("p", "t"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / d / "a.png")
    rc = main(
        [
            "score",
            "--pred",
            str(tmp_path / "p"),
            "--truth",
            str(tmp_path / "t"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("error: ") and "use --overwrite to replace them" in err[0]
