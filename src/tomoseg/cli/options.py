"""Options shared by several commands, each declared once (``Annotated`` aliases for typer).

A command writes ``device: Device = "auto"``; the option's name, type and help live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

RunFolder = Annotated[
    Path, typer.Argument(help="Run folder from tomoseg train (or a package from tomoseg export).")
]
DataFolder = Annotated[Path, typer.Option(help="Dataset folder.")]
DataOrImages = Annotated[
    Path | None, typer.Option("--data", help="Dataset folder (or --images with --masks).")
]
Device = Annotated[str, typer.Option(help="auto, cpu or gpu.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace results already in --out.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Nonfinite = Annotated[
    str,
    typer.Option(
        help="NaN/infinite pixels: 'background' (outside the field of view: class 0) or 'error'."
    ),
]
Intensity = Annotated[
    str,
    typer.Option(
        help="Images of another type (8/16-bit, float, signed) than the training images, or "
        "mostly outside their intensity range: 'warn', 'error' (refuse) or 'rescale' (map "
        "each image's 0.5-99.5 percentiles onto the run's)."
    ),
]
Runtime = Annotated[
    str,
    typer.Option(help="auto, torch, openvino or onnxruntime (auto: fastest measured, torch)."),
]
Tta = Annotated[
    str | None,
    typer.Option(
        help="Test-time augmentation: none, flips (4 passes), all (8 symmetries) or a list "
        "like identity,flip_x (default: the run's setting, none unless trained with --tta)."
    ),
]
Weights = Annotated[
    str | None,
    typer.Option(
        help="Weights: last (end of the schedule) or best (highest validation IoU of the class "
        "of interest) (default: the run's setting, last unless trained with --weights best)."
    ),
]
NoPostprocess = Annotated[
    bool,
    typer.Option(
        "--no-postprocess",
        help="Skip the decision and clean-up tuned on validation (the run's decision.json).",
    ),
]
TileSize = Annotated[int | None, typer.Option(help="Tile side for sliding-window inference.")]
TileBatch = Annotated[int | None, typer.Option(help="Tiles per forward pass.")]
IgnoreLabel = Annotated[
    int | None,
    typer.Option(help="Mask value of unannotated pixels (where no dataset.json says)."),
]
Images = Annotated[
    Path | None,
    typer.Option(help="Folder of images, or one image volume (instead of --data)."),
]
Masks = Annotated[
    Path | None,
    typer.Option(
        help="Folder of their masks matched by file name (may be --images with --mask-suffix), "
        "or the label volume of an --images volume."
    ),
]
ImageSuffix = Annotated[
    str | None,
    typer.Option(help="Ending of every image name, not part of its id (nnU-Net: _0000)."),
]
MaskSuffix = Annotated[
    str | None,
    typer.Option(help="Ending of every mask name (cellpose: _masks, also _mask, _label)."),
]
Classes = Annotated[
    str | None, typer.Option(help="Class names for --images/--masks, e.g. 'bg,cell'.")
]
Instances = Annotated[
    str | None,
    typer.Option(
        help="Masks that look like instance labels (one id per object): error (default) or "
        "binarize (every object class 1)."
    ),
]
Config = Annotated[
    Path | None, typer.Option(help="YAML config (or a bundled name: seed, default).")
]
Backend = Annotated[str, typer.Option(help="local (here) or ray (a Ray cluster).")]
Address = Annotated[
    str | None, typer.Option(help="Ray cluster HOST:PORT (default: start Ray here).")
]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
AllowIncomplete = Annotated[
    bool,
    typer.Option(
        "--allow-incomplete",
        help="Use a run whose training did not finish (the weights of its last finished epoch).",
    ),
]


def data_source(
    data: Path | None = None,
    images: Path | None = None,
    masks: Path | None = None,
    *,
    classes: str | None = None,
    image_suffix: str | None = None,
    mask_suffix: str | None = None,
    instances: str | None = None,
) -> Any:
    """The :class:`~tomoseg.data.sources.DataSource` of a command's data options (``--data``, or
    ``--images`` with ``--masks``, and how to pair and read them)."""
    from tomoseg.data.sources import DataSource

    return DataSource.of(
        data, images=images, masks=masks, classes=classes, image_suffix=image_suffix,
        mask_suffix=mask_suffix, instances=instances,
    )  # fmt: skip


def inference_settings(*, no_postprocess: bool = False, **options: Any) -> Any:
    """The :class:`~tomoseg.inference.predictor.InferenceSettings` of a command's inference
    options (``--no-postprocess`` is ``postprocess=False``)."""
    from tomoseg.inference.predictor import InferenceSettings

    return InferenceSettings(postprocess=not no_postprocess, **options)
