"""Commands that run a trained network on images: ``predict``, ``evaluate``, ``tune``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tomoseg.cli import render
from tomoseg.cli.cancel import cancel_on_interrupt
from tomoseg.cli.options import (
    AllowIncomplete,
    DataOrImages,
    Device,
    Images,
    ImageSuffix,
    Instances,
    Intensity,
    Masks,
    MaskSuffix,
    Nonfinite,
    NoPostprocess,
    Overwrite,
    RunFolder,
    Runtime,
    TileBatch,
    TileSize,
    Tta,
    Weights,
    data_source,
    inference_settings,
)
from tomoseg.utils.format import plural


def predict(
    run: RunFolder,
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders of images.")],
    out: Annotated[Path, typer.Option(help="Folder for the masks.")],
    fmt: Annotated[str, typer.Option("--format", help="png or tif.")] = "png",
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write class probabilities.")
    ] = False,
    device: Device = "auto",
    tile_size: TileSize = None,
    tile_batch: TileBatch = None,
    no_tiling: Annotated[bool, typer.Option("--no-tiling", help="Whole slices at once.")] = False,
    nonfinite: Nonfinite = "background",
    intensity: Intensity = "warn",
    runtime: Runtime = "auto",
    tta: Tta = None,
    no_postprocess: NoPostprocess = False,
    weights: Weights = None,
    overwrite: Overwrite = False,
    allow_incomplete: AllowIncomplete = False,
) -> None:
    """Segment full-size images with a trained run (overlapping tiles, bounded memory)."""
    from tomoseg.inference.predict import QUICKLOOK, predict_paths

    settings = inference_settings(
        device=device, weights=weights, runtime=runtime, tta=tta, nonfinite=nonfinite,
        intensity=intensity, no_postprocess=no_postprocess, tile_size=tile_size,
        tile_batch=tile_batch,
        allow_incomplete=allow_incomplete,
    )  # fmt: skip
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        paths = predict_paths(
            run=run, inputs=inputs, out=out, settings=settings, format=fmt,
            probabilities=probabilities, tiling=not no_tiling, overwrite=overwrite,
            progress=show, cancel=cancel,
        )  # fmt: skip
    render.say(f"{plural(len(paths), 'mask')} written to {out}")
    if (Path(out) / QUICKLOOK).is_file():
        render.say(f"quick look: {Path(out) / QUICKLOOK} (a few images with their labels)")


def evaluate(
    run: RunFolder,
    out: Annotated[Path, typer.Option(help="Report folder (as tomoseg score writes).")],
    data: DataOrImages = None,
    images: Images = None,
    masks: Masks = None,
    image_suffix: ImageSuffix = None,
    mask_suffix: MaskSuffix = None,
    instances: Instances = None,
    split: Annotated[str, typer.Option(help="Split to evaluate (of --data).")] = "test",
    device: Device = "auto",
    nonfinite: Nonfinite = "background",
    intensity: Intensity = "warn",
    runtime: Runtime = "auto",
    tta: Tta = None,
    no_postprocess: NoPostprocess = False,
    weights: Weights = None,
    overwrite: Overwrite = False,
    allow_incomplete: AllowIncomplete = False,
) -> None:
    """Segment a split's full-size images and score them (accuracy, IoU, BF1, overlays), with
    and without the run's tuned post-processing."""
    from tomoseg.inference.evaluate import evaluate_run

    source = data_source(data, images, masks, image_suffix=image_suffix,
                         mask_suffix=mask_suffix, instances=instances)  # fmt: skip
    settings = inference_settings(
        device=device, weights=weights, runtime=runtime, tta=tta, nonfinite=nonfinite,
        intensity=intensity, no_postprocess=no_postprocess, allow_incomplete=allow_incomplete,
    )  # fmt: skip
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        summary, sec = evaluate_run(
            run=run, data=source, out=out, settings=settings, split=split, overwrite=overwrite,
            progress=show, cancel=cancel,
        )  # fmt: skip
    where = f"{data} [{split}]" if data is not None else str(images)
    render.show_scores(summary, title=f"{run} on {where} (%)")
    render.say(
        f"{sec:.2f} s per slice; report: {out}/metrics.json, per_image.csv, overlays/, panels/"
    )


def tune(
    run: RunFolder,
    data: DataOrImages = None,
    images: Images = None,
    masks: Masks = None,
    image_suffix: ImageSuffix = None,
    mask_suffix: MaskSuffix = None,
    instances: Instances = None,
    split: Annotated[
        str, typer.Option(help="Split to tune on (default: the run's validation images).")
    ] = "val",
    tta: Tta = None,
    device: Device = "auto",
    weights: Weights = None,
    intensity: Intensity = "warn",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run's decision.json.")
    ] = False,
    allow_incomplete: AllowIncomplete = False,
) -> None:
    """(Re)tune a run's decision and clean-up on validation images; writes RUN/decision.json."""
    from tomoseg.inference.tuning import tune_run

    source = data_source(
        data, images, masks, image_suffix=image_suffix, mask_suffix=mask_suffix,
        instances=instances,
    )  # fmt: skip
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        decision, report = tune_run(
            run=run, data=source, split=split, tta=tta, device=device, weights=weights,
            intensity=intensity, progress=show, cancel=cancel, overwrite=overwrite,
            allow_incomplete=allow_incomplete,
        )  # fmt: skip
    render.say(render.tune_line(run, decision, report))
