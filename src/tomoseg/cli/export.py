"""``export``: a trained network as a bioimage.io package, a TorchScript or an ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tomoseg.cli import render
from tomoseg.cli.options import Overwrite, RunFolder, Weights

ExportFormat = Annotated[
    str,
    typer.Option(
        "--format",
        help="bioimageio (a bioimage.io package .zip: Fiji/deepImageJ, ilastik, napari), "
        "torchscript or onnx (one file, its normalisation in FILE.json).",
    ),
]


def export(
    run: RunFolder,
    out: Annotated[Path, typer.Option(help="File to write (NAME.zip for a package).")],
    fmt: ExportFormat = "bioimageio",
    weights: Weights = None,
    overwrite: Overwrite = False,
    data: Annotated[
        Path | None, typer.Option(help="Dataset of the test image (default: the run's data).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Package name (default: the run's).")] = None,
    author: Annotated[
        list[str] | None, typer.Option(help="Author (repeat; default: your login name).")
    ] = None,
    license: Annotated[str, typer.Option(help="Licence, an SPDX id.")] = "CC-BY-4.0",
    tag: Annotated[list[str] | None, typer.Option(help="Extra tag (repeat).")] = None,
    evaluation: Annotated[
        Path | None,
        typer.Option(help="A tomoseg evaluate report: its test scores go in the README."),
    ] = None,
) -> None:
    """Share a trained network: a bioimage.io package, a TorchScript or an ONNX file."""
    from tomoseg.api import export as run_export

    result = run_export(
        run, out, format=fmt, weights=weights, overwrite=overwrite, data=data, name=name,
        authors=author, license=license, tags=tag, evaluation=evaluation,
    )  # fmt: skip
    render.show_export(result)
