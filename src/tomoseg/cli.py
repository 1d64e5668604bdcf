"""The ``tomoseg`` command line (typer + rich).

Every user-facing problem becomes one ``error: ...`` line on stderr and a non-zero exit status;
``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console

from tomoseg import __version__
from tomoseg.errors import TomosegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train CNNs on random crops of large grayscale images, score and segment them.",
)
console = Console()
err_console = Console(stderr=True)

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace results already in --out.")]


@app.command()
def version() -> None:
    """Print the tomoseg version."""
    console.print(__version__)


@app.command()
def score(
    pred: Annotated[Path, typer.Option(help="Folder of predicted masks (class ids).")],
    truth: Annotated[Path, typer.Option(help="Folder of true masks, matched by file stem.")],
    out: Annotated[Path, typer.Option(help="Report folder.")],
    classes: Annotated[str | None, typer.Option(help="Class names, e.g. 'background,soma'.")] = None,
    class_of_interest: Annotated[str | None, typer.Option(help="Class for overlays/table.")] = None,
    tolerance: Annotated[float, typer.Option(help="BF1 tolerance in pixels.")] = 2.0,
    images: Annotated[Path | None, typer.Option(help="Raw images to show in the panels.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Score predicted masks against true masks: accuracy, IoU, BF1, overlays."""
    from tomoseg.io import resolve_classes
    from tomoseg.report import score_table
    from tomoseg.score import score_folders

    summary = score_folders(
        pred, truth, out, resolve_classes(classes), class_of_interest, tolerance, images, overwrite
    )
    console.print(score_table(summary))
    console.print(f"report: {out}/metrics.json, {out}/per_image.csv, {out}/overlays/, {out}/panels/")


@app.command()
def check(
    data: Annotated[Path | None, typer.Option(help="Dataset folder with dataset.json.")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of images (instead of --data).")] = None,
    masks: Annotated[Path | None, typer.Option(help="Folder of masks, matched by stem.")] = None,
) -> None:
    """Read every image/mask pair and report shapes, types and class frequencies."""
    from tomoseg.data import check_data

    check_data(console, data, images, masks)


@app.command()
def phantom(
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    shape: Annotated[str, typer.Option(help="Slice shape HxW.")] = "1920x2300",
    slices: Annotated[int, typer.Option(help="Number of consecutive slices (>= 3).")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write a synthetic tomography dataset: somas (class 1) among look-alike vessels."""
    from tomoseg.phantom import generate_phantom, parse_shape

    info = generate_phantom(out, parse_shape(shape), slices, seed, overwrite=overwrite)
    console.print(f"phantom written to {out}: {info}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs.")] = Path("tomoseg-demo"),
    overwrite: Overwrite = True,
) -> None:
    """Run the whole job on an embedded synthetic phantom (no data needed)."""
    from tomoseg.demo import run_demo

    run_demo(out, console, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning expected failures into one ``error:`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="tomoseg", standalone_mode=False)
    except TomosegError as exc:
        if debug:
            raise
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("error: interrupted", markup=False)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        msg = exc.format_message().replace("\n", " ")
        err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except MemoryError:
        if debug:
            raise
        err_console.print("error: out of memory (try a smaller --batch-size or tile size)", markup=False)
        return 1
    except OSError as exc:
        if debug:
            raise
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        err_console.print(f"error: {exc.strerror or exc}{where}", markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
