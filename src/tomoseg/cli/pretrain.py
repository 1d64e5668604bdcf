"""``pretrain``: self-supervised pretraining on unlabelled slices (its options generated from
:class:`~tomoseg.config.pretrain.PretrainConfig`, as ``train``'s are from ``TrainConfig``)."""

from __future__ import annotations

import inspect
import shlex
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from tomoseg.cli import render
from tomoseg.cli.cancel import cancel_on_interrupt
from tomoseg.cli.options import Overwrite, Quiet
from tomoseg.cli.train import STOPPING, config_parameter, interrupted
from tomoseg.utils.progress import Cancelled

#: ``pretrain``'s options beyond the config's fields
RUN_OPTIONS: dict[str, Any] = {
    "images": (
        Annotated[
            Path | None,
            typer.Option(
                help="Unlabelled slices: a folder of slices, a multi-page TIFF, Zarr, HDF5 "
                "(file.h5:/dataset), MRC or N5 stack (with --resume: the recorded one)."
            ),
        ],
        None,
    ),
    "out": (Annotated[Path, typer.Option(help="Output folder (train --init takes it).")], ...),
    "resume": (
        Annotated[
            bool, typer.Option("--resume", help="Continue an interrupted pretraining in --out.")
        ],
        False,
    ),
    "overwrite": (Overwrite, False),
    "quiet": (Quiet, False),
}


def pretrain_signature() -> inspect.Signature:
    """``pretrain``'s parameters: the run options, then one per ``PretrainConfig`` field."""
    from tomoseg.config.pretrain import PretrainConfig

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("ctx", kw, annotation=typer.Context)]
    params += [
        inspect.Parameter(name, kw, default=default, annotation=annotation)
        for name, (annotation, default) in RUN_OPTIONS.items()
    ]
    params += [config_parameter(n, f) for n, f in PretrainConfig.model_fields.items()]
    return inspect.Signature(params, return_annotation=None)


def pretrain(**options: Any) -> None:
    """Pretrain a network on unlabelled slices (masked image modelling); train --init OUT
    starts from it."""
    from tomoseg.config.pretrain import PretrainConfig
    from tomoseg.training.pretrain import pretrain as run_pretrain
    from tomoseg.training.trainer import is_rank_zero

    ctx: typer.Context = options["ctx"]
    given = {
        n: v
        for n, v in options.items()
        if n in PretrainConfig.model_fields
        and getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"
    }
    out = Path(options["out"])
    with (
        render.progress_bar(bar=not options["quiet"]) as show,
        cancel_on_interrupt((signal.SIGINT, signal.SIGTERM), STOPPING) as cancel,
    ):
        try:
            run_pretrain(
                options["images"], out, resume=options["resume"],
                overwrite=options["overwrite"], progress=show, cancel=cancel, **given,
            )  # fmt: skip
        except (Cancelled, KeyboardInterrupt) as exc:
            interrupted(
                out, getattr(exc, "signum", None) or cancel.signum, "pretraining",
                f"tomoseg pretrain --resume --out {shlex.quote(str(out))}",
            )  # fmt: skip
    if is_rank_zero():
        render.say(f"pretrained weights written to {out}; train from them with --init {out}")


pretrain.__signature__ = pretrain_signature()  # type: ignore[attr-defined]

__all__ = ["pretrain"]
