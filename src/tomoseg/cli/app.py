"""The ``tomoseg`` typer app: the list of commands (each defined in its own module)."""

from __future__ import annotations

import typer

from tomoseg.cli import data, export, inference, misc, pretrain, stack, sweep, train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train CNNs on random crops of large grayscale images, score and segment them.",
)

app.command()(misc.version)
app.command()(data.score)
app.command()(data.check)
app.command()(data.phantom)
app.command()(data.crops)
app.command()(train.train)
app.command()(pretrain.pretrain)
app.command(name="lr-find")(train.lr_find)
app.command()(inference.predict)
app.command()(inference.evaluate)
app.command()(inference.tune)
app.command()(sweep.sweep)
app.command(name="segment-stack")(stack.segment_stack)
app.command()(stack.objects)
app.command()(stack.paths)
app.command()(stack.suggest)
app.command()(export.export)
app.command()(misc.demo)
app.command(name="cluster-script")(misc.cluster_script)
