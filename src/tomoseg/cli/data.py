"""Data commands: ``check``, ``phantom``, ``crops``, ``score``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tomoseg.cli import render
from tomoseg.cli.options import (
    DataOrImages,
    Images,
    ImageSuffix,
    Instances,
    Masks,
    MaskSuffix,
    Overwrite,
    Seed,
    data_source,
)
from tomoseg.utils.format import plural


def check(
    data: Annotated[Path | None, typer.Option(help="Dataset folder with dataset.json.")] = None,
    images: Images = None,
    masks: Masks = None,
    ignore_label: Annotated[
        int | None, typer.Option(help="Mask value of unannotated pixels (dataset.json's wins).")
    ] = None,
    image_suffix: ImageSuffix = None,
    mask_suffix: MaskSuffix = None,
    instances: Instances = None,
) -> None:
    """Read every image/mask pair; report classes, shapes, types, class and annotated fractions."""
    from tomoseg.data.check import check_data

    report = check_data(
        data=data, images=images, masks=masks, ignore_label=ignore_label,
        image_suffix=image_suffix, mask_suffix=mask_suffix, instances=instances,
    )  # fmt: skip
    render.show_check(report)


def phantom(
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    shape: Annotated[str, typer.Option(help="Slice shape HxW.")] = "1920x2300",
    slices: Annotated[int, typer.Option(help="Number of consecutive slices (>= 3).")] = 12,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    label_vessels: Annotated[
        bool,
        typer.Option(
            "--label-vessels",
            help="Label the vessels too (class 2; truth3d/ gains classes.tif and the vessels' "
            "centre lines and radii, vessels.json).",
        ),
    ] = False,
    touching: Annotated[
        float,
        typer.Option(
            help="Fraction of the somas placed in clusters of 2-3 touching somas (0-1); the 3D "
            "truth keeps one label per soma."
        ),
    ] = 0.0,
) -> None:
    """Write a synthetic tomography dataset: somas (class 1) among look-alike vessels."""
    from tomoseg.synthetic.phantom import generate_phantom

    params = {"touching": touching} if touching else None
    info = generate_phantom(
        out=out, shape=shape, slices=slices, seed=seed, overwrite=overwrite,
        label_vessels=label_vessels, params=params,
    )  # fmt: skip
    render.say(f"phantom written to {out}: {info}")


def crops(
    size: Annotated[int, typer.Option(help="Crop side S in pixels (>= 16).")],
    count: Annotated[int, typer.Option(help="Number of crops N.")],
    out: Annotated[Path, typer.Option(help="Folder for images/, masks/ and crops.csv.")],
    data: DataOrImages = None,
    images: Images = None,
    masks: Masks = None,
    image_suffix: ImageSuffix = None,
    mask_suffix: MaskSuffix = None,
    instances: Instances = None,
    seed: Seed = 0,
    focus_fraction: Annotated[
        float, typer.Option(help="Fraction centred on the class of interest.")
    ] = 0.0,
    overwrite: Overwrite = False,
) -> None:
    """Export the N random SxS training crops as image/mask pairs for inspection."""
    from tomoseg.data.crops import export_crops

    source = data_source(
        data, images, masks, image_suffix=image_suffix, mask_suffix=mask_suffix,
        instances=instances,
    )  # fmt: skip
    paths = export_crops(
        data=source, size=size, count=count, seed=seed, out=out,
        focus_fraction=focus_fraction, overwrite=overwrite,
    )  # fmt: skip
    render.say(f"{plural(len(paths), 'crop')} written to {out}")


def score(
    pred: Annotated[Path, typer.Option(help="Folder of predicted masks (class ids).")],
    truth: Annotated[Path, typer.Option(help="Folder of true masks, matched by file stem.")],
    out: Annotated[Path, typer.Option(help="Report folder.")],
    classes: Annotated[
        str | None, typer.Option(help="Class names, e.g. 'background,soma'.")
    ] = None,
    class_of_interest: Annotated[str | None, typer.Option(help="Class for overlays/table.")] = None,
    tolerance: Annotated[float, typer.Option(help="BF1 tolerance in pixels.")] = 2.0,
    images: Annotated[Path | None, typer.Option(help="Raw images to show in the panels.")] = None,
    ignore_label: Annotated[
        int | None,
        typer.Option(help="Truth value of unannotated pixels (e.g. 255): left out of scores."),
    ] = None,
    instances: Instances = None,
    overwrite: Overwrite = False,
) -> None:
    """Score predicted masks against true masks: accuracy, IoU, BF1, overlays."""
    from tomoseg.cli.cancel import cancel_on_interrupt
    from tomoseg.evaluation.score import score_folders
    from tomoseg.io.datasets import resolve_classes

    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        summary = score_folders(
            pred=pred, truth=truth, out=out, classes=resolve_classes(classes),
            class_of_interest=class_of_interest, tolerance=tolerance, images=images,
            overwrite=overwrite, ignore_label=ignore_label, instances=instances or "error",
            progress=show, cancel=cancel,
        )  # fmt: skip
    render.show_scores(summary)
    render.say(f"report: {out}/metrics.json, {out}/per_image.csv, {out}/overlays/, {out}/panels/")
