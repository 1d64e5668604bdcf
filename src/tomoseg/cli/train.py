"""``train`` (its options generated from :class:`~tomoseg.config.schema.TrainConfig`) and
``lr-find``.

Every ``TrainConfig`` field is a ``train`` option of the same name (``crop_size`` ->
``--crop-size``; a boolean ``tune_decision`` -> ``--tune-decision/--no-tune-decision``), its
help the field's description and its shown default the field's default, so that nothing is
restated here (Lightning's ``LightningCLI`` idea). Only the options given on the command line
override the config file (``--config``): an option left at its default keeps the file's value.
"""

from __future__ import annotations

import inspect
import shlex
import signal
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic.fields import FieldInfo

from tomoseg.cli import render
from tomoseg.cli.cancel import cancel_on_interrupt
from tomoseg.cli.options import (
    Classes,
    Config,
    DataOrImages,
    Images,
    ImageSuffix,
    Instances,
    Masks,
    MaskSuffix,
    Overwrite,
    Quiet,
    data_source,
)
from tomoseg.config.schema import TrainConfig
from tomoseg.errors import TomosegError
from tomoseg.utils.progress import Cancelled

#: ``train``'s options beyond the config's fields: where the data is and what to do with the
#: run folder.
RUN_OPTIONS: dict[str, Any] = {
    "run": (
        Annotated[
            Path | None,
            typer.Argument(
                metavar="RUN", help="Run folder to continue (with --resume; the same as --out)."
            ),
        ],
        None,
    ),
    "out": (Annotated[Path | None, typer.Option(help="Run folder.")], None),
    "data": (
        Annotated[
            Path | None, typer.Option(help="Dataset folder (train split; val split optional).")
        ],
        None,
    ),
    "images": (Images, None),
    "masks": (Masks, None),
    "image_suffix": (ImageSuffix, None),
    "mask_suffix": (MaskSuffix, None),
    "instances": (Instances, None),
    "classes": (Classes, None),
    "config": (Config, None),
    "resume": (
        Annotated[
            bool,
            typer.Option(
                "--resume",
                help="Continue an interrupted run: tomoseg train --resume RUN (its data and "
                "config are in the run folder; options given change them).",
            ),
        ],
        False,
    ),
    "overwrite": (Overwrite, False),
    "quiet": (Quiet, False),
}


def option_type(annotation: Any) -> type:
    """The command-line type of a config field: ``int``, ``float``, ``bool``, ``Path`` or
    ``str`` (choices and unions such as ``int | "auto"`` are read as text and validated by the
    config, whose message names the option)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation in (bool, int, float, Path):
        return annotation
    return str


def option_help(field: FieldInfo) -> str:
    """A field's description as option help, ending with a full stop."""
    text = (field.description or "").strip()
    return f"{text}." if text else ""


def config_parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    """The ``train`` option of one config field, its default the field's default."""
    kind = option_type(field.annotation)
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, Path):
        default = str(default)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    shown = extra.get("shown_default")  # a default another field sets (epochs: the budget)
    option = typer.Option(*decls, help=option_help(field), show_default=shown or True)
    annotation = Annotated[kind | None, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)  # fmt: skip


def train_signature() -> inspect.Signature:
    """``train``'s parameters: the run options, then one per ``TrainConfig`` field."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("ctx", kw, annotation=typer.Context)]
    params += [
        inspect.Parameter(name, kw, default=default, annotation=annotation)
        for name, (annotation, default) in RUN_OPTIONS.items()
    ]
    fields = TrainConfig.model_fields.items()
    params += [config_parameter(name, field) for name, field in fields]
    return inspect.Signature(params, return_annotation=None)


def given_on_command_line(ctx: typer.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The config fields among ``options`` that the user typed (not left at their defaults)."""

    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    return {
        name: value
        for name, value in options.items()
        if name in TrainConfig.model_fields and typed(name)
    }


def train(**options: Any) -> None:
    """Train a network on N random SxS crops; write curves, metrics and checkpoints to --out."""
    from tomoseg.config.schema import load_config
    from tomoseg.training.trainer import is_rank_zero
    from tomoseg.training.trainer import train as run_train

    out = run_folder(options["run"], options["out"])
    source = training_data(options, resume=options["resume"])
    overrides = given_on_command_line(options["ctx"], options)
    config = options["config"]
    if config is None and options["resume"] and (out / "config.yaml").is_file():
        config = out / "config.yaml"  # the run's own config, changed by the options given
    cfg = load_config(path=config, overrides=overrides)
    signals = (signal.SIGINT, signal.SIGTERM)
    with (
        render.progress_bar(bar=not options["quiet"]) as show,
        cancel_on_interrupt(signals, STOPPING) as cancel,
    ):
        try:
            run_train(
                data=source, run=out, cfg=cfg, resume=options["resume"],
                overwrite=options["overwrite"], progress=show, cancel=cancel,
            )  # fmt: skip
        except (Cancelled, KeyboardInterrupt) as exc:
            interrupted(out, getattr(exc, "signum", None) or cancel.signum)
    if is_rank_zero():  # under DDP every process runs this command; rank 0 wrote the run
        render.say(
            f"run written to {out}: metrics.csv, curves.png, best.safetensors, last.safetensors"
        )


#: what the first Ctrl-C (or SIGTERM) during training prints
STOPPING = (
    "interrupt: stopping after the current batch (the finished epochs are kept); "
    "press Ctrl-C again to abort now"
)


def run_folder(run: Path | None, out: Path | None) -> Path:
    """The run folder: ``--out``, or the ``RUN`` argument (``train --resume RUN``).

    Raises:
        typer.BadParameter: neither given, or two different folders.
    """
    if run is not None and out is not None and Path(run) != Path(out):
        raise typer.BadParameter(f"RUN {run} and --out {out} name two folders; give one")
    folder = run if run is not None else out
    if folder is None:
        raise typer.BadParameter("give the run folder: --out RUN (or tomoseg train --resume RUN)")
    return Path(folder)


def training_data(options: dict[str, Any], resume: bool) -> Any:
    """The :class:`~tomoseg.data.sources.DataSource` of ``--data`` / ``--images`` + ``--masks``;
    None when resuming without them (the run's ``run.json`` records its data)."""
    names = ("data", "images", "masks", "classes", "image_suffix", "mask_suffix", "instances")
    if resume and all(options[k] is None for k in names):
        return None
    return data_source(
        options["data"], options["images"], options["masks"], classes=options["classes"],
        image_suffix=options["image_suffix"], mask_suffix=options["mask_suffix"],
        instances=options["instances"],
    )  # fmt: skip


def interrupted(
    out: Path, signum: int | None, what: str = "training", resume: str | None = None
) -> None:
    """Say how far an interrupted ``what`` (a training, a pretraining) got and how to resume it
    (``resume``: the command; default ``tomoseg train --resume OUT``), in one ``error:`` line,
    and exit with 128 + the signal's number (130: Ctrl-C, 143: SIGTERM)."""
    from tomoseg.runtime.run_record import progress_text, read_run_record

    try:
        record = read_run_record(out, missing_ok=True)
    except TomosegError:
        record = None
    if record is None:  # stopped before the run folder was written: nothing to resume
        render.error_line(f"interrupted before {what} started; nothing was written")
    else:
        resume = resume or f"tomoseg train --resume {shlex.quote(str(out))}"
        render.error_line(f"interrupted after {progress_text(record)}; resume with {resume}")
    raise typer.Exit(128 + int(signum or signal.SIGINT))


train.__signature__ = train_signature()  # type: ignore[attr-defined]


def lr_find(
    out: Annotated[Path, typer.Option(help="Folder for lr_find.png and lr_find.csv.")],
    data: DataOrImages = None,
    images: Images = None,
    masks: Masks = None,
    image_suffix: ImageSuffix = None,
    mask_suffix: MaskSuffix = None,
    instances: Instances = None,
    config: Config = None,
    min_lr: Annotated[float, typer.Option(help="Lowest learning rate tried.")] = 1e-6,
    max_lr: Annotated[float, typer.Option(help="Highest learning rate tried.")] = 1.0,
    steps: Annotated[int, typer.Option(help="Number of steps.")] = 60,
) -> None:
    """Learning-rate range test: loss against learning rate, with a suggested rate."""
    from tomoseg.config.schema import load_config
    from tomoseg.training.lr_find import lr_range_test

    source = data_source(
        data, images, masks, image_suffix=image_suffix, mask_suffix=mask_suffix,
        instances=instances,
    )  # fmt: skip
    suggestion = lr_range_test(
        data=source,
        out=out,
        cfg=load_config(path=config),
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
    )
    if suggestion == suggestion:  # not NaN
        render.say(f"suggested learning rate: {suggestion:.2e} (plot: {out}/lr_find.png)")
    else:
        render.say(f"no clear suggestion (try more --steps); see {out}/lr_find.png")


__all__ = ["lr_find", "train"]
